"""Start → dialing of ``callctl call`` beside a running ``listen`` (a kiosk's button).

One server and one ``callctl listen`` (the kiosk) run on loopback.  Each run
starts ``callctl --json --as kiosk call door`` as a fresh process (the
installed script, as a button's script would) and measures, from just before
the process is spawned:

- **listener dialing**: until the listen's own event stream shows the call's
  ``call.outgoing`` (the moment the kiosk starts placing the call: the POST to
  the server follows at once);
- **first event**: until the short process prints that event on its stdout.

Three ways are timed alternately in the same run:

- ``quick``: the command line as a user types it (dialed before Typer is imported);
- ``typer``: the same call through the command tree (``CALLCTL_CONNECT_TIMEOUT``
  in the environment sends it there; it is still placed by the listen);
- ``python``: ``python -c pass``, the interpreter's own start (the floor).

The callee, ``door``, takes calls from alice only: each call is declined at once.
Target: quick listener-dialing median ≤ 50 ms.  Exit 0 met, 1 missed, 2 could
not run, 130 interrupted.

    scripts/bench-dial [--runs 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))

from callctl.harness import bench, stats  # noqa: E402
from callctl.harness.child import Child, callctl_command, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess  # noqa: E402

TARGET_MS = 50.0


def program() -> list[str]:
    script = Path(sys.executable).with_name("callctl")
    return [str(script)] if script.exists() else callctl_command()


def one_call(argv: list[str], env: dict[str, str], kiosk: Child, count: int) -> tuple[float, float]:
    """(listener dialing, first event) in ms for one short process."""
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    t_first = time.time()
    _, err = proc.communicate(timeout=30)
    if not first:
        raise bench.BenchError(f"{' '.join(argv)} printed nothing: {err.decode()[-500:]}")
    dialing = kiosk.wait_event("call.outgoing", count=count, timeout=10)
    return (float(dialing["ts"]) - t0) * 1000, (t_first - t0) * 1000


def floor(env: dict[str, str]) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return (time.time() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="calls per way (default 20)")
    ap.add_argument("--json", action="store_true", help="the figures as one JSON object on stdout")
    args = ap.parse_args()
    bench.stop_on_signals(timeout=60 + args.runs * 10)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dial-"))
    server: ServerProcess | None = None
    kiosk: Child | None = None
    door: Child | None = None
    try:
        (tmp / "run").mkdir(mode=0o700)
        env = callctl_env(XDG_RUNTIME_DIR=str(tmp / "run"), XDG_CONFIG_HOME=str(tmp / "config"),
                          XDG_STATE_HOME=str(tmp / "state"))
        server = ServerProcess(tmp, env=env).start()
        env["CALLCTL_SECRET_FILE"] = str(server.secret_file)
        base = [*program(), "--json", "--server", server.url, "--as", "kiosk"]
        kiosk = Child([*base, "listen", "--device", "kiosk", "--audio-in", "tone", "--audio-out", "null"],
                      name="kiosk", env=env)
        kiosk.wait_event("registered", timeout=30)
        door = Child([*program(), "--json", "--server", server.url, "--as", "door", "listen", "--allow", "alice",
                      "--audio-in", "tone", "--audio-out", "null"], name="door", env=env)
        door.wait_event("registered", timeout=30)
        call = [*base, "call", "door"]
        typer_env = {**env, "CALLCTL_CONNECT_TIMEOUT": "15"}
        figures: dict[str, dict[str, list[float]]] = {w: {"dialing": [], "first": []} for w in ("quick", "typer")}
        python: list[float] = []
        count = 0
        one_call(call, env, kiosk, count := count + 1)  # warm the page cache
        for i in range(args.runs):
            for way, way_env in (("quick", env), ("typer", typer_env)) if i % 2 else (("typer", typer_env),
                                                                                    ("quick", env)):
                dialing, first = one_call(call, way_env, kiosk, count := count + 1)
                figures[way]["dialing"].append(dialing)
                figures[way]["first"].append(first)
            python.append(floor(env))
        res: dict[str, Any] = {"runs": args.runs, "python_ms": stats.summary(python, (50, 90))}
        for way, values in figures.items():
            res[way] = {k: stats.summary(v, (50, 90)) for k, v in values.items()}
        quick_p50 = res["quick"]["dialing"]["p50"]
        res["target"] = {"quick_dialing_p50_ms": TARGET_MS, "met": quick_p50 <= TARGET_MS}
        if args.json:
            print(json.dumps(res))
        else:
            print(f"start -> dialing of `callctl call` beside a running listen, {args.runs} runs each (ms)")
            print(f"  {'':8} {'listener dialing p50/p90':>26} {'first event p50/p90':>22}")
            for way in ("quick", "typer"):
                d, f = res[way]["dialing"], res[way]["first"]
                print(f"  {way:8} {d['p50']:>16.1f} / {d['p90']:<7.1f} {f['p50']:>12.1f} / {f['p90']:<7.1f}")
            p = res["python_ms"]
            print(f"  python -c pass: {p['p50']:.1f} / {p['p90']:.1f}")
            print(f"  target: quick listener dialing p50 <= {TARGET_MS:g} ms: "
                  f"{'met' if res['target']['met'] else 'MISSED'} ({quick_p50:.1f})")
        return bench.MET if res["target"]["met"] else bench.MISSED
    except KeyboardInterrupt:
        return bench.INTERRUPTED
    except (bench.BenchError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        bench.log(f"cannot run: {exc}")
        return bench.CANNOT_RUN
    finally:
        bench.cleaning_up()
        for child in (kiosk, door):
            if child is not None:
                child.stop()
        if server is not None:
            server.stop()
        bench.keep_or_remove(tmp, keep=False)


if __name__ == "__main__":
    sys.exit(main())

"""Two-way video call CPU, set-up time and RSS per side, at several sizes and encoders.

Runs a real server, a `callctl listen` and a `callctl call` (test pattern
both ways, 15 fps, a tone as audio) on loopback, and measures each side's CPU
over the connected phase from /proc (utime + stime), the caller's dial →
connected time, and each side's RSS.  Each encoder named by ``--codecs``
(``--video-codec`` on both sides) gets a row per size; an audio-only call with
the same processes comes first, so that what the video itself costs is the
difference, in the same run.  Target: 640x480@15 ≤ 12 % of one core per side.
Exit status: 0 the target met, 1 missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))  # run from a checkout without installing too

from callctl.harness import procfs  # noqa: E402
from callctl.harness.child import Child, callctl_command, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess  # noqa: E402


TARGET_PCT = 12.0


def one(size: str | None, seconds: float, fps: int, codec: str = "auto") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        server = ServerProcess(Path(tmp), ["--log-level", "warning"]).start()
        env = callctl_env(XDG_RUNTIME_DIR=tmp, XDG_STATE_HOME=tmp, CALLCTL_SERVER=server.url,
                          CALLCTL_SECRET_FILE=str(server.secret_file))
        media = ["--audio-in", "tone:440", "--audio-out", "null", "--video-codec", codec]
        if size is not None:
            media += ["--video-in", "testsrc", "--video-size", size, "--fps", str(fps), "--video-out", "null"]
        procs: list[Child] = []
        try:
            callee = Child(callctl_command("--json", "--as", "bob", "listen", "--auto-accept",
                                           "--once", "--device", "b", *media), name="callee", env=env)
            procs.append(callee)
            callee.wait_event("registered", timeout=20)
            caller = Child(callctl_command("--json", "--as", "alice", "call", "bob",
                                           *(["--video"] if size is not None else []), "--device", "a", "--hangup-after", str(seconds + 3), *media),
                           name="caller", env=env)
            procs.append(caller)
            connected = caller.wait_event("call.connected", timeout=20)
            time.sleep(2)  # let both encoders settle
            c0, e0, t0 = procfs.cpu_seconds(caller.pid), procfs.cpu_seconds(callee.pid), time.monotonic()
            time.sleep(seconds)
            c1, e1, t1 = procfs.cpu_seconds(caller.pid), procfs.cpu_seconds(callee.pid), time.monotonic()
            result = {
                "size": size or "audio only", "fps": fps, "codec": connected.get("video_codec") or codec,
                "cpu_caller_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
                "cpu_callee_pct": round(100 * (e1 - e0) / (t1 - t0), 1),
                "rss_caller_mb": round(procfs.memory_kib(caller.pid).get("VmRSS", 0) / 1024, 1),
                "rss_callee_mb": round(procfs.memory_kib(callee.pid).get("VmRSS", 0) / 1024, 1),
                "setup_ms": connected["setup_ms"],
            }
            caller.wait_exit(30)
            return result
        finally:
            for p in reversed(procs):
                p.stop()
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="640x480,320x240")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--codecs", default="libvpx",
                    help="encoders to compare, comma-separated (--video-codec names: libvpx, libx264, auto)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [one(None, args.seconds, args.fps)]
    rows += [one(size, args.seconds, args.fps, codec) for codec in args.codecs.split(",")
             for size in args.sizes.split(",")]
    big = [r for r in rows if r["size"] == "640x480"]
    best = min((max(r["cpu_caller_pct"], r["cpu_callee_pct"]) for r in big), default=None)
    met = best is None or best <= TARGET_PCT
    if args.json:
        print(json.dumps(rows))
        return 0 if met else 1
    print(f"two-way calls, {args.fps} fps, {args.seconds:g} s measured ({os.cpu_count()} CPUs)")
    print(f"{'size':>11} {'encoder':>8} {'caller CPU':>11} {'callee CPU':>11} {'RSS caller':>11} "
          f"{'RSS callee':>11} {'set-up':>8}")
    for r in rows:
        enc = r["codec"] if r["size"] != "audio only" else "-"
        print(f"{r['size']:>11} {enc:>8} {r['cpu_caller_pct']:>10.1f}% {r['cpu_callee_pct']:>10.1f}% "
              f"{r['rss_caller_mb']:>8.0f} MB {r['rss_callee_mb']:>8.0f} MB {r['setup_ms']:>6.0f} ms")
    if best is not None:
        print(f"{'PASS' if met else 'MISS'}  640x480@{args.fps}: {best:.1f} % of one core per side at best "
              f"(target <= {TARGET_PCT:g} %)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

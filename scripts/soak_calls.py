"""Leak check: N back-to-back calls into one ``callctl listen --auto-accept`` process.

The listener is a real process (what a kiosk runs); the caller is a Phone in
this process, so a call costs what a call costs, not a process start.  Every
``--every`` calls it prints the listener's RSS, open fds, threads and asyncio
tasks (from its control socket's ``status``).  After ``--warm-up`` calls, growth
beyond ``--max-growth-mib`` (RSS per 1,000 calls, pro rata), or any growth in
fds, threads or tasks, is a failure: exit 1.

    scripts/soak-calls 1000            # the figure in docs/PERFORMANCE.md
    scripts/soak-calls 200 --every 50  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from callctl.harness import bench, procfs
from callctl.harness.child import Child, callctl_command, callctl_env
from callctl.harness.server import ServerProcess


def status(run_dir: Path) -> dict:  # type: ignore[type-arg]
    """The listener's control-socket status (blocking; a few ms)."""
    import socket

    path = next((run_dir / "callctl").glob("*.sock"))
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b'{"cmd": "status"}\n')
        return json.loads(s.makefile().readline())  # type: ignore[no-any-return]


async def soak(args: argparse.Namespace, work: Path) -> int:
    from callctl.engine.phone import Phone
    from callctl.engine.session import CallLimits
    from callctl.media.adjust import preload
    from callctl.media.assembly import MediaOptions
    from callctl.signaling.protocol import EndReason, Media

    preload()
    server = ServerProcess(work, ["--log-level", "warning", "--calls-per-minute", "100000"]).start()
    run_dir = work / "run"
    run_dir.mkdir()
    listener = Child(callctl_command("--json", "--server", server.url, "--as", "bob", "listen",
                                     "--auto-accept", "--device", "kiosk", "--audio-in", "tone:660",
                                     "--audio-out", "null", "--video-out", "null"),
                     name="listener", env=callctl_env(XDG_RUNTIME_DIR=str(run_dir),
                                                      CALLCTL_SECRET_FILE=str(server.secret_file)))
    alice = Phone(client=server.client("alice", "desk"), device="desk",
                  media=MediaOptions(audio_in="tone:440", audio_out="null", video_out="null"))
    rows = []
    try:
        await listener.await_event("registered", timeout=30)
        alice.start()
        await asyncio.wait_for(alice.registered.wait(), 10)
        started = time.monotonic()
        unrung = 0  # calls the listener turned away before ringing (busy): no call.ended there
        for n in range(1, args.calls + 1):
            session = alice.dial("bob", Media.AUDIO, CallLimits(hangup_after=args.talk))
            await session.ended.wait()
            if session.outcome().reason != EndReason.HANGUP:
                bench.log(f"call {n} ended {session.outcome().reason.value}")
                unrung += session.outcome().reason == EndReason.BUSY
            if n % args.every == 0 or n == args.calls:
                await listener.await_event("call.ended", count=n - unrung, timeout=30)
                st = await asyncio.to_thread(status, run_dir)
                row = {"calls": n, "rss_mib": round(procfs.memory_kib(listener.pid)["VmRSS"] / 1024, 1),
                       "fds": procfs.open_fds(listener.pid), "threads": procfs.threads(listener.pid),
                       "tasks": st.get("tasks"), "s": round(time.monotonic() - started, 1)}
                rows.append(row)
                print(json.dumps(row) if args.json else
                      f"{n:6d} calls  rss {row['rss_mib']:7.1f} MiB  fds {row['fds']:3d}  "
                      f"threads {row['threads']:3d}  tasks {row['tasks']}", flush=True)
    finally:
        await alice.close()
        listener.stop()
        server.stop()
    return verdict(rows, args)


def verdict(rows: list[dict], args: argparse.Namespace) -> int:  # type: ignore[type-arg]
    base = next((r for r in rows if r["calls"] >= args.warm_up), None)
    last = rows[-1] if rows else None
    if base is None or last is None or last is base:
        bench.log("too few calls after the warm-up to judge growth")
        return bench.CANNOT_RUN
    per_1000 = (last["rss_mib"] - base["rss_mib"]) * 1000 / (last["calls"] - base["calls"])
    grew = [k for k in ("fds", "threads", "tasks") if (last[k] or 0) > (base[k] or 0) + 2]
    summary = (f"after {base['calls']} calls: {per_1000:+.1f} MiB per 1,000 calls "
               f"({base['rss_mib']} -> {last['rss_mib']} MiB); fds {base['fds']} -> {last['fds']}, "
               f"threads {base['threads']} -> {last['threads']}, tasks {base['tasks']} -> {last['tasks']}")
    if per_1000 > args.max_growth_mib or grew:
        print(f"FAIL {summary}", flush=True)
        return bench.MISSED
    print(f"OK {summary}", flush=True)
    return bench.MET


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calls", nargs="?", type=int, default=1000, help="how many calls (default 1000)")
    parser.add_argument("--every", type=int, default=25, help="print a row every this many calls")
    parser.add_argument("--warm-up", type=int, default=100, help="calls before growth counts")
    parser.add_argument("--talk", type=float, default=0.3, help="seconds each call stays connected")
    parser.add_argument("--max-growth-mib", type=float, default=5.0,
                        help="RSS growth allowed per 1,000 calls after the warm-up (MiB)")
    parser.add_argument("--json", action="store_true", help="rows as NDJSON")
    args = parser.parse_args()
    bench.stop_on_signals()
    try:
        with tempfile.TemporaryDirectory(prefix="callctl-soak-") as tmp:
            return asyncio.run(soak(args, Path(tmp)))
    except KeyboardInterrupt:
        return bench.INTERRUPTED
    except Exception as exc:  # one line, the soak could not run
        bench.log(f"cannot run: {type(exc).__name__}: {str(exc)[:300]}")
        return bench.CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())

"""Two-way video call CPU, set-up time and RSS per side, at several sizes.

Runs a real server, a `callctl listen` and a `callctl call` (test pattern
both ways, 15 fps) on loopback, and measures each side's CPU over the
connected phase from /proc (utime + stime), the caller's dial → connected
time, and each side's RSS.  Target: 640x480@15 VP8 ≤ 40 % of one core per side.
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


def one(size: str, seconds: float, fps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        server = ServerProcess(Path(tmp), ["--log-level", "warning"]).start()
        env = callctl_env(XDG_RUNTIME_DIR=tmp, XDG_STATE_HOME=tmp, CALLCTL_SERVER=server.url,
                          CALLCTL_SECRET_FILE=str(server.secret_file))
        media = ["--audio-in", "tone:440", "--audio-out", "null", "--video-in", "testsrc",
                 "--video-size", size, "--fps", str(fps), "--video-out", "null"]
        procs: list[Child] = []
        try:
            callee = Child(callctl_command("--json", "--as", "bob", "listen", "--auto-accept",
                                           "--once", "--device", "b", *media), name="callee", env=env)
            procs.append(callee)
            callee.wait_event("registered", timeout=20)
            caller = Child(callctl_command("--json", "--as", "alice", "call", "bob", "--video",
                                           "--device", "a", "--hangup-after", str(seconds + 3), *media),
                           name="caller", env=env)
            procs.append(caller)
            connected = caller.wait_event("call.connected", timeout=20)
            time.sleep(2)  # let both encoders settle
            c0, e0, t0 = procfs.cpu_seconds(caller.pid), procfs.cpu_seconds(callee.pid), time.monotonic()
            time.sleep(seconds)
            c1, e1, t1 = procfs.cpu_seconds(caller.pid), procfs.cpu_seconds(callee.pid), time.monotonic()
            result = {
                "size": size, "fps": fps,
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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [one(size, args.seconds, args.fps) for size in args.sizes.split(",")]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"two-way video calls, {args.fps} fps, {args.seconds:g} s measured ({os.cpu_count()} CPUs)")
    print(f"{'size':>9} {'caller CPU':>11} {'callee CPU':>11} {'RSS caller':>11} {'RSS callee':>11} {'set-up':>8}")
    for r in rows:
        print(f"{r['size']:>9} {r['cpu_caller_pct']:>10.1f}% {r['cpu_callee_pct']:>10.1f}% "
              f"{r['rss_caller_mb']:>8.0f} MB {r['rss_callee_mb']:>8.0f} MB {r['setup_ms']:>6.0f} ms")
    big = next((r for r in rows if r["size"] == "640x480"), None)
    if big is not None:
        worst = max(big["cpu_caller_pct"], big["cpu_callee_pct"])
        print(f"{'PASS' if worst <= 40 else 'MISS'}  640x480@{args.fps}: {worst:.1f} % of one core per side (target <= 40 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

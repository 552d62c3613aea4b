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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> dict | str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if needle in line:
            try:
                return json.loads(line)
            except ValueError:
                return line
    raise RuntimeError(f"no {needle!r} within {timeout} s")


def one(size: str, seconds: float, fps: int) -> dict:
    callctl = [sys.executable, "-m", "callctl"]
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        env = {**os.environ, "XDG_RUNTIME_DIR": tmp, "XDG_STATE_HOME": tmp,
               "CALLCTL_SECRET_FILE": f"{tmp}/secret"}
        procs: list[subprocess.Popen[str]] = []
        try:
            server = subprocess.Popen([*callctl, "server", "--port", "0", "--log-level", "warning",
                                       "--secret-file", f"{tmp}/secret"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            procs.append(server)
            url = str(wait_line(server, "listening")).rsplit(" ", 1)[1].strip()
            env["CALLCTL_SERVER"] = url
            media = ["--audio-in", "tone:440", "--audio-out", "null", "--video-in", "testsrc",
                     "--video-size", size, "--fps", str(fps), "--video-out", "null"]
            callee = subprocess.Popen([*callctl, "--json", "--as", "bob", "listen", "--auto-accept",
                                       "--once", "--device", "b", *media],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            procs.append(callee)
            wait_line(callee, '"registered"')
            caller = subprocess.Popen([*callctl, "--json", "--as", "alice", "call", "bob", "--video",
                                       "--device", "a", "--hangup-after", str(seconds + 3), *media],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            procs.append(caller)
            connected = wait_line(caller, '"call.connected"')
            time.sleep(2)  # let both encoders settle
            c0, e0, t0 = cpu_s(caller.pid), cpu_s(callee.pid), time.monotonic()
            time.sleep(seconds)
            c1, e1, t1 = cpu_s(caller.pid), cpu_s(callee.pid), time.monotonic()
            result = {
                "size": size, "fps": fps,
                "cpu_caller_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
                "cpu_callee_pct": round(100 * (e1 - e0) / (t1 - t0), 1),
                "rss_caller_mb": round(rss_mb(caller.pid), 1),
                "rss_callee_mb": round(rss_mb(callee.pid), 1),
                "setup_ms": connected["setup_ms"] if isinstance(connected, dict) else None,
            }
            caller.wait(timeout=30)
            return result
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(5)
                    except subprocess.TimeoutExpired:
                        p.kill()
                if p.stdout:
                    p.stdout.close()


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

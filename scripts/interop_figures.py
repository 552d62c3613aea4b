"""Per peer and direction: connected or not, set-up time, audio frames received of frames sent, each way.

Peers: callctl itself (aiortc) and GStreamer's webrtcbin (``examples/gst_peer.py``,
with the system Python).  Each call runs ``--seconds`` (default 5); callctl's
counts come from its control socket (``callctl status``) just before the
hangup, the GStreamer peer's from its ``ended`` line.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))

from callctl.harness.child import Child, callctl_command, callctl_env  # noqa: E402
from callctl.harness.server import ServerProcess  # noqa: E402

MEDIA = ["--audio-in", "tone:440", "--audio-out", "null"]


def status(env: dict[str, str], user: str, device: str) -> dict:
    out = subprocess.run(callctl_command("--as", user, "status", "--json", "--device", device), env=env,
                         capture_output=True, text=True, timeout=10).stdout
    return json.loads(out).get("call") or {}


def callctl_pair(env: dict[str, str], seconds: float) -> dict:
    kiosk = Child(callctl_command("--json", "--as", "bob", "listen", "--auto-accept", "--once", "--device", "k",
                                  *MEDIA), name="kiosk", env=env)
    kiosk.wait_event("registered", timeout=20)
    caller = Child(callctl_command("--json", "--as", "alice", "call", "bob", "--device", "c", *MEDIA),
                   name="caller", env=env)
    up = caller.wait_event("call.connected", timeout=20)
    time.sleep(seconds)
    a, b = status(env, "alice", "c"), status(env, "bob", "k")
    caller.stop(grace=3)
    kiosk.stop(grace=3)
    return {"connected": True, "setup_ms": up["setup_ms"],
            "caller_received_of_sent": [a.get("frames_received"), b.get("frames_sent")],
            "callee_received_of_sent": [b.get("frames_received"), a.get("frames_sent")]}


def gst(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["/usr/bin/python3", str(ROOT / "examples" / "gst_peer.py"), "--server", server.url,
                             "--token", server.token("gst"), *args], stdout=subprocess.PIPE, text=True)


def lines(proc: subprocess.Popen[str], timeout: float) -> list[dict]:
    out, _ = proc.communicate(timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def gst_calls_callctl(server: ServerProcess, env: dict[str, str], seconds: float) -> dict:
    kiosk = Child(callctl_command("--json", "--as", "bob", "listen", "--auto-accept", "--once", "--device", "k",
                                  *MEDIA), name="kiosk", env=env)
    kiosk.wait_event("registered", timeout=20)
    peer = gst(server, "--seconds", str(seconds), "call", "bob")
    up = kiosk.wait_event("call.connected", timeout=20)
    time.sleep(seconds - 0.5)
    b = status(env, "bob", "k")
    events = lines(peer, seconds + 20)
    kiosk.stop(grace=3)
    ended = next((e for e in events if e["event"] == "ended"), {})
    return {"connected": any(e["event"] == "connected" for e in events), "setup_ms_callctl": up["setup_ms"],
            "callctl_received_of_sent": [b.get("frames_received"), ended.get("audio_frames_sent")],
            "gst_received_of_sent": [ended.get("audio_frames_received"), b.get("frames_sent")]}


def callctl_calls_gst(server: ServerProcess, env: dict[str, str], seconds: float) -> dict:
    peer = gst(server, "listen")
    time.sleep(1.5)  # its event stream is open (it prints "registered")
    caller = Child(callctl_command("--json", "--as", "alice", "call", "gst", "--device", "c", *MEDIA),
                   name="caller", env=env)
    up = caller.wait_event("call.connected", timeout=20)
    time.sleep(seconds)
    a = status(env, "alice", "c")
    caller.stop(grace=3)
    events = lines(peer, 20)
    ended = next((e for e in events if e["event"] == "ended"), {})
    return {"connected": True, "setup_ms": up["setup_ms"],
            "callctl_received_of_sent": [a.get("frames_received"), ended.get("audio_frames_sent")],
            "gst_received_of_sent": [ended.get("audio_frames_received"), a.get("frames_sent")]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interop-") as tmp:
        server = ServerProcess(Path(tmp), ["--log-level", "warning"]).start()
        (Path(tmp) / "run").mkdir()
        env = callctl_env(XDG_RUNTIME_DIR=str(Path(tmp) / "run"), XDG_STATE_HOME=tmp,
                          CALLCTL_SERVER=server.url, CALLCTL_SECRET_FILE=str(server.secret_file))
        try:
            report = {
                "callctl_calls_callctl": callctl_pair(env, args.seconds),
                "gst_calls_callctl": gst_calls_callctl(server, env, args.seconds),
                "callctl_calls_gst": callctl_calls_gst(server, env, args.seconds),
            }
        finally:
            server.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

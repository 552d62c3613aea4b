"""A third-party peer: GStreamer's webrtcbin (libnice ICE, its own DTLS with an RSA certificate).

``examples/gst_peer.py`` speaks the documented signaling API over plain HTTP
and runs with the system Python (its ``gi``); callctl calls it and is called
by it.  Each side checks what it heard: callctl's recording holds the peer's
880 Hz tone, the peer's level meter holds callctl's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import av
import pytest

from callctl.harness.child import Child
from tests.audio import tone_fraction
from tests.cli import Callctl, Cli
from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "examples" / "gst_peer.py"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
PEER_HZ = 880.0
WAIT = 20.0


def _gstreamer() -> str | None:
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
             "from gi.repository import Gst; Gst.init(None);"
             "assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'nicesrc', 'opusenc', 'vp8enc'))")
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    except OSError as exc:
        return str(exc)
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip().splitlines()[-1]


MISSING = _gstreamer()
if MISSING is not None:
    pytest.skip(f"GStreamer webrtcbin is not usable here (scripts/setup --test installs it): {MISSING}",
                allow_module_level=True)


@pytest.fixture
def gst(server: ServerProcess, tmp_path: Path):  # type: ignore[no-untyped-def]
    peers: list[Child] = []

    def start(*args: str, user: str = "gst") -> Child:
        argv = [SYSTEM_PYTHON, str(PEER), "--server", server.url, "--token", server.token(user), *args]
        child = Child(argv, name=f"gst {' '.join(args[-2:])}", stderr=tmp_path / f"gst-{len(peers)}.log",
                      env={**os.environ, "GST_DEBUG": "2"})  # its errors in the log, for a failure
        peers.append(child)
        return child

    yield start
    for child in peers:
        child.stop(grace=2)


def peer_heard(peer: Child, floor_db: float = -30.0) -> int:
    """How many of the peer's level reports (two a second) held a tone above ``floor_db``."""
    return sum(1 for e in peer.named("level") if e["peak_db"] > floor_db)


async def kiosk_called_by_gst(cli: Callctl, gst, rec: Path, *gst_args: str) -> tuple[Cli, Child]:  # type: ignore[no-untyped-def]
    kiosk = await cli.listen("bob", "--auto-accept", "--once", "--record", str(rec))
    peer = gst(*gst_args, "--seconds", "3", "call", "bob")
    assert await kiosk.exit_code(timeout=WAIT) == 0, (kiosk.events[-3:], peer.describe())
    assert await peer.await_exit(WAIT) == 0, peer.describe()
    return kiosk, peer


@pytest.mark.parametrize("variant", [
    (),
    ("--strip", "ssrc", "--strip", "msid"),
    ("--strip", "mid"),
    ("--opus-fmtp", "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1"),
], ids=["as-is", "no-ssrc-no-msid", "no-mid-extension", "opus-stereo-fec"])
async def test_gstreamer_calls_callctl(cli: Callctl, gst, tmp_path: Path, variant: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "kiosk.wav"
    kiosk, peer = await kiosk_called_by_gst(cli, gst, rec, *variant)
    assert kiosk.named("call.connected") and not kiosk.named("warning"), kiosk.events
    duration, fraction = tone_fraction(rec, PEER_HZ)
    assert duration > 2.0 and fraction > 0.8, (duration, fraction)  # the first window may be the set-up
    assert peer_heard(peer) >= 4, peer.named("level")  # two seconds of callctl's tone at least


@pytest.mark.parametrize("setup", ["active", "passive"])
async def test_callctl_calls_gstreamer(cli: Callctl, gst, tmp_path: Path, setup: str) -> None:  # type: ignore[no-untyped-def]
    peer = gst("--setup", setup, "listen")
    await peer.await_event("registered")
    rec = tmp_path / "caller.wav"
    caller = await cli.call("alice", "gst", "--hangup-after", "3", "--record", str(rec))
    assert await caller.exit_code(timeout=WAIT) == 0, [
        e.get("message") or e.get("reason") for e in caller.events if e["event"] in ("error", "warning", "call.ended")]
    assert caller.named("media.flowing") and not caller.named("call.reconnecting"), caller.events
    duration, fraction = tone_fraction(rec, PEER_HZ)
    assert duration > 2.0 and fraction > 0.8, (duration, fraction, [e["remote"] for e in caller.named("media.level")])
    await peer.await_event("ended")
    assert peer_heard(peer) >= 4, peer.named("level")


async def test_a_peer_that_only_listens_is_a_warning_not_a_lost_call(cli: Callctl, gst) -> None:  # type: ignore[no-untyped-def]
    peer = gst("--receive-only", "listen")
    await peer.await_event("registered")
    caller = await cli.call("alice", "gst", "--hangup-after", "5")
    assert await caller.exit_code(timeout=WAIT) == 0, caller.events  # no watchdog "network_lost"
    warning = caller.named("warning")
    assert warning and "sends no audio" in warning[0]["message"], caller.events
    assert caller.named("call.ended")[0]["reason"] == "hangup"
    assert peer_heard(peer) >= 6


async def test_video_both_ways_with_gstreamer(cli: Callctl, gst, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rec = tmp_path / "kiosk.mkv"
    kiosk = await cli.listen("bob", "--auto-accept", "--once", "--record", str(rec), "--video-in", "testsrc",
                             "--video-size", "160x120", "--video-out", "null")
    peer = gst("--video", "--width", "320", "--height", "240", "--seconds", "4", "call", "bob")
    flowing = await kiosk.wait_event("video.flowing", timeout=WAIT)
    assert (flowing["width"], flowing["height"]) == (320, 240)
    seen = await peer.await_event("video", timeout=WAIT)
    assert (seen["width"], seen["height"]) == (160, 120)
    assert await kiosk.exit_code(timeout=WAIT) == 0
    with av.open(str(rec)) as container:
        sizes = {(f.width, f.height) for f in container.decode(video=0)}
    assert sizes == {(320, 240)}, sizes


def test_the_example_peer_is_documented() -> None:
    api = (ROOT / "docs" / "API.md").read_text()
    assert "examples/gst_peer.py" in api

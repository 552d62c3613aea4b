"""Video calls between real processes: frames, pause/resume, upgrade, recording."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from callctl.media.video_codec import opens
from tests.cli import Callctl


def video_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


async def test_testsrc_frames_arrive_at_size_and_rate(cli: Callctl, tmp_path: Path) -> None:
    out = tmp_path / "far.mkv"
    bob = await cli.listen("bob", "--auto-accept", "--once", "--video-out", f"file:{out}")
    alice = await cli.call("alice", "bob", "--video", "--video-in", "testsrc", "--video-size", "320x240",
                           "--fps", "15", "--hangup-after", "4", "--video-out", "null")
    flowing = await bob.wait_event("video.flowing")
    assert (flowing["width"], flowing["height"]) == (320, 240)
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    frames = video_frames(out)
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    seconds = bob.named("call.ended")[0]["duration_s"]
    assert len(frames) >= 0.8 * 15 * (seconds - 0.5), (len(frames), seconds)


async def test_video_paused_sends_nothing_until_resumed(cli: Callctl, tmp_path: Path) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--video-out", "null")
    alice = await cli.call("alice", "bob", "--video", "--video-in", "testsrc", "--video-size", "160x120",
                           "--video-paused", "--video-out", "null")
    await alice.wait_event("call.connected")
    await bob.wait_event("peer.video.paused")
    await alice.wait_event("media.level", count=3)  # a second and a half of connected call
    code, out, _ = await cli.run("bob", "status", "--json")
    assert '"video_frames_received": 0' in out
    code, _, err = await cli.run("alice", "video", "resume")
    assert code == 0, err
    await bob.wait_event("peer.video.resumed")
    flowing = await bob.wait_event("video.flowing")
    assert (flowing["width"], flowing["height"]) == (160, 120)
    code, _, err = await cli.run("alice", "video", "pause")
    await bob.wait_event("peer.video.paused", count=2)
    code, _, err = await cli.run("alice", "video", "pause")
    assert code == 0
    code, _, err = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0


@pytest.mark.parametrize("who", ["caller", "callee"])
async def test_audio_call_upgrades_to_video_from_either_side(cli: Callctl, who: str) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--video-in", "testsrc", "--video-size", "160x120",
                           "--video-out", "null")
    alice = await cli.call("alice", "bob", "--video-in", "testsrc", "--video-size", "160x120",
                           "--video-out", "null")
    await alice.wait_event("call.connected")
    sender, receiver, user = (alice, bob, "alice") if who == "caller" else (bob, alice, "bob")
    code, _, err = await cli.run(user, "video", "pause")
    assert code == 1 and "video on" in err  # nothing to pause in an audio call
    code, _, err = await cli.run(user, "video", "on")
    assert code == 0, err
    await sender.wait_event("media.video.enabled")
    await receiver.wait_event("peer.video.enabled")
    flowing = await receiver.wait_event("video.flowing")
    assert (flowing["width"], flowing["height"]) == (160, 120)
    code, _, err = await cli.run(user, "video", "off")
    assert code == 0, err
    await receiver.wait_event("peer.video.disabled")
    await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0


async def test_recording_holds_the_peer_audio_and_video_for_the_call(cli: Callctl, tmp_path: Path) -> None:
    rec = tmp_path / "call.mkv"
    bob = await cli.listen("bob", "--auto-accept", "--once", "--video-in", "testsrc",
                           "--video-size", "320x240", "--video-out", "null")
    alice = await cli.call("alice", "bob", "--video", "--video-in", "testsrc", "--video-size", "160x120",
                           "--video-out", "null", "--record", str(rec), "--hangup-after", "4")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    seconds = alice.named("call.ended")[0]["duration_s"]
    with av.open(str(rec)) as c:
        kinds = sorted(s.type for s in c.streams)
        duration = c.duration / 1e6
        video = c.streams.video[0]
        size = (video.codec_context.width, video.codec_context.height)
    assert kinds == ["audio", "video"]
    assert size == (320, 240)  # what bob sent
    assert abs(duration - seconds) < 1.0, (duration, seconds)


async def test_missing_camera_is_a_device_error_before_dialing(cli: Callctl) -> None:
    code, _, err = await cli.run("alice", "--server", "http://127.0.0.1:9", "call", "bob",
                                 "--video", "--video-in", "camera:/dev/video9", "--audio-in", "tone",
                                 "--audio-out", "null")
    assert code == 12
    assert "no camera at /dev/video9; cameras:" in err
    code, _, err = await cli.run("alice", "--server", "http://127.0.0.1:9", "call", "bob",
                                 "--video", "--video-in", "testsrc", "--video-size", "big",
                                 "--audio-in", "tone", "--audio-out", "null")
    assert code == 2 and "bad video size" in err


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_the_video_codec_asked_for_is_the_one_both_ends_use(cli: Callctl, tmp_path: Path, codec: str) -> None:
    out = tmp_path / "far.mkv"
    bob = await cli.listen("bob", "--auto-accept", "--once", "--video-out", f"file:{out}")  # the default: auto
    alice = await cli.call("alice", "bob", "--video", "--video-in", "testsrc", "--video-size", "320x240",
                           "--video-out", "null", "--video-codec", codec)
    flowing = await bob.wait_event("video.flowing")
    assert (flowing["width"], flowing["height"]) == (320, 240)
    expected = {"h264": "H264 (libx264)", "vp8": "VP8 (libvpx)"}[codec]
    for user in ("alice", "bob"):
        code, status, err = await cli.run(user, "--json", "status")
        assert code == 0, err
        assert json.loads(status)["call"]["video_codec"] == expected, status
    received = 0
    for _ in range(100):  # bob has decoded (and recorded) 20 frames: about 1.3 s of the call
        _, status, _ = await cli.run("bob", "--json", "status")
        received = json.loads(status)["call"]["video_frames_received"]
        if received >= 20:
            break
    assert received >= 20, status
    await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    with av.open(str(out)) as container:  # the recording holds what the far end decoded
        assert sum(1 for _ in container.decode(video=0)) >= 15


async def test_a_video_encoder_that_is_not_here_is_refused_before_dialing(cli: Callctl) -> None:
    # PyAV's FFmpeg has h264_v4l2m2m, but it opens only on a board with the hardware
    if opens("h264_v4l2m2m") is None:
        pytest.skip("this machine has a V4L2 H.264 encoder: nothing to refuse")
    code, _, err = await cli.run("alice", "--server", "http://127.0.0.1:9", "call", "bob", "--video",
                                 "--video-in", "testsrc", "--video-codec", "h264_v4l2m2m",
                                 "--audio-in", "tone", "--audio-out", "null")
    assert code == 2 and "h264_v4l2m2m does not open here" in err and "libx264, libvpx" in err, err
    code, _, err = await cli.run("alice", "--server", "http://127.0.0.1:9", "call", "bob",
                                 "--video-codec", "mpeg2", "--audio-in", "tone", "--audio-out", "null")
    assert code == 2 and "unknown --video-codec 'mpeg2'" in err, err

"""What happens during a call, between real processes: hold and unhold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tests.audio import read_mono, tone_fraction
from tests.cli import Callctl, Cli


async def _levels(cli: Cli, count: int, after: int) -> list[float]:
    """The peer's level in ``count`` ``media.level`` events after the first ``after`` ones."""
    await cli.wait_event("media.level", count=after + count)
    return [float(e["remote"]) for e in cli.named("media.level")[after:after + count]]


async def test_hold_silences_both_ways_and_unhold_brings_the_tone_back(cli: Callctl, tmp_path: Path) -> None:
    bob_wav, alice_wav = tmp_path / "bob.wav", tmp_path / "alice.wav"
    bob = await cli.listen("bob", "--auto-accept", "--record", str(bob_wav))  # sends 660 Hz
    alice = await cli.call("alice", "bob", "--record", str(alice_wav))  # sends 440 Hz
    flowing = await bob.wait_event("media.flowing")
    seen = len(bob.named("media.level"))
    assert max(await _levels(bob, 2, seen)) > 0.05, "no tone before the hold"

    code, _, err = await cli.run("alice", "hold")
    assert code == 0, err
    held = await bob.wait_event("peer.held")
    await alice.wait_event("media.held")
    code, out, _ = await cli.run("alice", "status", "--json")
    call = json.loads(out)["call"]
    assert (call["held"], call["state"]) == (True, "connected")
    code, out, _ = await cli.run("bob", "status", "--json")
    assert json.loads(out)["call"]["peer_held"] is True
    seen = len(bob.named("media.level"))
    while_held = await _levels(bob, 3, seen + 1)  # the first one may straddle the hold
    assert max(while_held) < 0.01, while_held
    code, _, err = await cli.run("alice", "video", "pause")
    assert code == 1 and "on hold" in err, err

    code, _, err = await cli.run("alice", "unhold")
    assert code == 0, err
    unheld = await bob.wait_event("peer.unheld")
    seen = len(bob.named("media.level"))
    assert max(await _levels(bob, 2, seen + 1)) > 0.05, "the tone did not come back"
    code, _, _ = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0
    await bob.wait_event("call.ended")
    assert bob.proc.returncode is None

    # the recordings, aligned on the callee's first media (the playout adds ~50 ms)
    start = float(flowing["ts"])
    held_at, unheld_at = float(held["ts"]) - start, float(unheld["ts"]) - start
    for wav, hz in ((bob_wav, 440.0), (alice_wav, 660.0)):
        samples, rate = read_mono(wav)
        quiet = samples[int((held_at + 0.4) * rate):int((unheld_at - 0.2) * rate)]
        assert quiet.size > rate // 2 and int(np.abs(quiet).max()) < 300, (wav.name, int(np.abs(quiet).max()))
        _, before = tone_fraction(wav, hz, start_s=0.2, end_s=held_at - 0.3)
        _, after = tone_fraction(wav, hz, start_s=unheld_at + 0.5)
        assert before > 0.7 and after > 0.7, (wav.name, before, after)


def _jpeg_size(path: Path) -> tuple[int, int]:
    import av

    assert path.read_bytes()[:3] == b"\xff\xd8\xff", "not a JPEG"
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.width, frame.height


async def test_a_snapshot_of_the_peers_video_is_a_jpeg_of_the_size_it_sent(cli: Callctl, tmp_path: Path) -> None:
    at_connect = tmp_path / "at-connect.jpg"
    bob = await cli.listen("bob", "--auto-accept", "--video-in", "testsrc", "--video-size", "320x240",
                           "--video-out", "null")
    hook = f"{sys.executable} -m callctl --as alice snapshot {at_connect}"
    alice = await cli.call("alice", "bob", "--video", "--video-in", "testsrc", "--video-size", "640x480",
                           "--video-out", "null", "--on-connect", hook)
    await alice.wait_event("video.flowing")
    shot = tmp_path / "door.jpg"
    code, out, err = await cli.run("alice", "snapshot", str(shot))
    assert code == 0, err
    assert _jpeg_size(shot) == (320, 240)
    code, _, err = await cli.run("bob", "snapshot", str(tmp_path / "visitor.jpg"))
    assert code == 0, err
    assert _jpeg_size(tmp_path / "visitor.jpg") == (640, 480)
    code, _, err = await cli.run("bob", "snapshot", str(tmp_path / "visitor.png"))
    assert code == 2 and ".jpg" in err, err
    code, _, err = await cli.run("bob", "snapshot", str(tmp_path / "no" / "such" / "dir.jpg"))
    assert code == 1 and "no such directory" in err, err
    code, _, _ = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0, alice.stderr
    assert _jpeg_size(at_connect) == (320, 240), alice.stderr  # the --on-connect hook's, made as it connected
    await bob.wait_event("call.ended")


async def test_dtmf_both_ways_digits_in_order_and_the_hook_once_per_digit(cli: Callctl, tmp_path: Path) -> None:
    digits = tmp_path / "digits"
    bob = await cli.listen("bob", "--auto-accept", "--on-dtmf", f"sh -c 'echo $CALLCTL_DIGIT >> {digits}'")
    alice = await cli.call("alice", "bob")
    await bob.wait_event("media.flowing")
    await alice.wait_event("media.flowing")
    code, out, err = await cli.run("alice", "dtmf", "1234#", "--duration", "80", "--gap", "60")
    assert code == 0, err
    await bob.wait_event("dtmf", count=5)
    assert [e["digit"] for e in bob.named("dtmf")] == ["1", "2", "3", "4", "#"]
    code, _, err = await cli.run("bob", "dtmf", "*9wA")
    assert code == 0, err
    await alice.wait_event("dtmf", count=3)
    assert [e["digit"] for e in alice.named("dtmf")] == ["*", "9", "A"]
    code, _, err = await cli.run("alice", "dtmf", "12x")
    assert code == 2 and "'x'" in err and len(err.strip().splitlines()) == 1, err
    code, _, _ = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0
    await bob.wait_event("call.ended")
    assert digits.read_text().split() == ["1", "2", "3", "4", "#"]  # after the call: the hooks have run
    assert len(bob.named("dtmf")) == 5


async def test_messages_both_ways_the_cap_and_a_hostile_payload_that_is_never_run(
        cli: Callctl, tmp_path: Path) -> None:
    received, pwned = tmp_path / "received", tmp_path / "pwned"
    bob = await cli.listen("bob", "--auto-accept", "--on-message",
                           f"sh -c 'cat >> {received}; echo \" [$CALLCTL_MESSAGE_TYPE]\" >> {received}'")
    alice = await cli.call("alice", "bob")
    await bob.wait_event("call.connected")
    await alice.wait_event("call.connected")
    text = "héllo 🌍 שלום — \"quoted\" 'single'\nsecond line"
    code, _, err = await cli.run("alice", "send", text)
    assert code == 0, err
    message = await bob.wait_event("message")  # delivered before send returned
    assert (message["type"], message["body"], message["peer"]) == ("text", text, "alice")

    hostile = f"$(touch {pwned}) `touch {pwned}`; touch {pwned} \" ' \\n"
    code, _, err = await cli.run("alice", "send", hostile)
    assert code == 0, err
    doc = tmp_path / "door.json"
    doc.write_text('{"door": "open", "codes": [1, 2, 3], "who": "zoë"}')
    code, _, err = await cli.run("alice", "send", "--data", f"@{doc}")
    assert code == 0, err
    await bob.wait_event("message", count=3)
    assert bob.named("message")[2]["body"] == {"door": "open", "codes": [1, 2, 3], "who": "zoë"}

    code, _, err = await cli.run("bob", "send", "--data", '{"ok": true}')
    assert code == 0, err
    answer = await alice.wait_event("message")
    assert (answer["type"], answer["body"]) == ("json", {"ok": True})

    code, _, err = await cli.run("alice", "send", "x" * 20000)
    assert code == 2 and "at most 16384" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = await cli.run("alice", "send", "--data", "{not json")
    assert code == 2 and "not JSON" in err, err
    code, _, err = await cli.run("alice", "send")
    assert code == 2, err
    code, _, _ = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0
    await bob.wait_event("call.ended")
    assert len(bob.named("message")) == 3, "the refused ones were sent anyway"
    assert not pwned.exists(), "a message's payload was run"
    assert received.read_text() == f"{text} [text]\n{hostile} [text]\n" + \
        '{"door": "open", "codes": [1, 2, 3], "who": "zoë"} [json]\n'
    code, _, err = await cli.run("bob", "send", "nobody is there")
    assert code == 1 and "no call in progress" in err, err

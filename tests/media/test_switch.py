"""``callctl switch``: another microphone or speaker mid-call, through PortAudio's real ALSA path."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.audio import tone_fraction
from tests.cli import Callctl
from tests.media.test_devices import MIC_HZ, alsa_home
from tests.media.test_ring import heard, near

pytest.importorskip("pyaudio")


async def test_switching_mic_and_speaker_mid_call_reaches_the_peer(cli: Callctl, tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    rec = tmp_path / "bob.wav"
    bob = await cli.listen("bob", "--auto-accept", "--record", str(rec))  # sends 660 Hz
    # the "microphone" plays a steady tone: noise suppression would take it out as noise, and the
    # echo canceller's suppressor as echo of the speaker's tone (523 and 660 Hz share its band)
    alice = await cli.start("alice", "call", "bob", "--device", "desk", "--audio-in", "tone:440",
                            "--audio-out", "null", "--no-noise-suppression", "--no-aec", env={"HOME": str(home)})
    flowing = await bob.wait_event("media.flowing")
    await bob.wait_event("media.level", count=len(bob.named("media.level")) + 3)  # 1.5 s of 440 Hz

    code, _, err = await cli.run("alice", "switch", "--mic", "Kiosk_Mic", env={"HOME": str(home)})
    assert code == 0, err
    switched = await alice.wait_event("media.switched")
    assert (switched["kind"], switched["device"]) == ("audio_in", "mic:Kiosk_Mic"), switched
    code, _, err = await cli.run("alice", "switch", "--speaker", "Kiosk_Speaker", env={"HOME": str(home)})
    assert code == 0, err
    raw = tmp_path / "speaker.raw"
    deadline = time.monotonic() + 20
    while not (raw.exists() and sum(near(f, 660, tolerance=25) for f in heard(raw)) >= 40):  # 1 s of bob
        assert time.monotonic() < deadline, "the new speaker never played the peer"
        await asyncio.sleep(0.1)
    await bob.wait_event("media.level", count=len(bob.named("media.level")) + 3)

    code, _, err = await cli.run("alice", "switch", "--mic", "no-such-mic", env={"HOME": str(home)})
    assert code == 12 and "no-such-mic" in err, err  # and the call goes on as it was
    code, _, err = await cli.run("alice", "switch")
    assert code == 2, err
    code, _, _ = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0, alice.stderr
    await bob.wait_event("call.ended")
    # bob heard 440 Hz, then the new mic's tone: one call, no renegotiation, no gap to speak of
    at = float(switched["ts"]) - float(flowing["ts"])
    _, before = tone_fraction(rec, 440, start_s=0.3, end_s=at - 0.2)
    _, after = tone_fraction(rec, MIC_HZ, start_s=at + 0.5)
    assert before > 0.8 and after > 0.8, (before, after)
    assert not alice.named("call.reconnecting")

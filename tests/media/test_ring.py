"""Ring and ringback reach the speaker through PortAudio's real ALSA path, and stop on answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from tests.audio import dominant_hz
from tests.cli import Callctl
from tests.media.test_devices import alsa_home

pytest.importorskip("pyaudio")

WINDOW = 1200  # 25 ms at 48 kHz: the ring's two tones alternate every 50 ms


def heard(raw: Path) -> list[float]:
    """The dominant frequency of every loud 25 ms window the speaker played (0: quiet)."""
    played = np.frombuffer(raw.read_bytes(), dtype="<i2")
    out = []
    for i in range(0, played.size - WINDOW, WINDOW):
        w = played[i:i + WINDOW]
        out.append(dominant_hz(w, 48000) if np.abs(w).max() > 1000 else 0.0)
    return out


def near(hz: float, *targets: float, tolerance: float = 45.0) -> bool:
    return any(abs(hz - t) < tolerance for t in targets)


async def until_played(raw: Path, check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (raw.exists() and check(heard(raw))):
        assert time.monotonic() < deadline, "the speaker never played it"
        await asyncio.sleep(0.1)


async def test_the_kiosk_rings_on_its_speaker_until_it_answers(cli: Callctl, tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    raw = tmp_path / "speaker.raw"
    bob = await cli.start("bob", "listen", "--device", "kiosk", "--once", "--audio-in", "tone:660",
                          "--audio-out", "speaker:Kiosk_Speaker", env={"HOME": str(home)})
    await bob.wait_event("registered")
    alice = await cli.call("alice", "bob", "--hangup-after", "2")
    await bob.wait_event("call.incoming")
    # a whole burst of the ring (both of its tones) is on the speaker before anyone answers
    await until_played(raw, lambda hz: sum(near(f, 800) for f in hz) >= 6 and sum(near(f, 1000) for f in hz) >= 6)
    code, _, err = await cli.run("bob", "accept", "--device", "kiosk")
    assert code == 0, err
    assert await alice.exit_code() == 0, alice.stderr
    assert await bob.exit_code() == 0, bob.stderr
    hz = heard(raw)
    ring = [i for i, f in enumerate(hz) if near(f, 800, 1000)]
    call = [i for i, f in enumerate(hz) if near(f, 440, tolerance=25)]
    assert len(call) * WINDOW / 48000 > 1.0, len(call)  # alice's tone played after the answer
    assert ring and max(ring) < min(call), (ring[-3:], call[:3])  # and no ring once it did


async def test_the_caller_hears_ringback_until_the_callee_answers(cli: Callctl, tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    raw = tmp_path / "speaker.raw"
    bob = await cli.listen("bob", "--once", "--ringtone", "none")
    alice = await cli.start("alice", "call", "bob", "--device", "desk", "--audio-in", "tone:440",
                            "--audio-out", "speaker:Kiosk_Speaker", "--hangup-after", "2",
                            env={"HOME": str(home)})
    await alice.wait_event("call.ringback")
    await until_played(raw, lambda hz: sum(near(f, 425, tolerance=25) for f in hz) >= 20)  # 0.5 s of it
    code, _, err = await cli.run("bob", "accept", "--device", "kiosk")
    assert code == 0, err
    assert await alice.exit_code() == 0, alice.stderr
    assert await bob.exit_code() == 0
    hz = heard(raw)
    ringback = [i for i, f in enumerate(hz) if near(f, 425, tolerance=25)]
    call = [i for i, f in enumerate(hz) if near(f, 660, tolerance=25)]
    assert len(call) * WINDOW / 48000 > 1.0, len(call)
    assert max(ringback) < min(call), (ringback[-3:], call[:3])


async def test_no_ringtone_is_silence_and_a_bad_one_is_a_usage_error(cli: Callctl, tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    raw = tmp_path / "speaker.raw"
    bob = await cli.start("bob", "listen", "--device", "kiosk", "--once", "--audio-in", "tone:660",
                          "--audio-out", "speaker:Kiosk_Speaker", "--ringtone", "none",
                          "--accept-after", "1.5", env={"HOME": str(home)})
    await bob.wait_event("registered")
    alice = await cli.call("alice", "bob", "--hangup-after", "1.5")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    hz = heard(raw)
    assert not any(near(f, 800, 1000) for f in hz)
    assert any(near(f, 440, tolerance=25) for f in hz)
    code, _, err = await cli.run("bob", "listen", "--audio-in", "tone", "--audio-out", "null",
                                 "--ringtone", str(tmp_path / "missing.wav"))
    assert code == 2 and err.count("\n") == 1 and "--ringtone takes tone, none or an audio file" in err


async def test_the_held_side_hears_the_hold_pips_and_not_the_call(cli: Callctl, tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    raw = tmp_path / "speaker.raw"
    bob = await cli.start("bob", "listen", "--device", "kiosk", "--once", "--auto-accept", "--ringtone", "none",
                          "--audio-in", "tone:660", "--audio-out", "speaker:Kiosk_Speaker", env={"HOME": str(home)})
    await bob.wait_event("registered")
    alice = await cli.call("alice", "bob", "--audio-in", "tone:550")
    await bob.wait_event("media.flowing")
    await until_played(raw, lambda hz: sum(near(f, 550, tolerance=25) for f in hz) >= 20)  # 0.5 s of the call
    code, _, err = await cli.run("alice", "hold")
    assert code == 0, err
    await bob.wait_event("peer.held")
    held_from = len(heard(raw))
    # two pips (0.15 s each) of 440 Hz: 6 windows or more, after the hold began
    await until_played(raw, lambda hz: sum(near(f, 440, tolerance=25) for f in hz[held_from:]) >= 8)
    code, _, err = await cli.run("alice", "unhold")
    assert code == 0, err
    await bob.wait_event("peer.unheld")
    unheld_from = len(heard(raw))
    await until_played(raw, lambda hz: sum(near(f, 550, tolerance=25) for f in hz[unheld_from:]) >= 20)
    code, _, _ = await cli.run("alice", "hangup")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    hz = heard(raw)
    pips = [i for i, f in enumerate(hz) if near(f, 440, tolerance=25)]
    call_during_hold = [i for i in range(held_from + 10, unheld_from) if near(hz[i], 550, tolerance=25)]
    assert pips and min(pips) >= held_from - 2, (pips[:3], held_from)
    assert not call_during_hold, call_during_hold[:5]  # the peer's audio is not played while held
    assert max(pips) < unheld_from + 10  # and the pips stop with the hold

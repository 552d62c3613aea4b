"""Microphones and speakers through PortAudio's real ALSA path.

There is no sound card here, so each test writes an ALSA configuration whose
PCMs are ``file`` plugins: the "microphone" plays a raw file recorded with a
tone, the "speaker" writes what it is given to a raw file. PortAudio opens
them like any card, so the capture and playback code really runs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.audio import dominant_hz, tone_fraction
from tests.cli import Callctl

pytest.importorskip("pyaudio")

MIC_HZ = 523.0


def alsa_home(folder: Path, seconds: float = 20) -> Path:
    """A HOME whose .asoundrc defines 'Kiosk_Mic' and 'Kiosk_Speaker'."""
    home = folder / "home"
    home.mkdir()
    t = np.arange(int(48000 * seconds))
    (folder / "mic.raw").write_bytes((np.sin(2 * math.pi * MIC_HZ * t / 48000) * 8000).astype("<i2").tobytes())
    (home / ".asoundrc").write_text(f"""
pcm.Kiosk_Mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{folder / 'mic.raw'}"
    format "raw"
}}
pcm.Kiosk_Speaker {{
    type file
    slave.pcm "null"
    file "{folder / 'speaker.raw'}"
    format "raw"
}}
""")
    return home


def callctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callctl", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HOME": str(home)})


def test_devices_json_lists_microphones_speakers_and_cameras(tmp_path: Path) -> None:
    out = callctl(alsa_home(tmp_path), "devices", "--json")
    assert out.returncode == 0, out.stderr
    assert "ALSA lib" not in out.stderr and "jack" not in out.stderr.lower()
    found = json.loads(out.stdout)
    assert set(found) == {"microphones", "speakers", "cameras"}
    names = [m["name"] for m in found["microphones"]]
    assert "Kiosk_Mic" in names
    for entry in found["microphones"] + found["speakers"]:
        assert set(entry) == {"name", "channels", "default_rate", "default"}
        assert isinstance(entry["channels"], int) and entry["default_rate"] > 0
    assert sum(m["default"] for m in found["microphones"]) <= 1
    for cam in found["cameras"]:
        assert set(cam) == {"path", "name", "formats"}


def test_a_missing_device_fails_before_dialing_with_the_names_that_exist(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    out = callctl(home, "--as", "alice", "--server", "http://127.0.0.1:9", "call", "bob",
                  "--audio-in", "mic:no-such-mic", "--audio-out", "null")
    assert out.returncode == 12
    assert "no microphone matching 'no-such-mic'" in out.stderr and "'Kiosk_Mic'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = callctl(home, "--as", "alice", "--server", "http://127.0.0.1:9", "call", "bob",
                  "--audio-in", "tone", "--audio-out", "speaker:nowhere")
    assert out.returncode == 12 and "no speaker matching 'nowhere'" in out.stderr


async def test_call_through_microphone_and_speaker(cli: Callctl, tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    rec = tmp_path / "alice.wav"
    # bob is the kiosk: real capture and playback code, devices picked by a
    # case-insensitive part of their names
    bob = await cli.start("bob", "listen", "--device", "kiosk", "--auto-accept", "--once",
                          "--audio-in", "mic:kiosk_m", "--audio-out", "speaker:SPEAKER",
                          # steady tones are what noise suppression and the echo suppressor take
                          # out (tests/media/test_echo.py runs the microphone path on speech)
                          "--no-noise-suppression", "--no-aec",
                          env={"HOME": str(home)})
    await bob.wait_event("registered")
    alice = await cli.call("alice", "bob", "--hangup-after", "3", "--record", str(rec))
    assert await alice.exit_code(timeout=30) == 0, alice.stderr
    assert await bob.exit_code() == 0, bob.stderr
    assert "ALSA lib" not in bob.stderr

    # the kiosk's microphone reached alice
    duration, fraction = tone_fraction(rec, MIC_HZ)
    assert duration > 2.5 and fraction > 0.8, (duration, fraction)
    # alice's tone came out of the kiosk's speaker
    played = np.frombuffer((tmp_path / "speaker.raw").read_bytes(), dtype="<i2")
    loud = [played[i:i + 4800] for i in range(0, played.size - 4800, 4800)
            if np.abs(played[i:i + 4800]).max() > 1000]
    assert len(loud) >= 20, len(loud)  # at least 2 s of sound
    hits = sum(abs(dominant_hz(w, 48000) - 440) < 5 for w in loud)
    assert hits / len(loud) > 0.8


def test_preview_prints_the_microphone_level_and_loops_back(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    out = callctl(home, "preview", "--audio", "--mic", "kiosk_mic", "--loopback",
                  "--speaker", "speaker", "--duration", "2.1")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("level")]
    assert len(lines) == 2
    # the recorded tone has amplitude 8000: peak 20*log10(8000/32768) = -12.2 dBFS
    assert all("peak -12." in line for line in lines), lines
    played = np.frombuffer((tmp_path / "speaker.raw").read_bytes(), dtype="<i2")
    assert abs(dominant_hz(played[-48000:], 48000) - MIC_HZ) < 3


def test_preview_without_a_microphone_is_a_device_error(tmp_path: Path) -> None:
    home = tmp_path / "empty"
    home.mkdir()
    (home / ".asoundrc").write_text("")
    out = callctl(home, "preview", "--audio", "--mic", "usb")
    assert out.returncode == 12 and "no microphone" in out.stderr


DEVICE_LOSS_SCRIPT = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from callctl.media.audio import NullSink, ToneSource
from callctl.media.devices import MicSource
from callctl.media.peer import MediaCallbacks, PeerConnection

async def main():
    events = []
    up = [asyncio.Event(), asyncio.Event()]
    mic = MicSource("kiosk_mic")
    far = NullSink()
    a = PeerConnection([], mic, [NullSink()], MediaCallbacks(
        on_up=up[0].set, on_lost=lambda why: None, on_device=lambda e, f: events.append((e, f))))
    b = PeerConnection([], ToneSource(440), [far], MediaCallbacks(on_up=up[1].set, on_lost=lambda why: None))
    await a.apply_answer(await b.create_answer(await a.create_offer()))
    await asyncio.wait_for(asyncio.gather(up[0].wait(), up[1].wait()), 10)
    a.start(); b.start()
    await asyncio.sleep(1.0)
    mic._stream.stop_stream()          # the device stops delivering, as when unplugged
    lost_at = time.monotonic()
    while not any(e == "device.lost" for e, _ in events):
        assert time.monotonic() - lost_at < 5, events
        await asyncio.sleep(0.1)
    frames_while_lost = far.frames
    while not any(e == "device.restored" for e, _ in events):
        assert time.monotonic() - lost_at < 10, events
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert far.frames > frames_while_lost + 20          # the call went on all along
    assert mic.counters.callbacks > 0 and not mic.stalled()
    assert a.received.frames > 100
    await a.close(); await b.close()
    print("EVENTS", [(e, f["kind"], f["device"]) for e, f in events])

asyncio.run(main())
"""


def test_an_unplugged_microphone_goes_silent_is_reported_and_reopened(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    out = subprocess.run([sys.executable, "-c", DEVICE_LOSS_SCRIPT, str(Path(__file__).parents[2] / "cli")],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EVENTS [('device.lost', 'mic', 'Kiosk_Mic'), ('device.restored', 'mic', 'Kiosk_Mic')]" in out.stdout


SPEAKER_QUEUE = r"""
import sys, time
import numpy as np
from callctl.media.devices import SpeakerSink, SPEAKER_TRIM_WINDOW

spk = SpeakerSink("Kiosk_Speaker")
frame = np.zeros(960, np.int16)
deadline = time.monotonic() + 10
while spk.counters.callbacks < 5:  # the card is running
    assert time.monotonic() < deadline, "no callbacks"
    time.sleep(0.01)
for _ in range(8):  # a burst after a stall: 160 ms standing in the queue
    spk.write(frame)
start, n = time.monotonic(), 0
depths = []
while time.monotonic() - start < 7:  # then one frame per 20 ms, as the playout clock writes
    n += 1
    spk.write(frame)
    time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
    depths.append(len(spk._frames))
spk.close()
print(spk.counters.extra.get("trimmed", 0), max(depths[:25]), min(depths[-50:]), spk.counters.underflows)
"""


def test_a_speaker_queue_left_deep_by_a_burst_comes_back_down(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    out = subprocess.run([sys.executable, "-c", SPEAKER_QUEUE], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0, out.stderr
    trimmed, early, late, underflows = map(int, out.stdout.split())
    assert early >= 6, out.stdout  # the burst stood in the queue...
    # ...and was taken back out, a frame a second: what stands in the queue over the last second
    # (its least depth; a writer a busy machine delayed may burst on top of it) is a frame or two
    assert trimmed >= 5 and late <= 2, out.stdout

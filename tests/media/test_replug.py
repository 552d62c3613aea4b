"""A USB sound card unplugged and plugged back under another name or index, through real ALSA.

Each test runs a script in its own process (PortAudio and ALSA's configuration
are per process) with a HOME whose ``.asoundrc`` the script rewrites as it
goes: "plugging in" is a configuration that defines the card's PCMs (ALSA
``file`` plugins: a microphone plays a raw file holding a tone, a speaker
writes what it gets to a raw file), "unplugging" one that no longer does.
PortAudio reads its device list once per initialization, and ALSA reads its
configuration again when a file changed: so a card that comes back is only
found if callctl reads the device list again, and the tone that arrives
shows which PCM it came from.

What is simulated: a stream on a PCM that left the configuration keeps
working (ALSA has no way to unplug a plugin PCM), so the tests stop it, as a
card that vanished stops calling back.  Everything after that is the real
code path: the watchdog notices the stall, reopening fails while the card is
gone, and succeeds through a re-read device list once it is back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyaudio")

ROOT = Path(__file__).parents[2]

PRELUDE = r"""
import asyncio, logging, math, os, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import numpy as np
from tests.audio import dominant_hz
from callctl.media import devices, watchdog
from callctl.media.audio import AudioSink, NullSink, ToneSource
from callctl.media.devices import MicSource, SpeakerSink
from callctl.media.errors import DeviceError
from callctl.media.echo import Processing
from callctl.media.peer import MediaCallbacks, PeerConnection

# the microphones here play steady tones, which noise suppression and the echo suppressor
# take out (the speaker's tone shares their band)
STEADY_TONES = Processing(aec=False, noise_suppression=False)

# the same logic, retried faster than a person would need
watchdog.POLL_S, watchdog.REOPEN_EVERY_S = 0.1, 0.3
devices._DeviceStream.STALL_S = 0.5

HOME = Path(os.environ["HOME"])
DIR = HOME.parent
LOG = []

class _Keep(logging.Handler):
    def emit(self, record):
        LOG.append(record.getMessage())

_log = logging.getLogger("callctl.media")
_log.addHandler(_Keep())
_log.setLevel(logging.INFO)
_log.propagate = False

def tone(hz):
    path = DIR / f"tone{hz}.raw"
    if not path.exists():
        t = np.arange(48000 * 30)
        path.write_bytes((np.sin(2 * math.pi * hz * t / 48000) * 8000).astype("<i2").tobytes())
    return path

def pcm(hz, out):
    '''A PCM: its capture plays a tone (hz), its playback is written to a file (out).'''
    return (f'{{ type file slave.pcm "null" file "{out or "/dev/null"}" '
            + (f'infile "{tone(hz)}" ' if hz else "") + 'format "raw" }')

def plug(*pcms):
    '''ALSA's configuration from now on: PCMs (name, microphone tone Hz or None, speaker file).'''
    (HOME / ".asoundrc").write_text("".join(f"pcm.{name} {pcm(hz, out)}\n" for name, hz, out in pcms))

def plug_default(hz, out, *pcms):
    '''The default device: a microphone playing hz, a speaker written to out; other PCMs too.'''
    plug(*pcms)
    with (HOME / ".asoundrc").open("a") as f:
        f.write(f"pcm.!default {{ type asym capture.pcm {pcm(hz, None)} playback.pcm {pcm(None, out)} }}\n")

def unplug(*streams):
    '''The card vanished: its PCMs leave the configuration and its streams stop calling back.'''
    plug(("Line_In", 440, None))
    for stream in streams:
        stream._stream.stop_stream()

async def until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; log: {LOG}"
        await asyncio.sleep(0.02)

def tried_and_failed(endpoint):
    return any(m.startswith(f"{endpoint.name} still gone") for m in LOG)

def hz_of(frames, n=25):
    '''The dominant frequency of the last n 20 ms frames (0: not that many yet).'''
    if len(frames) < n:
        return 0.0
    return dominant_hz(np.concatenate(frames[-n:]), 48000)

def played_hz(path, seconds=0.5):
    '''The dominant frequency of the last part of what a speaker PCM wrote (0: too little yet).'''
    data = np.frombuffer(path.read_bytes() if path.exists() else b"", dtype="<i2")
    tail = data[-int(48000 * seconds):]
    if tail.size < 48000 * seconds or np.abs(tail).max() < 1000:
        return 0.0
    return dominant_hz(tail, 48000)

class Keep(AudioSink):
    name = "keep"
    def __init__(self):
        self.pcm, self.frames = [], 0
    def write(self, pcm):
        self.pcm.append(pcm)
        self.frames += 1

async def connected_pair(a_source, a_sinks, events):
    '''Two peer connections in this process: a (the kiosk, with the devices) and b (sends 440 Hz).'''
    far = Keep()
    up = [asyncio.Event(), asyncio.Event()]
    a = PeerConnection([], a_source, a_sinks, MediaCallbacks(
        on_up=up[0].set, on_lost=lambda why: None,
        on_device=lambda e, f: events.append((e, f.get("kind"), f.get("device")))),
        processing=STEADY_TONES)
    b = PeerConnection([], ToneSource(440), [far], MediaCallbacks(on_up=up[1].set, on_lost=lambda why: None))
    await a.apply_answer(await b.create_answer(await a.create_offer()))
    await asyncio.wait_for(asyncio.gather(up[0].wait(), up[1].wait()), 10)
    a.start(); b.start()
    return a, b, far
"""


def run(tmp_path: Path, script: str) -> str:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("")
    out = subprocess.run([sys.executable, "-c", PRELUDE + script, str(ROOT / "cli"), str(ROOT)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": str(home)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ALSA lib" not in out.stderr
    return out.stdout


REPLUG_MID_CALL = r"""
async def main():
    plug(("usbmic", 523, None), ("usbspk", None, DIR / "spk1.raw"))
    mic, spk = MicSource("usbmic"), SpeakerSink("usbspk")
    first = (mic.device.index, spk.device.index)
    events = []
    a, b, far = await connected_pair(mic, [spk], events)
    await until(lambda: abs(hz_of(far.pcm) - 523) < 5, "the first microphone's tone at the far end")
    await until(lambda: abs(played_hz(DIR / "spk1.raw") - 440) < 5, "the far end's tone on the speaker")

    unplug(mic, spk)
    await until(lambda: len(events) == 2, "device.lost for both")
    assert sorted(events) == [("device.lost", "mic", "usbmic"), ("device.lost", "speaker", "usbspk")]
    await until(lambda: tried_and_failed(mic) and tried_and_failed(spk), "a reopening that fails")
    silent_from = len(far.pcm)

    # back, as another card number: other names, other indexes
    plug(("Line_In", 440, None), ("usbmic2", 660, None), ("usbspk2", None, DIR / "spk2.raw"))
    await until(lambda: len(events) == 4, "device.restored for both")
    assert sorted(events[2:]) == [("device.restored", "mic", "usbmic2"),
                                  ("device.restored", "speaker", "usbspk2")], events
    assert (mic.device.name, spk.device.name) == ("usbmic2", "usbspk2")
    assert (mic.device.index, spk.device.index) != first, (first, mic.device.index, spk.device.index)
    # the call went on all along, and now carries the new card both ways
    assert max(np.abs(f).max() for f in far.pcm[silent_from:silent_from + 10]) < 100  # silent while lost
    await until(lambda: abs(hz_of(far.pcm) - 660) < 5, "the replugged microphone's tone at the far end")
    await until(lambda: abs(played_hz(DIR / "spk2.raw") - 440) < 5, "the far end's tone on the new speaker")
    assert any(m == "mic:usbmic is back as mic:usbmic2" for m in LOG), LOG
    assert any(m.startswith("audio devices read again: 'Line_In', 'usbmic2'") for m in LOG), LOG
    await a.close(); await b.close()
    print("OK", first, (mic.device.index, spk.device.index))

asyncio.run(main())
"""


def test_a_card_replugged_under_another_name_and_index_comes_back_mid_call(tmp_path: Path) -> None:
    assert run(tmp_path, REPLUG_MID_CALL).startswith("OK")


DEFAULT_DEVICE = r"""
async def main():
    plug_default(523, DIR / "spk1.raw")
    mic, spk = MicSource(None), SpeakerSink(None)
    assert (mic.device.name, spk.device.name) == ("default", "default")
    events, heard = [], []

    async def pump():  # what a call does: read the microphone, feed the speaker, every 20 ms
        tone440 = ToneSource(440)
        while True:
            heard.append(mic.read())
            spk.write(tone440.read())
            await asyncio.sleep(0.02)

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(watchdog.watch_devices(
        [mic, spk], lambda e, f: events.append((e, f["kind"], f["device"]))))]
    await until(lambda: abs(hz_of(heard) - 523) < 5, "the default microphone's tone")
    await until(lambda: abs(played_hz(DIR / "spk1.raw") - 440) < 5, "our tone on the default speaker")

    mic._stream.stop_stream(); spk._stream.stop_stream()
    plug()  # no card at all: no default either
    await until(lambda: len(events) == 2, "device.lost for both")
    await until(lambda: tried_and_failed(mic) and tried_and_failed(spk), "a reopening that fails")
    with_no_card = devices.audio_devices()

    plug_default(660, DIR / "spk2.raw", ("Line_In", 440, None))
    await until(lambda: len(events) == 4, "device.restored for both")
    assert sorted(events) == [("device.lost", "mic", "default"), ("device.lost", "speaker", "default"),
                              ("device.restored", "mic", "default"),
                              ("device.restored", "speaker", "default")], events
    await until(lambda: abs(hz_of(heard) - 660) < 5, "the new default microphone's tone")
    await until(lambda: abs(played_hz(DIR / "spk2.raw") - 440) < 5, "our tone on the new default speaker")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    mic.close(); spk.close()
    assert with_no_card == [], with_no_card
    print("OK")

asyncio.run(main())
"""


def test_the_default_device_comes_back_after_replug(tmp_path: Path) -> None:
    assert run(tmp_path, DEFAULT_DEVICE).startswith("OK")


ABSENT_AT_START = r"""
async def main():
    try:
        devices.pick("usbmic", "input")
    except DeviceError as exc:
        assert "no microphone matching 'usbmic'; microphones: none" in str(exc), exc
    else:
        raise AssertionError("found a microphone that is not there")
    plug(("Line_In", 440, None), ("USB_Mic_Array", 523, None))  # plugged in after the process started
    assert devices.pick("usb_mic", "input").name == "USB_Mic_Array"
    mic = MicSource("usb_mic")
    assert (mic.device.index, mic.device.name) == (1, "USB_Mic_Array")
    heard = []
    while abs(hz_of(heard) - 523) >= 5:
        assert len(heard) < 500, "no tone from the microphone"
        heard.append(mic.read())
        await asyncio.sleep(0.02)
    mic.close()
    assert sum(m.startswith("audio devices read again") for m in LOG) == 1, LOG
    print("OK")

asyncio.run(main())
"""


def test_a_card_plugged_in_after_the_process_started_is_found_by_name(tmp_path: Path) -> None:
    assert run(tmp_path, ABSENT_AT_START).startswith("OK")


ABSENT_WHEN_THE_CALL_STARTS = r"""
from callctl.media.assembly import MediaOptions, build_peer, check

async def main():
    plug(("usbmic", 523, None), ("Speaker", None, DIR / "spk.raw"))
    opts = MediaOptions(audio_in="mic:usbmic", audio_out="speaker:speaker", processing=STEADY_TONES)
    check(opts)  # as `listen` does when it starts: the microphone is there
    plug(("Speaker", None, DIR / "spk.raw"))  # unplugged before the call comes
    events = []
    far = Keep()
    up = [asyncio.Event(), asyncio.Event()]
    a = build_peer(opts, [], video_call=False, callbacks=MediaCallbacks(
        on_up=up[0].set, on_lost=lambda why: None,
        on_device=lambda e, f: events.append((e, f["kind"], f["device"]))))
    mic, spk = a.source, a.sinks[0]
    assert mic.stalled() and not spk.stalled()
    assert "mic:usbmic: no microphone matching 'usbmic'; microphones: 'Speaker'; " \
           "going on without it until it is back" in LOG, LOG
    b = PeerConnection([], ToneSource(440), [far], MediaCallbacks(on_up=up[1].set, on_lost=lambda why: None))
    await a.apply_answer(await b.create_answer(await a.create_offer()))
    await asyncio.wait_for(asyncio.gather(up[0].wait(), up[1].wait()), 10)
    a.start(); b.start()
    await until(lambda: events == [("device.lost", "mic", "usbmic")], "device.lost for the microphone")
    await until(lambda: abs(played_hz(DIR / "spk.raw") - 440) < 5, "the far end's tone on the speaker")
    await until(lambda: tried_and_failed(mic), "a reopening that fails")
    speaker_stream = spk._stream

    plug(("Speaker", None, DIR / "spk.raw"), ("usbmic2", 660, None))
    await until(lambda: len(events) == 2, "device.restored")
    assert events[1] == ("device.restored", "mic", "usbmic2"), events
    await until(lambda: abs(hz_of(far.pcm) - 660) < 5, "the microphone's tone at the far end")
    # reading the device list again restarted the speaker on its device: it never stalled
    assert spk._stream is not speaker_stream and spk.device.name == "Speaker"
    calls = spk.counters.callbacks
    await until(lambda: spk.counters.callbacks > calls + 25, "the speaker playing on")
    await until(lambda: abs(played_hz(DIR / "spk.raw") - 440) < 5, "the far end's tone on the speaker again")
    assert [e for e in events if e[1] == "speaker"] == []
    await a.close(); await b.close()
    print("OK")

asyncio.run(main())
"""


def test_a_device_missing_when_a_call_starts_is_picked_up_when_it_appears(tmp_path: Path) -> None:
    assert run(tmp_path, ABSENT_WHEN_THE_CALL_STARTS).startswith("OK")

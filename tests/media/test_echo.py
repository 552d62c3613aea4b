"""A kiosk is a speakerphone: its speaker is heard by its microphone, and the far end must not hear itself.

The kiosk's microphone and speaker are ALSA PCMs on FIFOs with a simulated
room between them (``callctl.harness.room``: 60 ms to the microphone, a direct
path at half gain, a 300 ms reverberant tail, near-end noise).  The far end
says a sentence (espeak-ng) into a real call; a second voice speaks in the room
while the far end is still talking (double talk).  The room logs the echo and
the near speech it mixed; what the far end received is its recording.  Both
are measured: the echo reduction (ERLE) in single talk, and how much of the near
talker gets through in double talk.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from callctl.harness.child import Child, callctl_command, callctl_env
from callctl.harness.room import RATE, Room, call_in_room, speech, start_room
from callctl.harness.server import ServerProcess
from callctl.media.echo import SampleClock, available

pytest.importorskip("pyaudio")
pytest.importorskip("pystoi")
if available() is not None:
    pytest.skip(f"no echo canceller here: {available()}", allow_module_level=True)
if shutil.which("espeak-ng") is None:
    pytest.skip("needs espeak-ng for the far-end and near-end voices (scripts/setup --test)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def room_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("room-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return speech(tmp_path_factory.mktemp("voices"))


@pytest.mark.alone  # the echo's delay holds only on a machine that keeps up
def test_the_kiosk_takes_its_speaker_out_of_what_it_sends_and_keeps_the_near_talker(
        room_server: ServerProcess, voices: tuple[Path, Path], tmp_path: Path) -> None:
    far, near = voices
    call = call_in_room(tmp_path / "on", room_server.url, room_server.secret_file, far=far, near=near,
                        near_after_s=5.0, seconds=10.0)
    log = call.log
    heard, talk = log.first("far"), log.first("near")
    assert heard < 2 * RATE and talk < log.mic.size - 3 * RATE, (heard, talk, log.mic.size)
    # far-end single talk, from 1.5 s after the far end is first heard (AEC3 converges in less)
    start = heard + int(1.5 * RATE)
    erle = log.erle_db(call.sent, start, talk)
    windows = log.erle_windows_db(call.sent, start, talk)
    assert erle is not None and len(windows) >= 10, ("no single talk to measure", windows)
    # the canceller holds the echo down through the far end's talk (AEC3: ~40 dB in this room)
    assert statistics.median(windows) >= 25, [round(w) for w in windows]
    if erle < 20:
        # a starved machine: the kiosk's or the room's audio fell behind for a moment (a slip
        # of the speaker, a microphone overrun, a late callback), which moves the echo's delay
        # under the canceller; some 100 ms windows let the echo through until AEC3 finds it
        # again (a card's clock never does that), and they dominate the call's total
        warnings.warn(f"the echo came through for a moment (a busy machine: {log.slips} slips, "
                      f"{log.overruns} overruns): ERLE {erle:.1f} dB over the call, "
                      f"windows {[round(w) for w in windows]}", stacklevel=1)
        assert erle >= 8, (erle, [round(w) for w in windows])
    # double talk: the near talker is not muted (no half-duplex) and stays intelligible
    part = log.double_talk(4.0)
    sent = log.align(call.received, part)
    assert -6 <= log.level_db(sent, part) <= 3, log.level_db(sent, part)
    assert log.stoi(sent, part) >= 0.6, log.stoi(sent, part)

    # the same room without echo cancellation: the measure sees the echo go through
    off = call_in_room(tmp_path / "off", room_server.url, room_server.secret_file, far=far, near=None,
                       near_after_s=0.0, seconds=6.0, kiosk_args=("--no-aec",))
    erle_off = off.log.erle_db(off.sent, off.log.first("far") + int(1.5 * RATE), off.log.mic.size)
    assert erle_off is not None and erle_off < 6, erle_off


def test_the_sample_clock_ignores_late_and_bursty_callbacks() -> None:
    clock = SampleClock()
    n = RATE // 50
    # a driver filling its buffer: four callbacks at once, then one every 20 ms, some late
    times = [clock.stamp(100.0, n) for _ in range(4)]
    for k in range(1, 60):
        late = 0.012 if k % 7 == 0 else 0.0
        times.append(clock.stamp(100.0 + k * 0.02 + late, n))
    # every frame is stamped on one line: 20 ms apart from the earliest offset on
    steps = {round(b - a, 6) for a, b in zip(times[4:], times[5:])}
    assert steps == {0.02}, steps
    # a stream that restarts much later is followed at once
    restart = clock.stamp(200.0, n)
    assert restart == pytest.approx(200.0)
    assert clock.stamp(200.02, n) == pytest.approx(200.02)



@pytest.mark.alone  # the echo's delay holds only on a machine that keeps up
def test_the_echo_test_measures_the_rooms_delay_and_what_cancellation_takes_out(tmp_path: Path) -> None:
    reports = {}
    for delay_ms in (40.0, 140.0):
        started: list[Child] = []
        try:
            home = start_room(tmp_path / f"room-{delay_ms:g}", Room(delay_ms=delay_ms), started=started)
            out = subprocess.run([*callctl_command(), "--json", "preview", "--audio", "--echo-test",
                                  "--mic", "room_mic", "--speaker", "room_speaker", "--duration", "5"],
                                 capture_output=True, text=True, timeout=60,
                                 env=callctl_env(None, HOME=str(home)))
        finally:
            for child in started:
                child.stop()
        assert out.returncode == 0, out.stderr
        reports[delay_ms] = json.loads(out.stdout)
    for delay_ms, report in reports.items():
        assert report["heard"] and report["erle_db"] >= 20, report
        assert report["delay_ms"] >= delay_ms, report  # the room's delay, plus the ALSA plugins' buffering
        assert 0 < report["erl_db"] < 20, report  # the direct path is at half gain: ~6 dB
    # the drivers' buffering is the same in both rooms: the difference is the rooms'
    assert abs(reports[140.0]["delay_ms"] - reports[40.0]["delay_ms"] - 100) <= 25, reports


def test_the_echo_test_says_when_the_microphone_does_not_hear_the_speaker(tmp_path: Path) -> None:
    started: list[Child] = []
    try:
        home = start_room(tmp_path / "room", Room(gain=0.0), started=started)
        out = subprocess.run([*callctl_command(), "preview", "--audio", "--echo-test",
                              "--mic", "room_mic", "--speaker", "room_speaker", "--duration", "4"],
                             capture_output=True, text=True, timeout=60, env=callctl_env(None, HOME=str(home)))
    finally:
        for child in started:
            child.stop()
    assert out.returncode == 0, out.stderr
    assert "does not hear the speaker" in out.stdout, out.stdout
    assert "echo delay" not in out.stdout


def test_the_echo_test_refuses_a_duration_too_short_to_measure(tmp_path: Path) -> None:
    out = subprocess.run([*callctl_command(), "preview", "--audio", "--echo-test", "--duration", "1"],
                         capture_output=True, text=True, timeout=60, env=callctl_env(None, HOME=str(tmp_path)))
    assert out.returncode == 2 and "--duration 4 or more" in out.stderr, out.stderr


@pytest.mark.alone  # the echo's delay holds only on a machine that keeps up
def test_without_the_audio_processing_module_the_call_goes_on_and_says_so(
        room_server: ServerProcess, voices: tuple[Path, Path], tmp_path: Path) -> None:
    # a machine it has no wheel for (32-bit ARM): the module does not import
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pywebrtc_audio.py").write_text('raise ImportError("no wheel for this machine")\n')
    far, _ = voices
    call = call_in_room(tmp_path / "room", room_server.url, room_server.secret_file, far=far, near=None,
                        near_after_s=0.0, seconds=5.0, kiosk_args=("--aec",),
                        kiosk_env={"PYTHONPATH": str(shim)})
    assert call.kiosk_ended.get("reason") == "hangup", call.kiosk_ended
    assert "the microphone is sent as it is" in call.kiosk_stderr and "Traceback" not in call.kiosk_stderr
    # and it was: the echo went through
    erle = call.log.erle_db(call.sent, call.log.first("far") + RATE, call.log.mic.size)
    assert erle is not None and erle < 6, erle

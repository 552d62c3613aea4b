"""Recording onto a disk that fills up: the recording stops, it is said once, the call goes on.

The disk is real: a 64 KiB tmpfs mounted for the test (root only; skipped
otherwise), filled but for a few KiB, so a recording fills it within about a
second of audio.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callctl.media.audio import ToneSource
from callctl.media.recorder import Recorder
from callctl.media.watchdog import watch_devices
from tests.cli import Callctl

#: What a filled disk leaves free: room for a container's header and a second or so of audio.
FREE = 8192


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with FREE bytes left."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0777", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        fs = os.statvfs(mount)
        (mount / "filler").write_bytes(bytes(fs.f_bavail * fs.f_frsize - FREE))
        assert os.statvfs(mount).f_bavail * fs.f_frsize == FREE
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # a process still holds a file


@pytest.fixture
def thread_errors() -> Iterator[list[Any]]:
    """Exceptions that ended a thread (a recorder's writer must never end that way)."""
    caught: list[Any] = []
    saved = threading.excepthook
    threading.excepthook = caught.append
    yield caught
    threading.excepthook = saved


def feed_until_failed(recorder: Recorder, timeout: float = 10.0) -> None:
    """Audio into the recorder, faster than real time, until it gives up."""
    tone = ToneSource(440)
    deadline = time.monotonic() + timeout
    while recorder.failure is None:
        assert time.monotonic() < deadline, "the recording never noticed the full disk"
        recorder.write(tone.read())
        time.sleep(0.002)


@pytest.mark.parametrize("name", ["call.mkv", "call.webm", "call.mp4"])
def test_a_recording_that_fills_the_disk_stops_and_says_so_once(
        name: str, small_disk: Path, caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    caplog.set_level(logging.INFO, logger="callctl.media")
    recorder = Recorder(small_disk / name, audio=True, video=False)
    feed_until_failed(recorder)
    assert recorder.failure == (f"recording to {small_disk / name} stopped: No space left on device; "
                                "the call goes on without it")
    # from then on frames are dropped, quietly: nothing raises, nothing waits, nothing piles up
    dropped = recorder.dropped
    tone = ToneSource(440)
    for _ in range(500):
        recorder.write(tone.read())
    assert recorder.dropped == dropped + 500 and recorder._queue.qsize() == 0
    started = time.monotonic()
    recorder.close()
    assert time.monotonic() - started < 1.0
    assert not recorder._thread.is_alive()
    assert [r.getMessage() for r in caplog.records] == [recorder.failure]
    assert caplog.records[0].levelno == logging.ERROR
    assert thread_errors == []
    assert (small_disk / name).stat().st_size <= FREE


async def test_in_a_call_the_watchdog_reports_it_once_as_a_warning(
        small_disk: Path, caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    caplog.set_level(logging.INFO, logger="callctl.media")
    recorder = Recorder(small_disk / "call.mkv", audio=True, video=False, watched=True)
    reports: list[tuple[str, dict[str, str]]] = []
    polls = [0]  # the watchdog asks every endpoint whether it stalled on each round

    def stalled() -> bool:
        polls[0] += 1
        return False

    recorder.stalled = stalled  # type: ignore[method-assign]
    watching = asyncio.ensure_future(watch_devices([recorder], lambda e, f: reports.append((e, f))))
    await asyncio.to_thread(feed_until_failed, recorder)

    async def rounds(n: int) -> None:
        target = polls[0] + n
        deadline = time.monotonic() + 10
        while polls[0] < target:
            assert time.monotonic() < deadline, "the watchdog stopped"
            await asyncio.sleep(0.05)

    await rounds(1)
    assert reports == [("warning", {"message": recorder.failure})]
    await rounds(3)  # it keeps looking, and says nothing more
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    recorder.close()
    assert reports == [("warning", {"message": recorder.failure})]
    # the warning event is what a person sees; the log has it at info level only
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, recorder.failure)]
    assert thread_errors == []


@pytest.mark.parametrize("name", ["call.mkv", "call.wav"])
async def test_a_call_recording_onto_a_full_disk_goes_on_to_its_end(
        name: str, cli: Callctl, small_disk: Path) -> None:
    record = small_disk / name
    await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob", "--hangup-after", "3", "--record", str(record))
    assert await alice.exit_code(timeout=30) == 0, alice.stderr
    ended = alice.named("call.ended")
    assert len(ended) == 1 and ended[0]["reason"] == "hangup" and ended[0]["duration_s"] >= 2.9, ended
    # said once, on stderr: as a warning event (mkv: the recorder tells the call's watchdog) or as
    # the file sink's log line (wav)
    said = [line for line in alice.stderr.splitlines() if "No space left on device" in line]
    assert len(said) == 1, alice.stderr
    assert "Traceback" not in alice.stderr and "Exception in thread" not in alice.stderr
    warnings = alice.named("warning")
    if name.endswith(".mkv"):
        assert said == [f"callctl: warning: recording to {record} stopped: No space left on device; "
                        "the call goes on without it"]
        assert [w["message"] for w in warnings] == [said[0].removeprefix("callctl: warning: ")]
        # it came during the call, which went on for at least a second after it
        connected = alice.named("call.connected")[0]["ts"]
        assert connected < warnings[0]["ts"] < ended[0]["ts"] - 1.0, (connected, warnings, ended)
        after = [e for e in alice.named("media.level") if e["ts"] > warnings[0]["ts"]]
        assert len(after) >= 2 and all(e["remote"] > 0.1 for e in after), after
    else:
        assert warnings == [] and said[0].endswith(f"recording to {record} failed: "
                                                   "[Errno 28] No space left on device")
    assert record.stat().st_size <= FREE

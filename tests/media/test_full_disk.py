"""Recording onto a disk that fills up or fails: the recording stops, it is said once, the call goes on.

The same for every format, the audio files (``FileSink``: .wav .ogg .flac ...)
and the containers that also take video (``Recorder``: .mkv .webm .mp4).  The
disks are real (root only; skipped otherwise): a 64 KiB tmpfs mounted for the
test, filled but for a few KiB, so a recording fills it within about a second
of audio; an 8 MiB ext4 image on a loop device that turns read-only under the
recording (an ext4 error, ``errors=remount-ro``) or is shut down (every write
fails with EIO, ``EXT4_IOC_SHUTDOWN``).  A file removed mid-call is removed
for real.  Only a disk quota (EDQUOT) is made up: the kernel here has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callctl.media import audio
from callctl.media.audio import FileSink, Recording, ToneSource
from callctl.media.recorder import VIDEO_FILES, Recorder
from callctl.media.watchdog import watch_devices
from tests.audio import dominant_hz
from tests.cli import Callctl

#: What a filled disk leaves free: room for a container's header and a second or so of audio.
FREE = 8192
#: Every format a call can record to.
VIDEO = ["call.mkv", "call.webm", "call.mp4"]
AUDIO = ["call.wav", "call.ogg", "call.opus", "call.flac", "call.mka", "call.mp3", "call.m4a"]
#: What keeps no readable part when cut short: MP4's index is written at the end.
INDEX_AT_THE_END = {"call.mp4", "call.m4a"}


def recording(path: Path, *, watched: bool = False) -> Recording:
    """What ``--record PATH`` records with."""
    if path.suffix in VIDEO_FILES:
        return Recorder(path, audio=True, video=False, watched=watched)
    return FileSink(path, watched=watched)


@contextlib.contextmanager
def tmpfs(mount: Path, size: str, free: int) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``mount``, filled but for ``free`` bytes."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        fs = os.statvfs(mount)
        (mount / "filler").write_bytes(bytes(fs.f_bavail * fs.f_frsize - free))
        assert os.statvfs(mount).f_bavail * fs.f_frsize == free
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # a process still holds a file


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with FREE bytes left."""
    with tmpfs(tmp_path / "small", "64k", FREE) as mount:
        yield mount


@pytest.fixture
def roomier_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs with 48 KiB left: a few of any format's pages, clusters or frames fit."""
    with tmpfs(tmp_path / "roomier", "256k", 48 * 1024) as mount:
        yield mount


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB ext4 file system on a loop device that goes read-only on its first error."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root, mkfs.ext4 and loop devices")
    image, mount = tmp_path / "ext4.img", tmp_path / "ext4"
    with image.open("wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mount.mkdir()
    done = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {done.stderr.strip()}")
    try:
        yield mount
    finally:  # the loop device goes with the mount (autoclear)
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def turn_read_only(mount: Path) -> None:
    """An ext4 error, as a failing disk raises one: the file system remounts itself read-only."""
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True,
                            text=True, check=True).stdout.strip()
    Path(f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error").write_text("test: read-only\n")


def shut_down(mount: Path) -> None:
    """EXT4_IOC_SHUTDOWN (what xfstests' godown does): from now on every write fails with EIO."""
    fd = os.open(mount, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))  # _IOR('X', 125, __u32), NOLOGFLUSH
    finally:
        os.close(fd)


@pytest.fixture
def thread_errors() -> Iterator[list[Any]]:
    """Exceptions that ended a thread (a recording's writer must never end that way)."""
    caught: list[Any] = []
    saved = threading.excepthook
    threading.excepthook = caught.append
    yield caught
    threading.excepthook = saved


def feed_until_failed(rec: Recording, timeout: float = 10.0) -> None:
    """Audio into the recording, faster than real time, until it gives up."""
    tone = ToneSource(440)
    deadline = time.monotonic() + timeout
    while rec.failure is None:
        assert time.monotonic() < deadline, "the recording never noticed"
        rec.write(tone.read())
        time.sleep(0.002)


def feed_until_written(rec: Recording, timeout: float = 10.0) -> None:
    """Audio into the recording until some of it is in the file, past its header."""
    tone = ToneSource(440)
    deadline = time.monotonic() + timeout
    while not rec.path.exists() or rec.path.stat().st_size < 4096:
        assert time.monotonic() < deadline, "nothing was written"
        assert rec.failure is None, rec.failure
        rec.write(tone.read())
        time.sleep(0.005)


def stopped(path: Path, why: str) -> str:
    return f"recording to {path} stopped: {why}; the call goes on without it"


def decoded(path: Path) -> np.ndarray:
    """What a player gets out of a file that may end mid-frame: the samples up to the cut."""
    import av

    chunks = []
    with av.open(str(path)) as container, contextlib.suppress(av.FFmpegError):
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in container.decode(audio=0):
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def said_once(rec: Recording, caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    """Closed quickly, said once (an error: nobody watches it here), no writer died of it."""
    # from then on frames are dropped, quietly: nothing raises, nothing waits, nothing piles up
    dropped = rec.dropped
    tone = ToneSource(440)
    for _ in range(500):
        rec.write(tone.read())
    assert rec.dropped == dropped + 500 and rec._queue.qsize() == 0
    started = time.monotonic()
    rec.close()
    assert time.monotonic() - started < 1.0
    assert not rec._thread.is_alive()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR, rec.failure)]
    assert thread_errors == []


@pytest.mark.parametrize("name", VIDEO + AUDIO)
def test_a_recording_that_fills_the_disk_stops_and_says_so_once(
        name: str, small_disk: Path, caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    caplog.set_level(logging.INFO, logger="callctl.media")
    rec = recording(small_disk / name)
    feed_until_failed(rec)
    assert rec.failure == stopped(small_disk / name, "No space left on device")
    said_once(rec, caplog, thread_errors)
    assert (small_disk / name).stat().st_size <= FREE


@pytest.mark.parametrize("name", [n for n in VIDEO + AUDIO if n not in INDEX_AT_THE_END])
def test_what_was_written_before_the_disk_filled_stays_readable(name: str, roomier_disk: Path) -> None:
    path = roomier_disk / name
    rec = recording(path)
    feed_until_failed(rec)
    rec.close()
    samples = decoded(path)
    assert samples.size >= 48000 // 10, samples.size  # 100 ms at least: a few pages, frames, clusters
    assert abs(dominant_hz(samples, 48000) - 440) < 5
    if name.endswith(".wav"):  # its header says exactly what it holds: every whole sample written
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
            assert 44 + 2 * w.getnframes() == path.stat().st_size == 48 * 1024
            assert w.getnframes() == samples.size


@pytest.mark.parametrize("name", ["call.wav", "call.ogg", "call.flac", "call.mkv"])
@pytest.mark.parametrize(("breaks", "why"), [(turn_read_only, "Read-only file system"),
                                              (shut_down, "Input/output error")],
                         ids=["read-only", "io-error"])
def test_a_disk_that_fails_under_the_recording_stops_it_the_same_way(
        name: str, breaks: Callable[[Path], None], why: str, ext4_disk: Path,
        caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    caplog.set_level(logging.INFO, logger="callctl.media")
    rec = recording(ext4_disk / name)
    feed_until_written(rec)
    breaks(ext4_disk)
    feed_until_failed(rec)
    assert rec.failure == stopped(ext4_disk / name, why)
    said_once(rec, caplog, thread_errors)


@pytest.mark.parametrize("name", ["call.wav", "call.ogg", "call.mkv"])
def test_a_file_removed_mid_call_stops_the_recording(
        name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    """Writes into a removed file succeed, into nothing: it is noticed within a second or so."""
    caplog.set_level(logging.INFO, logger="callctl.media")
    rec = recording(tmp_path / name)
    feed_until_written(rec)
    (tmp_path / name).unlink()
    removed = time.monotonic()
    feed_until_failed(rec, timeout=5)
    assert time.monotonic() - removed < 1.0 + 2 * Recording.CHECK_FILE_S
    assert rec.failure == stopped(tmp_path / name, "the file was removed")
    said_once(rec, caplog, thread_errors)
    assert not (tmp_path / name).exists()


def test_a_quota_that_runs_out_stops_a_wav_recording_the_same_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        thread_errors: list[Any]) -> None:
    """EDQUOT, made up at the one place a WAV file is written (no quotas in this kernel)."""
    caplog.set_level(logging.INFO, logger="callctl.media")
    writes = [0]
    real = audio._write_all

    def over_quota(fd: int, data: bytes) -> None:
        writes[0] += 1
        if writes[0] > 20:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        real(fd, data)

    monkeypatch.setattr(audio, "_write_all", over_quota)
    path = tmp_path / "call.wav"
    rec = recording(path)
    feed_until_failed(rec)
    assert rec.failure == stopped(path, "Disk quota exceeded")
    said_once(rec, caplog, thread_errors)
    with wave.open(str(path)) as w:  # the 19 frames that made it, and a header that says so
        assert w.getnframes() == 19 * 960 and path.stat().st_size == 44 + 19 * 960 * 2


@pytest.mark.parametrize("name", ["call.mkv", "call.wav"])
async def test_in_a_call_the_watchdog_reports_it_once_as_a_warning(
        name: str, small_disk: Path, caplog: pytest.LogCaptureFixture, thread_errors: list[Any]) -> None:
    caplog.set_level(logging.INFO, logger="callctl.media")
    rec = recording(small_disk / name, watched=True)
    reports: list[tuple[str, dict[str, str]]] = []
    polls = [0]  # the watchdog asks every endpoint whether it stalled on each round

    def stalled() -> bool:
        polls[0] += 1
        return False

    rec.stalled = stalled  # type: ignore[method-assign]
    watching = asyncio.ensure_future(watch_devices([rec], lambda e, f: reports.append((e, f))))
    await asyncio.to_thread(feed_until_failed, rec)

    async def rounds(n: int) -> None:
        target = polls[0] + n
        deadline = time.monotonic() + 10
        while polls[0] < target:
            assert time.monotonic() < deadline, "the watchdog stopped"
            await asyncio.sleep(0.05)

    await rounds(1)
    assert reports == [("warning", {"message": rec.failure})]
    await rounds(3)  # it keeps looking, and says nothing more
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)
    rec.close()
    assert reports == [("warning", {"message": rec.failure})]
    # the warning event is what a person sees; the log has it at info level only
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, rec.failure)]
    assert thread_errors == []


@pytest.mark.parametrize(("name", "seconds"), [("call.mkv", 3), ("call.wav", 3), ("call.flac", 3),
                                               ("call.ogg", 5)])  # Opus: 8 KiB is 2 s or so
async def test_a_call_recording_onto_a_full_disk_goes_on_to_its_end(
        name: str, seconds: int, cli: Callctl, small_disk: Path) -> None:
    record = small_disk / name
    await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob", "--hangup-after", str(seconds), "--record", str(record))
    assert await alice.exit_code(timeout=30) == 0, alice.stderr
    ended = alice.named("call.ended")
    assert len(ended) == 1 and ended[0]["reason"] == "hangup", ended
    assert ended[0]["duration_s"] >= seconds - 0.1, ended
    # said once, on stderr, as the warning event the call's watchdog reported
    said = [line for line in alice.stderr.splitlines() if "No space left on device" in line]
    assert said == [f"callctl: warning: {stopped(record, 'No space left on device')}"], alice.stderr
    assert "Traceback" not in alice.stderr and "Exception in thread" not in alice.stderr
    warnings = alice.named("warning")
    assert [w["message"] for w in warnings] == [said[0].removeprefix("callctl: warning: ")]
    # it came during the call, which went on for at least a second after it, its audio unaffected
    connected = alice.named("call.connected")[0]["ts"]
    assert connected < warnings[0]["ts"] < ended[0]["ts"] - 1.0, (connected, warnings, ended)
    after = [e for e in alice.named("media.level") if e["ts"] > warnings[0]["ts"]]
    assert len(after) >= 2 and all(e["remote"] > 0.1 for e in after), after
    assert record.stat().st_size <= FREE
    if name.endswith(".wav"):  # what was written reads back: a header that says what the file holds
        with wave.open(str(record)) as w:
            assert w.getnframes() > 0 and 44 + 2 * w.getnframes() == record.stat().st_size

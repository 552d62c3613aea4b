"""Audio sources and sinks: small classes behind one contract, like baresip's ausrc/auplay.

Sources produce 20 ms frames of 48 kHz mono s16 PCM (``numpy.int16`` arrays of
960 samples) on demand; sinks take such arrays.  A source or sink that is a
real device can stop delivering (unplugged): ``stalled()`` says so and
``reopen()`` tries again (``media/watchdog.py``); for the others both are
no-ops.  Blocking
work (decoding, file writing) happens in threads behind bounded queues: a slow
sink drops frames, it never grows memory or latency.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import logging
import math
import os
import queue
import struct
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from callctl.media.errors import MediaError, probe_file

log = logging.getLogger("callctl.media")

RATE = 48000
FRAME = 960  # 20 ms
FRAME_S = FRAME / RATE
SILENCE = np.zeros(FRAME, dtype=np.int16)


def level(pcm: np.ndarray) -> float:
    """Peak level of a frame, 0.0 .. 1.0 (cheap: one pass over 960 samples)."""
    if pcm.size == 0:
        return 0.0
    return float(np.abs(pcm).max()) / 32768.0


# ------------------------------------------------------------------- sources


class Endpoint:
    """What every source and sink has: a name, and the device contract."""

    #: What ``status`` and the live view show.
    name: str = "endpoint"

    @property
    def device_name(self) -> str:
        """The device as a person knows it (events name it)."""
        return self.name

    def stalled(self) -> bool:
        """The device stopped delivering (unplugged?); never true for files and tones."""
        return False

    def reopen(self) -> None:
        """Open the device again after a stall (DeviceError while it is still gone); may block."""

    def close(self) -> None:
        """Release what it holds; may block (a sink flushing a file)."""


class AudioSource(Endpoint, abc.ABC):
    name: str = "source"

    @abc.abstractmethod
    def read(self) -> np.ndarray:
        """The next 20 ms frame; must not block for long (called on the event loop)."""


class ToneSource(AudioSource):
    #: a whole-Hz tone repeats every RATE / gcd(RATE, hz) samples: made once, then sliced
    MAX_TABLE = RATE

    def __init__(self, hz: float = 440.0, amplitude: float = 0.3) -> None:
        self.hz = hz
        self.name = f"tone:{hz:g}"
        self._amp = amplitude * 32767
        self._n = 0
        self._period = RATE // math.gcd(RATE, int(hz)) if float(hz).is_integer() and hz > 0 else 0
        self._table = self._samples(0, self._period + FRAME) if 0 < self._period <= self.MAX_TABLE else None

    def _samples(self, start: int, count: int) -> np.ndarray:
        t = np.arange(start, start + count, dtype=np.float64)
        return (np.sin(2 * np.pi * self.hz * t / RATE) * self._amp).astype(np.int16)

    def read(self) -> np.ndarray:
        n, self._n = self._n, self._n + FRAME
        if self._table is None:
            return self._samples(n, FRAME)
        start = n % self._period
        return self._table[start:start + FRAME].copy()


class SilenceSource(AudioSource):
    name = "silence"

    def read(self) -> np.ndarray:
        return SILENCE


class FileSource(AudioSource):
    """Any file av can decode, resampled to 48 kHz mono, decoded in a thread."""

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path = path
        self.loop = loop
        self.name = f"file:{path}"
        probe_audio_file(path)
        self._frames: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=25)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._decode, name="file-source", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        import av

        try:
            while not self._stop.is_set():
                with av.open(str(self.path)) as container:
                    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE,
                                                  frame_size=FRAME)
                    for frame in container.decode(audio=0):
                        for out in resampler.resample(frame):
                            self._put(out.to_ndarray().reshape(-1))
                    for out in resampler.resample(None):
                        self._put(out.to_ndarray().reshape(-1))
                if not self.loop:
                    break
        except Exception as exc:  # a broken file mid-way: the call goes on in silence
            log.warning("cannot decode %s: %s", self.path, exc)
        self._put(None)

    def _put(self, item: np.ndarray | None) -> None:
        while not self._stop.is_set():
            try:
                self._frames.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def read(self) -> np.ndarray:
        if self._done:
            return SILENCE
        try:
            pcm = self._frames.get_nowait()
        except queue.Empty:
            return SILENCE  # decoder behind: a gap of silence, never a stall
        if pcm is None:
            self._done = True
            return SILENCE
        if pcm.size < FRAME:
            pcm = np.concatenate([pcm, np.zeros(FRAME - pcm.size, dtype=np.int16)])
        return pcm

    def close(self) -> None:
        self._stop.set()


def probe_audio_file(path: Path) -> None:
    """An audio file we can decode, or MediaError saying why not (before any network traffic)."""
    probe_file(path, "audio")


# --------------------------------------------------------------------- sinks


class AudioSink(Endpoint, abc.ABC):
    name: str = "sink"
    frames: int = 0

    @abc.abstractmethod
    def write(self, pcm: np.ndarray) -> None:
        """Take one frame; never blocks (drops when behind)."""


class NullSink(AudioSink):
    name = "null"

    def __init__(self) -> None:
        self.frames = 0

    def write(self, pcm: np.ndarray) -> None:
        self.frames += 1


#: Containers a file sink can write, by extension: (format, codec).
FILE_FORMATS = {
    ".wav": ("wav", "pcm_s16le"),
    ".ogg": ("ogg", "libopus"),
    ".opus": ("ogg", "libopus"),
    ".flac": ("flac", "flac"),
    ".mka": ("matroska", "libopus"),
    ".mp3": ("mp3", "libmp3lame"),
    ".m4a": ("ipod", "aac"),
}

#: Muxer options by format: each packet goes to the file at once, and Matroska closes a cluster
#: every second (not 5 s): a full disk is noticed within a second, not when the call ends, and a
#: recording cut short (disk full, power cut) keeps all but its last second (an Ogg page is a
#: second too).  FLAC leaves out the 8 KiB of padding after its header (room for tags edited
#: later): on a nearly full disk, that room would take the first frames' place.
MUX_OPTIONS = {
    "matroska": {"flush_packets": "1", "cluster_time_limit": "1000"},
    "webm": {"flush_packets": "1", "cluster_time_limit": "1000"},
    "mp4": {"flush_packets": "1"},
    "ipod": {"flush_packets": "1"},
    "ogg": {"flush_packets": "1"},
    "flac": {"flush_packets": "1", "metadata_header_padding": "0"},
    "mp3": {"flush_packets": "1"},
}


def why(exc: BaseException) -> str:
    """What went wrong, in the system's words where it has some (``No space left on device``)."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class Recording(AudioSink):
    """A file written in a thread behind a bounded queue: what ``FileSink`` and ``Recorder`` share.

    A recording that cannot go on — the disk filled up (ENOSPC, EDQUOT), failed
    (EIO) or turned read-only (EROFS), the file was removed — stops there and
    never takes the call with it: what was written stays, finalized as far as
    the format allows, later frames are dropped (nothing waits, nothing piles
    up), and ``failure`` says why.  That is logged once as an error, or —
    ``watched``: the call's watchdog reports ``failure`` as a ``warning`` event
    (media/watchdog.py) — once at info level.

    A subclass writes in ``_record()``: it calls ``_opened()`` once its file
    is open and takes what to write from ``_get()``.
    """

    #: How often the writer looks whether its file is still there: one removed
    #: mid-call would be written into nothing (no error says so), so it stops.
    CHECK_FILE_S = 1.0

    def __init__(self, path: Path, *, queue_size: int, watched: bool, thread: str) -> None:
        self.path = path
        self.frames = 0
        self.dropped = 0
        #: Why the recording stopped before the call ended (None: it goes on).
        self.failure: str | None = None
        self._watched = watched
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._file_open = False
        self._file_fd: int | None = None  # the file, read-only: is it still there?
        self._file_checked = 0.0
        self._thread = threading.Thread(target=self._run, name=thread, daemon=True)

    def _start_writing(self) -> None:
        """Start writing (the end of a subclass's ``__init__``)."""
        self._thread.start()

    def _put(self, item: Any) -> None:
        """Never blocks: dropped when the writer is behind, or stopped."""
        if self.failure is not None:  # stopped: nothing to write to
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(item)
            self.frames += 1
        except queue.Full:
            self.dropped += 1

    def _get(self) -> Any:
        """The next item to write; None once ``close()`` was called and what was queued is written.

        Raises FileNotFoundError when the file was removed meanwhile.
        """
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return None
                continue
            if item is None:
                return None
            self._check_file()
            return item

    def _opened(self) -> None:
        """The file is open: failures from now on stop a recording that had started."""
        self._file_open = True

    def _check_file(self) -> None:
        if self._file_fd is None or time.monotonic() - self._file_checked < self.CHECK_FILE_S:
            return
        self._file_checked = time.monotonic()
        if os.fstat(self._file_fd).st_nlink == 0:
            raise FileNotFoundError(errno.ENOENT, "the file was removed")

    def _record(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            # the file, created if need be and held read-only (non-blocking: a FIFO's reader may come
            # later): the writer opens the same one, and its link count says whether it was removed
            self._file_fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC,
                                    0o666)
            self._file_checked = time.monotonic()
            self._record()
        except Exception as exc:  # the disk filled up, the file went away: the call goes on
            self._fail(f"recording to {self.path} stopped: {why(exc)}; the call goes on without it"
                       if self._file_open else f"cannot record to {self.path}: {why(exc)}")
            self._drain()
        finally:
            if self._file_fd is not None:
                os.close(self._file_fd)
                self._file_fd = None

    def _fail(self, message: str) -> None:
        self.failure = message
        if self._watched and not self._closing.is_set():
            log.info("%s", message)  # the watchdog reports it as a warning event
        else:
            log.error("%s", message)

    def _drain(self) -> None:
        """After a failure: take what was queued until close(), so no writer ever waits."""
        while True:
            try:
                if self._queue.get(timeout=0.2) is None:
                    return
            except queue.Empty:
                if self._closing.is_set():
                    return

    def close(self) -> None:
        """Flush and finalize the file (whatever ended the call); may block."""
        self._closing.set()
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass  # the writer still takes what is queued, then sees _closing
        self._thread.join(timeout=20)


#: A WAV file's header (RIFF, fmt, data): 44 bytes, rewritten with the sizes as the file grows.
WAV_HEADER_BYTES = 44


def wav_header(data_bytes: int) -> bytes:
    """The header of a 48 kHz mono 16-bit WAV file holding ``data_bytes`` of samples."""
    data_bytes = min(data_bytes, 0xFFFFFFFF - 36)  # past 4 GiB: as large as WAV says
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16,
                       1, 1, RATE, RATE * 2, 2, 16, b"data", data_bytes)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FileSink(Recording):
    """The peer's audio into an audio file (``FILE_FORMATS``), written in a thread.

    Finalized by ``close()`` whatever ended the call.  A WAV file's header is
    rewritten with its sizes every second and when it stops, so a recording cut
    short (disk full, power cut) reads back to its last whole sample; the
    other formats keep what reached the disk (not ``.m4a``, whose index is
    written at the end).  ``watched``: see ``Recording``.
    """

    @staticmethod
    def check(path: Path, *, any_extension: bool = False) -> None:
        """Fail now, before dialing, not after the call connected."""
        if not any_extension and path.suffix.lower() not in FILE_FORMATS:
            raise MediaError(
                f"cannot record to {path}: unknown extension (use one of "
                f"{', '.join(sorted(FILE_FORMATS))})"
            )
        folder = path.parent
        if not folder.is_dir():
            raise MediaError(f"cannot write {path}: no such directory {folder}")
        if path.is_dir():
            raise MediaError(f"cannot write {path}: it is a directory")
        if not os.access(path if path.exists() else folder, os.W_OK):
            raise MediaError(f"cannot write {path}: permission denied")

    def __init__(self, path: Path, *, watched: bool = False) -> None:
        self.check(path)
        super().__init__(path, queue_size=250, watched=watched, thread="file-sink")  # 5 s
        self.name = f"file:{path}"
        self._start_writing()

    def write(self, pcm: np.ndarray) -> None:
        self._put(pcm)

    def _record(self) -> None:
        if self.path.suffix.lower() == ".wav":
            self._record_wav()
        else:
            self._record_av()

    def _record_wav(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            self._opened()
            _write_all(fd, wav_header(0))
            patched = time.monotonic()
            while (pcm := self._get()) is not None:
                _write_all(fd, pcm.tobytes())
                if time.monotonic() - patched >= 1.0:
                    self._finish_wav(fd)
                    patched = time.monotonic()
        except BaseException:
            with contextlib.suppress(OSError):  # as readable as it can be; the first error is the one
                self._finish_wav(fd)
            raise
        else:
            self._finish_wav(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _finish_wav(fd: int) -> None:
        """The header says what the file holds: its whole samples (a short last write cut off)."""
        size = os.fstat(fd).st_size
        if size < WAV_HEADER_BYTES:
            return  # not even the header made it
        data = (size - WAV_HEADER_BYTES) & ~1
        if WAV_HEADER_BYTES + data != size:
            os.ftruncate(fd, WAV_HEADER_BYTES + data)
        os.pwrite(fd, wav_header(data), 0)  # in place: needs no new space on a full disk

    def _record_av(self) -> None:
        import av

        fmt, codec = FILE_FORMATS[self.path.suffix.lower()]
        with av.open(str(self.path), "w", format=fmt, options=MUX_OPTIONS.get(fmt, {})) as container:
            self._opened()
            # add_stream is typed for any stream kind: this one is audio
            stream = cast(av.AudioStream, container.add_stream(codec, rate=RATE))
            stream.layout = "mono"
            pts = 0
            while (pcm := self._get()) is not None:
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = RATE
                frame.pts = pts
                pts += pcm.size
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)

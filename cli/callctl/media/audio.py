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
import logging
import os
import queue
import threading
import wave
from pathlib import Path
from typing import cast

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
    def __init__(self, hz: float = 440.0, amplitude: float = 0.3) -> None:
        self.hz = hz
        self.name = f"tone:{hz:g}"
        self._amp = amplitude * 32767
        self._n = 0

    def read(self) -> np.ndarray:
        t = np.arange(self._n, self._n + FRAME, dtype=np.float64)
        self._n += FRAME
        return (np.sin(2 * np.pi * self.hz * t / RATE) * self._amp).astype(np.int16)


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


class FileSink(AudioSink):
    """Writes frames to a file in a thread; finalized by ``close()`` whatever ended the call."""

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

    def __init__(self, path: Path) -> None:
        self.check(path)
        self.path = path
        self.name = f"file:{path}"
        self.frames = 0
        self.dropped = 0
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=250)  # 5 s
        self._thread = threading.Thread(target=self._run, name="file-sink", daemon=True)
        self._thread.start()

    def write(self, pcm: np.ndarray) -> None:
        try:
            self._queue.put_nowait(pcm)
            self.frames += 1
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        try:
            if self.path.suffix.lower() == ".wav":
                self._write_wav()
            else:
                self._write_av()
        except Exception as exc:
            log.error("recording to %s failed: %s", self.path, exc)
            while self._queue.get() is not None:  # keep draining so writers never block
                pass

    def _write_wav(self) -> None:
        with wave.open(str(self.path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            while (pcm := self._queue.get()) is not None:
                w.writeframesraw(pcm.tobytes())

    def _write_av(self) -> None:
        import av

        fmt, codec = FILE_FORMATS[self.path.suffix.lower()]
        with av.open(str(self.path), "w", format=fmt) as container:
            # add_stream is typed for any stream kind: this one is audio
            stream = cast(av.AudioStream, container.add_stream(codec, rate=RATE))
            stream.layout = "mono"
            pts = 0
            while (pcm := self._queue.get()) is not None:
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = RATE
                frame.pts = pts
                pts += pcm.size
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            log.error("recording to %s is stuck; giving up on it", self.path)
        self._thread.join(timeout=10)

"""Microphones, speakers and cameras: PyAudio (PortAudio) in callback mode, v4l2 names.

The hardware-facing part stays thin: PortAudio calls our callbacks on its own
thread, and they only move 20 ms frames between the device and a bounded
deque (thread-safe for appends and pops).  Overflows and underflows are
counted, never fatal.  PortAudio's stderr chatter (ALSA and JACK probing) is
silenced while it initializes.

PortAudio reads the device list once, when it is initialized, and a process
initializes it once: a second ``PyAudio()`` only counts up a reference and
shares the first one's list.  A card plugged in later, or one that came back
under another name or index, is found by reading the list again (``rescan``):
every stream is closed, PortAudio terminated and initialized again (ALSA
re-reads its configuration files then), and the streams that were open are
reopened on their devices, looked up by name again.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callctl.media import echo
from callctl.media.audio import FRAME, RATE, SILENCE, AudioSink, AudioSource
from callctl.media.errors import DeviceError

log = logging.getLogger("callctl.media")

#: Frames (20 ms each) held between a device callback and the call: 200 ms at most.
DEVICE_QUEUE_FRAMES = 10
#: A speaker whose queue never fell below this many frames over SPEAKER_TRIM_WINDOW callbacks
#: (a standing delay, left by a burst of writes after a stall) drops one frame.
SPEAKER_TRIM_DEPTH = 2
SPEAKER_TRIM_WINDOW = 50
#: A device still missing while nothing is open: the list is read again at most this often
#: even when no card, device node or ALSA configuration file changed.
RESCAN_IDLE_S = 10.0
#: Closing waits this long at most for PortAudio to be free (another stream opening).
CLOSE_WAIT_S = 2.0

_pa: Any = None
#: Held while PortAudio is (re)initialized and while streams are opened or closed.
_pa_lock = threading.RLock()
#: What the device list was read from (``_landscape()``), and when.
_pa_landscape: tuple[object, ...] | None = None
_pa_read_at = 0.0
#: The device streams that hold a PortAudio stream now (reopened by a rescan).
_streams: set[_DeviceStream] = set()
#: Inside ``absent_ok()``: a device that cannot be opened opens as lost (see there).
_absent_ok: contextvars.ContextVar[bool] = contextvars.ContextVar("callctl_devices_absent_ok",
                                                                  default=False)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (C libraries write there directly) for the duration."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def portaudio() -> Any:
    """The process's one PyAudio instance."""
    global _pa, _pa_landscape, _pa_read_at
    with _pa_lock:
        if _pa is None:
            try:
                import pyaudio
            except ImportError:
                raise DeviceError(
                    "audio devices need PyAudio (install PortAudio and PyAudio: scripts/setup does)"
                ) from None
            landscape = _landscape()  # before: a change while PortAudio reads is seen next time
            with quiet_stderr():
                _pa = pyaudio.PyAudio()
            _pa_landscape, _pa_read_at = landscape, time.monotonic()
        return _pa


def _alsa_files() -> list[str]:
    """ALSA's configuration files and folders (alsa.conf and what it loads)."""
    configs = os.environ.get("ALSA_CONFIG_PATH") or "/usr/share/alsa/alsa.conf"
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [*configs.split(":"), "/etc/asound.conf", os.path.expanduser("~/.asoundrc"),
            os.path.join(xdg, "alsa", "asoundrc"), "/etc/alsa/conf.d", "/usr/share/alsa/alsa.conf.d"]


def _landscape() -> tuple[object, ...]:
    """What PortAudio's device list is made from: the sound cards, their device nodes, ALSA's files.

    Cheap (a few ``stat`` calls): compared before every open, so a list that
    may be stale is read again before a device is looked up in it.
    """
    seen: list[object] = []
    try:
        seen.append(Path("/proc/asound/cards").read_text())
    except OSError:
        seen.append(None)
    for folder in ("/dev/snd", "/etc/alsa/conf.d", "/usr/share/alsa/alsa.conf.d"):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            seen.append((folder, None))
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                seen.append((path, None))
                continue
            # a device node by its identity (a replugged card's are new), a file by its contents too
            seen.append((path, st.st_ino, st.st_rdev) if folder == "/dev/snd"
                        else (path, st.st_ino, st.st_mtime_ns, st.st_size))
    for path in _alsa_files():
        try:
            st = os.stat(path)
            seen.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            seen.append((path, None))
    return tuple(seen)


def rescan(*, missing: bool = False) -> bool:
    """Read PortAudio's device list again if the system's may have changed; True if it did.

    It is read again when a sound card, a device node under /dev/snd or an ALSA
    configuration file changed since it was read, and — ``missing``: a device
    was looked for and not found — also when no stream is open and the list is
    ``RESCAN_IDLE_S`` old (a sound server that started, a card that was busy).
    Streams open meanwhile are reopened on their devices by name, a gap of a
    few milliseconds; one whose device is gone then counts as lost (stalled),
    for the watchdog to reopen.
    """
    global _pa, _pa_landscape, _pa_read_at
    with _pa_lock:
        if _pa is None:
            return False  # not read yet: the first portaudio() reads the current list
        landscape = _landscape()
        idle = missing and not _streams and time.monotonic() - _pa_read_at >= RESCAN_IDLE_S
        if landscape == _pa_landscape and not idle:
            return False
        import pyaudio

        reopen = sorted(_streams, key=lambda s: s.kind)
        for stream in reopen:
            stream._close_stream()
        with quiet_stderr():
            with contextlib.suppress(Exception):
                _pa.terminate()
            _pa = pyaudio.PyAudio()
        _pa_landscape, _pa_read_at = landscape, time.monotonic()
        log.info("audio devices read again: %s",
                 ", ".join(repr(d.name) for d in _audio_devices()) or "none")
        for stream in reopen:
            stream._resume()
        return True


@contextlib.contextmanager
def absent_ok() -> Iterator[None]:
    """Within: a microphone or speaker that cannot be opened opens as lost instead of failing.

    For a call's devices: a card unplugged when the call starts leaves it
    silent there; the watchdog reports ``device.lost`` and picks the device up
    when it appears.  Outside (``preview``), DeviceError as always.
    """
    token = _absent_ok.set(True)
    try:
        yield
    finally:
        _absent_ok.reset(token)


@dataclass
class AudioDevice:
    index: int
    name: str
    input_channels: int
    output_channels: int
    default_rate: float
    default_input: bool = False
    default_output: bool = False


def audio_devices() -> list[AudioDevice]:
    """The microphones and speakers there are now (the list is read again if it may be stale)."""
    with _pa_lock:
        rescan()
        return _audio_devices()


def _audio_devices() -> list[AudioDevice]:
    pa = portaudio()
    with quiet_stderr():
        count = pa.get_device_count()
        infos = [pa.get_device_info_by_index(i) for i in range(count)]
        try:
            default_in = pa.get_default_input_device_info()["index"]
        except OSError:
            default_in = -1
        try:
            default_out = pa.get_default_output_device_info()["index"]
        except OSError:
            default_out = -1
    return [
        AudioDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            input_channels=int(d["maxInputChannels"]),
            output_channels=int(d["maxOutputChannels"]),
            default_rate=float(d["defaultSampleRate"]),
            default_input=int(d["index"]) == default_in,
            default_output=int(d["index"]) == default_out,
        )
        for d in infos
    ]


def pick(name: str | None, kind: str) -> AudioDevice:
    """A device by case-insensitive name substring, or the default ("default" or no name).

    Looked up in a list read again when it may be stale, and once more when
    nothing matches (``rescan``): a card plugged in after the process started
    is found, and one that came back under another index is found by its name.
    """
    with _pa_lock:
        rescan()
        try:
            return _pick(name, kind)
        except DeviceError:
            if not rescan(missing=True):
                raise
            return _pick(name, kind)


def _pick(name: str | None, kind: str) -> AudioDevice:
    """``pick`` in the list as it is."""
    devices = _audio_devices()
    if kind == "input":
        usable = [d for d in devices if d.input_channels > 0]
        default = [d for d in usable if d.default_input]
        noun = "microphone"
    else:
        usable = [d for d in devices if d.output_channels > 0]
        default = [d for d in usable if d.default_output]
        noun = "speaker"
    names = ", ".join(repr(d.name) for d in usable) or "none"
    if not name or name.lower() == "default":
        if default:
            return default[0]
        if usable:
            return usable[0]
        raise DeviceError(f"no {noun} found (devices: {names})")
    wanted = name.lower()
    exact = [d for d in usable if d.name.lower() == wanted]
    matches = exact or [d for d in usable if wanted in d.name.lower()]
    if not matches:
        raise DeviceError(f"no {noun} matching {name!r}; {noun}s: {names}")
    return matches[0]


def _stream_format(pa: Any, device: AudioDevice, kind: str) -> tuple[int, int]:
    """(rate, channels): 48 kHz mono when the device takes it, else its own rate / stereo."""
    import pyaudio

    for rate in (RATE, int(device.default_rate)):
        for channels in (1, 2):
            args: dict[str, Any] = {"rate": rate}
            if kind == "input":
                args.update(input_device=device.index, input_channels=channels,
                            input_format=pyaudio.paInt16)
            else:
                args.update(output_device=device.index, output_channels=channels,
                            output_format=pyaudio.paInt16)
            with contextlib.suppress(ValueError), quiet_stderr():
                if pa.is_format_supported(**args):
                    return rate, channels
    raise DeviceError(f"{device.name!r} takes neither 48 kHz nor {device.default_rate:g} Hz 16-bit audio")


def _resample(pcm: np.ndarray, src_rate: int, dst_rate: int, size: int) -> np.ndarray:
    if src_rate == dst_rate and pcm.size == size:
        return pcm
    x = np.linspace(0, pcm.size - 1, size)
    return np.interp(x, np.arange(pcm.size), pcm.astype(np.float32)).astype(np.int16)


@dataclass
class DeviceCounters:
    overflows: int = 0
    underflows: int = 0
    callbacks: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class _Pacer:
    """Holds a callback thread back to the wall clock when a device runs ahead of it.

    Real cards deliver in real time and never wait here; clockless PCMs (ALSA
    null/file plugins, some virtual devices) would otherwise spin at full CPU.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._frames = 0

    def wait(self, frames: int, rate: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self._frames += frames
        ahead = self._start + self._frames / rate - now
        if ahead > 0.005:
            time.sleep(ahead)


class _DeviceStream:
    """What microphones and speakers share: opening, stall detection, reopening."""

    kind = "input"
    noun = "microphone"
    #: A device whose callbacks stop for this long is taken as lost (unplugged).
    STALL_S = 1.0

    def __init__(self, name: str | None) -> None:
        self._wanted = name
        self.counters = DeviceCounters()
        self._frames: collections.deque[np.ndarray] = collections.deque(maxlen=DEVICE_QUEUE_FRAMES)
        self._stream: Any = None
        self._closed = False
        # what it is until a device is open: named as it was asked for
        self.device = AudioDevice(-1, name or "default", 0, 0, float(RATE))
        self.name = f"{self._prefix}:{self.device.name}"
        self.rate, self.channels = RATE, 1
        self._latency = 0.0
        self._pacer = _Pacer()
        self.last_callback = time.monotonic()
        with _pa_lock:
            try:
                self._connect()
            except DeviceError as exc:
                if not _absent_ok.get():
                    raise
                # a call's device unplugged as the call starts: silent, lost, picked up when back
                log.warning("%s: %s; going on without it until it is back", self.name, exc)
                self.last_callback = float("-inf")

    @property
    def _prefix(self) -> str:
        return "mic" if self.kind == "input" else "speaker"

    def _connect(self) -> None:
        """Open the device, in a device list read again if it may be stale or the device is missing."""
        rescan()
        try:
            self._open()
        except DeviceError:
            if not rescan(missing=True):
                raise
            self._open()

    def _open(self) -> None:
        """Open the device in the list as it is (``_pa_lock`` held)."""
        import pyaudio

        pa = portaudio()
        self.device = _pick(self._wanted, self.kind)
        self.name = f"{self._prefix}:{self.device.name}"
        self.rate, self.channels = _stream_format(pa, self.device, self.kind)
        self._pacer = _Pacer()
        self.last_callback = time.monotonic()
        index_key = "input_device_index" if self.kind == "input" else "output_device_index"
        with quiet_stderr():
            try:
                self._stream = pa.open(
                    rate=self.rate, channels=self.channels, format=pyaudio.paInt16,
                    frames_per_buffer=self.rate // 50, stream_callback=self._callback,
                    **{self.kind: True, index_key: self.device.index},
                )
            except OSError as exc:
                raise DeviceError(f"cannot open {self.noun} {self.device.name!r}: {exc}") from None
            if self.kind == "output":  # the DAC time of a driver that reports none: now + this
                with contextlib.suppress(Exception):
                    self._latency = float(self._stream.get_output_latency())
        _streams.add(self)
        if self._closed:  # closed meanwhile, by a close() that could not wait for PortAudio
            self._close_stream()

    def _resume(self) -> None:
        """Open again after a rescan closed the stream (``_pa_lock`` held); lost if it cannot be."""
        if self._closed:
            return
        try:
            self._open()
        except DeviceError as exc:
            log.info("%s is gone from the device list read again: %s", self.name, exc)
            self.last_callback = float("-inf")  # stalled: the watchdog reports it and reopens it

    @property
    def device_name(self) -> str:
        return self.device.name

    def stalled(self) -> bool:
        """No callback for STALL_S: the device stopped delivering (unplugged?)."""
        return time.monotonic() - self.last_callback > self.STALL_S

    def reopen(self) -> None:
        """Close the stalled stream and open the device again (DeviceError if still gone).

        The device is looked up by name again, in a list read again when it may
        be stale or the device is not in it: one that came back under another
        index, or under another name the wanted one is part of, is found.
        """
        with _pa_lock:
            if self._closed:
                return
            self._close_stream()
            self._frames.clear()
            self._connect()

    def _close_stream(self) -> None:
        with _pa_lock:
            _streams.discard(self)
            stream, self._stream = self._stream, None
            if stream is not None:
                with contextlib.suppress(Exception), quiet_stderr():
                    stream.stop_stream()
                    stream.close()

    def close(self) -> None:
        self._closed = True
        # a reopen that hangs in PortAudio (a device half gone) holds the lock: the call
        # still ends, and that reopen closes what it opens (``_open``)
        if _pa_lock.acquire(timeout=CLOSE_WAIT_S):
            try:
                self._close_stream()
            finally:
                _pa_lock.release()
        else:
            log.warning("%s: PortAudio is busy (a device that hangs?); not waiting to close it", self.name)

    def _callback(self, data: Any, frames: int, info: Any, status: int) -> Any:
        raise NotImplementedError


class MicSource(_DeviceStream, AudioSource):
    """A microphone: PortAudio pushes, the call pulls 20 ms frames."""

    def __init__(self, name: str | None) -> None:
        #: Echo cancellation, noise suppression, gain (``process_with``): None sends it as it is.
        self.processor: echo.Processor | None = None
        super().__init__(name)

    def _callback(self, data: bytes, frames: int, info: Any, status: int) -> tuple[None, int]:
        import pyaudio

        self.last_callback = time.monotonic()
        self.counters.callbacks += 1
        if status & pyaudio.paInputOverflow:
            self.counters.overflows += 1
        pcm = np.frombuffer(data, dtype=np.int16)
        if self.channels == 2:
            pcm = ((pcm[0::2].astype(np.int32) + pcm[1::2]) // 2).astype(np.int16)
        pcm = _resample(pcm, self.rate, RATE, FRAME)
        processor = self.processor
        if processor is not None:  # echo cancellation etc.: its thread delivers to _frames
            processor.submit(pcm, echo.adc_time(info, frames, self.rate))
        else:
            if len(self._frames) == self._frames.maxlen:
                self.counters.overflows += 1  # the call fell behind: drop the oldest
            self._frames.append(pcm)
        self._pacer.wait(frames, self.rate)
        return None, pyaudio.paContinue

    def process_with(self, settings: echo.Processing, far: echo.FarEnd | None) -> echo.Processor | None:
        """Run what the microphone hears through ``settings`` (None: as it is), ``far`` the speaker's."""
        old, self.processor = self.processor, None
        if old is not None:
            old.close()
        if settings.any:
            self.processor = echo.Processor(settings, far, self._frames)
        return self.processor

    def close(self) -> None:
        super().close()
        if self.processor is not None:
            self.processor.close()

    def flush(self) -> None:
        """Drop what is queued for the call (nobody reads it)."""
        self._frames.clear()

    def read(self) -> np.ndarray:
        try:
            return self._frames.popleft()
        except IndexError:
            self.counters.underflows += 1
            return SILENCE


class SpeakerSink(_DeviceStream, AudioSink):
    """A speaker: the call pushes 20 ms frames, PortAudio pulls them."""

    kind = "output"
    noun = "speaker"

    def __init__(self, name: str | None) -> None:
        self.frames = 0
        #: The echo canceller's reference: every frame played, with when it reaches the DAC.
        self.far_end: echo.FarEnd | None = None
        #: The queue's smallest depth over the current window of callbacks (``_trim``).
        self._least = DEVICE_QUEUE_FRAMES
        self._window = 0
        super().__init__(name)

    def write(self, pcm: np.ndarray) -> None:
        if len(self._frames) == self._frames.maxlen:
            self.counters.overflows += 1
        self._frames.append(pcm)
        self.frames += 1

    def flush(self) -> None:
        """Drop what is queued for the device (a ring that must stop now)."""
        self._frames.clear()

    def _trim(self) -> None:
        """A queue that stayed deep for a whole window is a standing delay: one frame less.

        The call writes a frame every 20 ms on its clock and the card takes one every
        20 ms on its own: the queue breathes between 0 and 2 frames.  After a stall, a
        burst of writes leaves it deeper, and nothing would ever take it back down: every
        frame played from then on would come that much later.
        """
        depth = len(self._frames)
        self._least = min(self._least, depth)
        self._window += 1
        if self._window >= SPEAKER_TRIM_WINDOW:
            if self._least >= SPEAKER_TRIM_DEPTH:
                with contextlib.suppress(IndexError):
                    self._frames.popleft()
                    self.counters.extra["trimmed"] = self.counters.extra.get("trimmed", 0) + 1
            self._least, self._window = DEVICE_QUEUE_FRAMES, 0

    def _callback(self, data: None, frames: int, info: Any, status: int) -> tuple[bytes, int]:
        import pyaudio

        self.last_callback = time.monotonic()
        self.counters.callbacks += 1
        self._trim()
        try:
            pcm = self._frames.popleft()
        except IndexError:
            self.counters.underflows += 1
            pcm = SILENCE
        far_end = self.far_end
        if far_end is not None:
            far_end.note(pcm, echo.dac_time(info, self._latency))
        pcm = _resample(pcm, RATE, self.rate, frames)
        if self.channels == 2:
            pcm = np.repeat(pcm, 2)
        self._pacer.wait(frames, self.rate)
        return pcm.tobytes(), pyaudio.paContinue


# ------------------------------------------------------------------- cameras


@dataclass
class Camera:
    path: str
    name: str
    #: [{"format": "MJPG", "sizes": ["1280x720", "640x480", ...]}, ...]
    formats: list[dict[str, Any]] = field(default_factory=list)


def cameras() -> list[Camera]:
    """``/dev/video*`` capture nodes with their names (formats where v4l2 tells them)."""
    found = []
    for dev in sorted(Path("/dev").glob("video*")):
        sys_name = Path("/sys/class/video4linux") / dev.name / "name"
        try:
            name = sys_name.read_text().strip()
        except OSError:
            name = dev.name
        found.append(Camera(str(dev), name, _v4l2_formats(dev)))
    return found


def _v4l2_formats(dev: Path) -> list[dict[str, Any]]:
    """Pixel formats (VIDIOC_ENUM_FMT) and their discrete sizes (VIDIOC_ENUM_FRAMESIZES).

    Empty when the node cannot be opened (busy, no permission, not a camera).
    """
    import fcntl
    import struct

    enum_fmt = 0xC0405602  # _IOWR('V', 2, struct v4l2_fmtdesc): 64 bytes
    enum_framesizes = 0xC02C564A  # _IOWR('V', 74, struct v4l2_frmsizeenum): 44 bytes
    formats: list[dict[str, Any]] = []
    try:
        fd = os.open(dev, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return formats
    try:
        for index in range(32):
            desc = bytearray(struct.pack("II", index, 1) + bytes(56))  # type 1: video capture
            try:
                fcntl.ioctl(fd, enum_fmt, desc)
            except OSError:
                break
            pixelformat = struct.unpack_from("I", desc, 44)[0]
            sizes = []
            for size_index in range(64):
                query = bytearray(struct.pack("III", size_index, pixelformat, 0) + bytes(32))
                try:
                    fcntl.ioctl(fd, enum_framesizes, query)
                except OSError:
                    break
                kind, width, height = struct.unpack_from("III", query, 8)
                if kind != 1:  # stepwise/continuous: report the range's maximum
                    width = struct.unpack_from("I", query, 16)[0]  # max_width
                    height = struct.unpack_from("I", query, 28)[0]  # max_height
                sizes.append(f"{width}x{height}")
                if kind != 1:
                    break
            formats.append({"format": bytes(desc[44:48]).decode(errors="replace"), "sizes": sizes})
    finally:
        os.close(fd)
    return formats


def inventory() -> dict[str, list[dict[str, Any]]]:
    """Everything ``callctl devices`` lists."""
    try:
        audio = audio_devices()
    except DeviceError:
        audio = []
    mics = [
        {"name": d.name, "channels": d.input_channels, "default_rate": d.default_rate,
         "default": d.default_input}
        for d in audio if d.input_channels > 0
    ]
    speakers = [
        {"name": d.name, "channels": d.output_channels, "default_rate": d.default_rate,
         "default": d.default_output}
        for d in audio if d.output_channels > 0
    ]
    return {"microphones": mics, "speakers": speakers, "cameras": [asdict(c) for c in cameras()]}

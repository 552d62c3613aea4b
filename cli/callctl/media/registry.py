"""Named sources and sinks, like baresip's ausrc/auplay modules: one table per direction.

    --audio-in   tone[:HZ]  silence  file:PATH  mic[:NAME]
    --audio-out  null  file:PATH  speaker[:NAME]
    --video-in   camera[:/dev/videoN]  testsrc  file:PATH
    --video-out  null  file:PATH (.mkv .webm .mp4)  terminal (registered by the commands)

A spec is ``KIND[:ARG]``.  Each kind has a factory and a checker; ``check``
validates a spec and opens nothing, so a bad spec, an unreadable file or a
missing device fails before any network traffic with MediaError (usage) or
DeviceError.  A new backend is one ``register`` call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from callctl.media.audio import (
    AudioSink,
    AudioSource,
    FileSink,
    FileSource,
    NullSink,
    SilenceSource,
    ToneSource,
    probe_audio_file,
)
from callctl.media.errors import DeviceError, MediaError
from callctl.media.video_sinks import NullVideoSink, VideoSink
from callctl.media.video_sources import VideoFormat, VideoSource

T = TypeVar("T")


@dataclass(frozen=True)
class OpenParams:
    """What a factory may need besides its spec's argument."""

    loop: bool = False
    video: VideoFormat = VideoFormat()
    camera_format: str | None = None
    #: Opened for a call, whose watchdog reports a recording that stopped (``failure``) as a
    #: ``warning`` event: the recording itself logs it at info level only (``Recording``).
    watched: bool = False


class Arg(enum.Enum):
    NONE = "none"  # "silence"
    OPTIONAL = "optional"  # "tone" or "tone:440"
    REQUIRED = "required"  # "file:PATH"


@dataclass(frozen=True)
class Kind(Generic[T]):
    """One kind of source or sink: how it is written, opened and checked."""

    name: str
    usage: str
    arg: Arg
    open: Callable[[str | None, OpenParams], T]
    check: Callable[[str | None, OpenParams], None]


class Registry(Generic[T]):
    """The kinds of one direction (audio sources, audio sinks, video sources, video sinks)."""

    def __init__(self, noun: str) -> None:
        self.noun = noun
        self._kinds: dict[str, Kind[T]] = {}

    def register(self, kind: Kind[T]) -> None:
        self._kinds[kind.name] = kind

    @property
    def usage(self) -> str:
        return ", ".join(k.usage for k in self._kinds.values())

    def _find(self, spec: str) -> tuple[Kind[T], str | None]:
        name, sep, arg = spec.partition(":")
        kind = self._kinds.get(name.strip().lower())
        value = arg if sep else None
        if kind is None or (kind.arg is Arg.NONE and value) or (kind.arg is Arg.REQUIRED and not value):
            raise MediaError(f"unknown {self.noun} {spec!r}; expected one of: {self.usage}")
        return kind, value

    def open(self, spec: str, params: OpenParams | None = None) -> T:
        kind, arg = self._find(spec)
        return kind.open(arg, params or OpenParams())

    def check(self, spec: str, params: OpenParams | None = None) -> None:
        kind, arg = self._find(spec)
        kind.check(arg, params or OpenParams())


def _nothing(arg: str | None, params: OpenParams) -> None:
    pass


def _path(arg: str | None) -> Path:
    assert arg is not None  # Arg.REQUIRED
    return Path(arg).expanduser()


# ----------------------------------------------------------------- audio in

def _tone_hz(arg: str | None) -> float:
    try:
        hz = float(arg) if arg else 440.0
    except ValueError:
        raise MediaError(f"bad tone frequency {arg!r} in 'tone:{arg}'") from None
    if not 20 <= hz <= 20000:
        raise MediaError(f"tone frequency must be 20..20000 Hz, not {hz:g}")
    return hz


def _open_mic(arg: str | None, params: OpenParams) -> AudioSource:
    from callctl.media.devices import MicSource

    return MicSource(arg)


def _check_mic(arg: str | None, params: OpenParams) -> None:
    from callctl.media.devices import pick

    pick(arg, "input")


def _check_tone(arg: str | None, params: OpenParams) -> None:
    _tone_hz(arg)


AUDIO_SOURCES: Registry[AudioSource] = Registry("audio source")
AUDIO_SOURCES.register(Kind("tone", "tone[:HZ]", Arg.OPTIONAL,
                            lambda a, p: ToneSource(_tone_hz(a)), _check_tone))
AUDIO_SOURCES.register(Kind("silence", "silence", Arg.NONE, lambda a, p: SilenceSource(), _nothing))
AUDIO_SOURCES.register(Kind("file", "file:PATH", Arg.REQUIRED,
                            lambda a, p: FileSource(_path(a), loop=p.loop),
                            lambda a, p: probe_audio_file(_path(a))))
AUDIO_SOURCES.register(Kind("mic", "mic[:NAME]", Arg.OPTIONAL, _open_mic, _check_mic))

# ---------------------------------------------------------------- audio out

def _open_speaker(arg: str | None, params: OpenParams) -> AudioSink:
    from callctl.media.devices import SpeakerSink

    return SpeakerSink(arg)


def _check_speaker(arg: str | None, params: OpenParams) -> None:
    from callctl.media.devices import pick

    pick(arg, "output")


AUDIO_SINKS: Registry[AudioSink] = Registry("audio sink")
AUDIO_SINKS.register(Kind("null", "null", Arg.NONE, lambda a, p: NullSink(), _nothing))
AUDIO_SINKS.register(Kind("file", "file:PATH", Arg.REQUIRED,
                          lambda a, p: FileSink(_path(a), watched=p.watched),
                          lambda a, p: FileSink.check(_path(a))))
AUDIO_SINKS.register(Kind("speaker", "speaker[:NAME]", Arg.OPTIONAL, _open_speaker, _check_speaker))

# ----------------------------------------------------------------- video in

def _open_testsrc(arg: str | None, params: OpenParams) -> VideoSource:
    from callctl.media.video_sources import TestPattern

    return TestPattern(params.video)


def _open_video_file(arg: str | None, params: OpenParams) -> VideoSource:
    from callctl.media.video_sources import FileVideoSource

    return FileVideoSource(_path(arg), params.video)


def _check_video_file(arg: str | None, params: OpenParams) -> None:
    from callctl.media.video_sources import probe_video_file

    probe_video_file(_path(arg))


def _open_camera(arg: str | None, params: OpenParams) -> VideoSource:
    from callctl.media.video_sources import CameraSource

    return CameraSource(arg or "/dev/video0", params.video, params.camera_format)


def _check_camera(arg: str | None, params: OpenParams) -> None:
    import os

    from callctl.media.video_sources import cameras_text

    device = arg or "/dev/video0"
    if not os.path.exists(device):
        raise DeviceError(f"no camera at {device}; cameras: {cameras_text()}")


VIDEO_SOURCES: Registry[VideoSource] = Registry("video source")
VIDEO_SOURCES.register(Kind("camera", "camera[:/dev/videoN]", Arg.OPTIONAL, _open_camera, _check_camera))
VIDEO_SOURCES.register(Kind("testsrc", "testsrc", Arg.NONE, _open_testsrc, _nothing))
VIDEO_SOURCES.register(Kind("file", "file:PATH", Arg.REQUIRED, _open_video_file, _check_video_file))

# ---------------------------------------------------------------- video out

def _check_video_out(arg: str | None, params: OpenParams) -> None:
    from callctl.media.recorder import VIDEO_FILES

    path = _path(arg)
    if path.suffix.lower() not in VIDEO_FILES:
        raise MediaError(f"cannot write video to {path}: use one of {', '.join(sorted(VIDEO_FILES))}")
    FileSink.check(path, any_extension=True)


def _open_video_out(arg: str | None, params: OpenParams) -> VideoSink:
    from callctl.media.recorder import FileVideoSink

    _check_video_out(arg, params)
    fmt = params.video
    return FileVideoSink(_path(arg), (fmt.width, fmt.height), fmt.fps)


VIDEO_SINKS: Registry[VideoSink] = Registry("video sink")
VIDEO_SINKS.register(Kind("null", "null", Arg.NONE, lambda a, p: NullVideoSink(), _nothing))
VIDEO_SINKS.register(Kind("file", "file:PATH (.mkv .webm .mp4)", Arg.REQUIRED,
                          _open_video_out, _check_video_out))

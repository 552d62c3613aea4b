"""Parse ``--audio-in`` / ``--audio-out`` specs into sources and sinks.

    tone[:HZ]  silence  file:PATH  mic[:NAME]          (sources)
    null       file:PATH  speaker[:NAME]               (sinks)

Parsing happens before any network traffic, so a bad spec, an unreadable file
or a missing device fails at once with MediaError (usage) or DeviceError.
"""

from __future__ import annotations

from pathlib import Path

from callctl.media.audio import (
    AudioSink,
    AudioSource,
    FileSink,
    FileSource,
    MediaError,
    NullSink,
    SilenceSource,
    ToneSource,
    probe_audio_file,
)

SOURCES = "tone[:HZ], silence, file:PATH, mic[:NAME]"
SINKS = "null, file:PATH, speaker[:NAME]"


def _split(spec: str) -> tuple[str, str | None]:
    kind, sep, arg = spec.partition(":")
    return kind.strip().lower(), (arg if sep else None)


def open_source(spec: str, *, loop: bool = False, check_only: bool = False) -> AudioSource | None:
    """The source for ``spec``; with ``check_only``, validate it and open nothing."""
    kind, arg = _split(spec)
    if kind == "tone":
        try:
            hz = float(arg) if arg else 440.0
        except ValueError:
            raise MediaError(f"bad tone frequency {arg!r} in {spec!r}") from None
        if not 20 <= hz <= 20000:
            raise MediaError(f"tone frequency must be 20..20000 Hz, not {hz:g}")
        return ToneSource(hz)
    if kind == "silence" and not arg:
        return SilenceSource()
    if kind == "file" and arg:
        if check_only:
            probe_audio_file(Path(arg).expanduser())
            return None
        return FileSource(Path(arg).expanduser(), loop=loop)
    if kind == "mic":
        from callctl.media.devices import MicSource, pick

        if check_only:
            pick(arg, "input")
            return None
        return MicSource(arg)
    raise MediaError(f"unknown audio source {spec!r}; expected one of: {SOURCES}")


def open_sink(spec: str, *, check_only: bool = False) -> AudioSink | None:
    """The sink for ``spec``; with ``check_only``, validate it and open nothing."""
    kind, arg = _split(spec)
    if kind == "null" and not arg:
        return NullSink()
    if kind == "file" and arg:
        if check_only:
            FileSink.check(Path(arg).expanduser())
            return None
        return FileSink(Path(arg).expanduser())
    if kind == "speaker":
        from callctl.media.devices import SpeakerSink, pick

        if check_only:
            pick(arg, "output")
            return None
        return SpeakerSink(arg)
    raise MediaError(f"unknown audio sink {spec!r}; expected one of: {SINKS}")


VIDEO_SOURCES = "camera[:/dev/videoN], testsrc, file:PATH"
VIDEO_SINKS = "terminal, null, file:PATH (.mkv .webm .mp4)"


def open_video_source(spec: str, fmt, *, camera_format: str | None = None,  # type: ignore[no-untyped-def]
                      check_only: bool = False):
    """The video source for ``spec`` (MediaError / DeviceError); nothing opened with check_only."""
    from callctl.media.video import CameraSource, FileVideoSource, TestPattern, probe_video_file

    kind, arg = _split(spec)
    if kind == "testsrc" and not arg:
        return None if check_only else TestPattern(fmt)
    if kind == "file" and arg:
        if check_only:
            probe_video_file(Path(arg).expanduser())
            return None
        return FileVideoSource(Path(arg).expanduser(), fmt)
    if kind == "camera":
        device = arg or "/dev/video0"
        if check_only:
            import os

            from callctl.media.video import cameras_text

            if not os.path.exists(device):
                from callctl.media.audio import DeviceError

                raise DeviceError(f"no camera at {device}; cameras: {cameras_text()}")
            return None
        return CameraSource(device, fmt, camera_format)
    raise MediaError(f"unknown video source {spec!r}; expected one of: {VIDEO_SOURCES}")


def open_video_sink(spec: str, fmt, *, check_only: bool = False):  # type: ignore[no-untyped-def]
    from callctl.media.video import VIDEO_FILES, FileVideoSink, NullVideoSink, TerminalSink

    kind, arg = _split(spec)
    if kind == "null" and not arg:
        return NullVideoSink()
    if kind == "terminal" and not arg:
        return None if check_only else TerminalSink()
    if kind == "file" and arg:
        path = Path(arg).expanduser()
        if path.suffix.lower() not in VIDEO_FILES:
            raise MediaError(f"cannot write video to {path}: use one of {', '.join(sorted(VIDEO_FILES))}")
        FileSink.check(path, any_extension=True)
        return None if check_only else FileVideoSink(path, (fmt.width, fmt.height), fmt.fps)
    raise MediaError(f"unknown video sink {spec!r}; expected one of: {VIDEO_SINKS}")

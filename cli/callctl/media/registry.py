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

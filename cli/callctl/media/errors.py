"""The media layer's errors, and the probe that turns a bad file into one before a call.

Commands turn ``MediaError`` into a usage exit (2) and ``DeviceError`` into
``device_error`` (12); the engine turns a ``DeviceError`` during a call into
that end reason (``engine/reasons.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


class MediaError(Exception):
    """A source or sink cannot be used (bad spec, unreadable file): a usage error."""


class DeviceError(Exception):
    """A microphone, speaker or camera cannot be opened."""


class BadSdp(Exception):
    """The peer's offer or answer cannot make a call (garbage, no audio, no ICE or DTLS)."""


class MessageError(Exception):
    """An app message was not delivered (refused before sending, no data channel, no ack)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        #: The message itself is at fault (its kind, body or size): a usage error, nothing sent.
        self.usage = usage


class UnsupportedStack(Exception):
    """aiortc or aioice is a version whose internals we have not verified."""


def probe_file(path: Path, kind: Literal["audio", "video"]) -> None:
    """A file av can open with a stream of ``kind``, or MediaError saying why not."""
    import av

    if not path.is_file():
        why = ("no such file" if not path.exists() else "it is a directory" if path.is_dir()
               else "not a regular file")
        raise MediaError(f"cannot read {path}: {why}")
    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            if not streams:
                raise MediaError(f"{path} has no {kind} stream")
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode {path}: {exc}") from None
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror}") from None

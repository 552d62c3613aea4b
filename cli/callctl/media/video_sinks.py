"""Video sinks: where the peer's video goes (null, a file), and snapshots to images.

A sink's ``write()`` never blocks.  Writing the peer's video to a file is the
recorder's (``recorder.py``).  The terminal sink is the user interface's (``ui/terminal_video.py``) and is
registered by the commands that draw on a terminal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from callctl.media.errors import MediaError


class VideoSink:
    """Takes the peer's frames (av.VideoFrame); counts them and keeps the latest size."""

    name = "video-sink"

    def __init__(self) -> None:
        self.frames = 0
        self.size: tuple[int, int] | None = None

    def write(self, frame: Any) -> None:
        """Take one frame; never blocks."""
        self.frames += 1
        self.size = (frame.width, frame.height)

    def close(self) -> None:
        pass


class NullVideoSink(VideoSink):
    name = "null"


def save_image(frame: Any, path: Path) -> None:
    """One frame to a PNG or JPEG file, by extension (encoded with av: no imaging library)."""
    import av

    codec, pix_fmt = {".png": ("png", "rgb24"), ".jpg": ("mjpeg", "yuvj420p"),
                      ".jpeg": ("mjpeg", "yuvj420p")}.get(path.suffix.lower(), (None, None))
    if codec is None:
        raise MediaError(f"cannot save {path}: use .png or .jpg")
    with av.open(str(path), "w", format="image2") as container:
        stream = cast(av.VideoStream, container.add_stream(codec, rate=1))  # typed for any kind
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, pix_fmt
        image = frame.reformat(format=pix_fmt)
        image.pts = 0
        for packet in stream.encode(image):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)

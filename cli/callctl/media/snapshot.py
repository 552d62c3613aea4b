"""A still of the peer's video: ``callctl snapshot door.jpg`` (who is at the door).

The newest frame the peer sent, at the size it was sent, as a baseline JPEG
(FFmpeg's mjpeg encoder through PyAV: nothing else to install).  The file is
written beside its final name and renamed into place, so a script that reads
it never sees half a picture.
"""

from __future__ import annotations

import fractions
import os
from pathlib import Path
from typing import Any

from callctl.media.errors import MediaError

#: FFmpeg's JPEG quality scale: 2 (best) .. 31; 3 is a good still for a door.
QUALITY = 3


def jpeg_bytes(frame: Any) -> bytes:
    """One video frame (a PyAV VideoFrame) as JPEG bytes."""
    import av

    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = frame.width, frame.height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = fractions.Fraction(1, 25)
    codec.qmin = codec.qmax = QUALITY
    image = frame.reformat(format="yuvj420p")
    image.pts = 0
    packets = [*codec.encode(image), *codec.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


def save_jpeg(frame: Any, path: Path) -> tuple[int, int]:
    """Write ``frame`` to ``path`` as a JPEG; (width, height), or MediaError saying why not."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        raise MediaError(f"a snapshot is a .jpg file, not {path.name!r}")
    if not path.parent.is_dir():
        raise MediaError(f"cannot write {path}: no such directory {str(path.parent)!r}")
    data = jpeg_bytes(frame)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(part, "wb") as f:
            f.write(data)
        os.replace(part, path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise MediaError(f"cannot write {path}: {exc.strerror or exc}") from None
    return frame.width, frame.height

"""Which video encoder a call uses: a board's hardware H.264 encoder when it has one.

``--video-codec NAME`` names an FFmpeg encoder in PyAV:

    auto           h264_v4l2m2m when it opens here, else libvpx (the default)
    h264_v4l2m2m   the V4L2 memory-to-memory H.264 encoder (Raspberry Pi and other SoCs)
    libx264        H.264 in software
    libvpx         VP8 in software (aiortc's own choice)

``vp8`` and ``h264`` are accepted for libvpx and libx264.  An encoder is
usable when it opens: PyAV's wheels carry h264_v4l2m2m on every Linux, but it
only opens on a board with the hardware (a ``/dev/video*`` M2M encoder).  A
named encoder that does not open is refused before the call with the ones
that do; ``auto`` says which one it fell back to.  The codec goes first in our
offer and answer (``setCodecPreferences``): a peer that takes only the other
one still gets it, encoded by the software encoder of that codec.
"""

from __future__ import annotations

import contextlib
import contextvars
import fractions
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from callctl.media.errors import MediaError

log = logging.getLogger("callctl.media")

#: encoder → the RTP codec it makes
ENCODERS = {"h264_v4l2m2m": "video/H264", "libx264": "video/H264", "libvpx": "video/VP8"}
ALIASES = {"vp8": "libvpx", "h264": "libx264"}
HARDWARE = ("h264_v4l2m2m",)
#: The bitrate a hardware encoder starts at (aiortc's adapts its software encoders from here too).
START_BITRATE = 500_000


@dataclass(frozen=True)
class VideoCodec:
    encoder: str
    mime: str
    #: Named by the user (or a hardware encoder that ``auto`` found): our offer and answer put it
    #: first.  ``auto`` without hardware leaves the order to the peer and aiortc (VP8 first).
    preferred: bool = True

    @property
    def name(self) -> str:
        return self.mime.split("/")[1]


@functools.cache
def opens(encoder: str) -> str | None:
    """None when ``encoder`` opens here (a 640x480 stream), else why not."""
    try:
        import av

        ctx: Any = av.CodecContext.create(encoder, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 640, 480, "yuv420p"
        ctx.time_base = fractions.Fraction(1, 30)
        ctx.bit_rate = START_BITRATE
        ctx.open()
    except Exception as exc:  # UnknownCodecError, or the device's errno when opening
        return str(exc) or type(exc).__name__
    return None


@functools.cache  # once a process: a listen's calls do not probe (or say the fallback) again
def resolve(name: str) -> VideoCodec:
    """The encoder for ``--video-codec NAME`` (MediaError, saying what opens, if it does not)."""
    wanted = ALIASES.get(name.lower(), name.lower())
    if wanted == "auto":
        for encoder in HARDWARE:
            why = opens(encoder)
            if why is None:
                log.info("video: H.264 with the hardware encoder %s", encoder)
                return VideoCodec(encoder, ENCODERS[encoder])
            log.info("video: no hardware H.264 encoder here (%s: %s); VP8 or H.264 in software", encoder, why)
        return VideoCodec("libvpx", ENCODERS["libvpx"], preferred=False)
    if wanted not in ENCODERS:
        raise MediaError(f"unknown --video-codec {name!r}: auto, {', '.join(ENCODERS)} (or vp8, h264)")
    why = opens(wanted)
    if why is not None:
        usable = [e for e in ENCODERS if opens(e) is None]
        raise MediaError(f"video encoder {wanted} does not open here ({why}); "
                         f"these do: {', '.join(usable) or 'none'} (or --video-codec auto)")
    return VideoCodec(wanted, ENCODERS[wanted])


_current: contextvars.ContextVar[VideoCodec | None] = contextvars.ContextVar("callctl_video_codec", default=None)


@contextlib.contextmanager
def video_codec(codec: VideoCodec | None) -> Iterator[None]:
    """Encoders created by tasks spawned inside this block use ``codec`` when its RTP codec is theirs."""
    token = _current.set(codec)
    try:
        yield
    finally:
        _current.reset(token)


def encoder_for(mime: str) -> Any | None:
    """Our encoder for a negotiated video codec (None: aiortc's own)."""
    codec = _current.get()
    if codec is None or codec.mime.lower() != mime.lower() or codec.encoder not in HARDWARE:
        return None
    return hardware_h264_encoder(codec.encoder)


def prefer(transceiver: Any, codec: VideoCodec) -> None:
    """Put ``codec`` first in what this video transceiver offers (when it is ``preferred``)."""
    from aiortc import RTCRtpSender

    if not codec.preferred:
        return
    codecs = RTCRtpSender.getCapabilities("video").codecs
    first = [c for c in codecs if c.mimeType.lower() == codec.mime.lower()]
    rest = [c for c in codecs if c.mimeType.lower() != codec.mime.lower()]
    transceiver.setCodecPreferences(first + rest)


def prefer_negotiated(transceiver: Any, codec: VideoCodec) -> None:
    """Answering: put ``codec`` first among those the offer and we have in common.

    aiortc computes them when the offer is applied, before our preference could
    be given; the list is reordered in place (stable: the rest keeps the offer's order).
    """
    codecs = getattr(transceiver, "_codecs", None)
    if not codecs or not codec.preferred:
        return
    chosen = {c.payloadType for c in codecs if c.mimeType.lower() == codec.mime.lower()}
    if not chosen:
        return  # the peer offered none of it: the software encoder of what it offered

    def rank(c: Any) -> int:
        apt = c.parameters.get("apt") if c.mimeType.lower() == "video/rtx" else None
        return 0 if c.payloadType in chosen or apt in chosen else 1

    codecs.sort(key=rank)


def negotiated(transceiver: Any, codec: VideoCodec | None) -> str | None:
    """What this video transceiver sends with: ``H264 (libx264)``, ``VP8 (libvpx)``; None before."""
    codecs = getattr(transceiver, "_codecs", None)
    if not codecs:
        return None
    mime = codecs[0].mimeType
    if codec is not None and codec.mime.lower() == mime.lower() and codec.encoder in HARDWARE:
        encoder = codec.encoder
    else:
        encoder = {"video/h264": "libx264", "video/vp8": "libvpx"}.get(mime.lower(), "aiortc")
    return f"{mime.split('/')[1]} ({encoder})"


def hardware_h264_encoder(encoder: str) -> Any:
    """aiortc's H.264 encoder (packetization, bitrate control) with an FFmpeg hardware encoder."""
    import av
    from aiortc.codecs.h264 import MAX_FRAME_RATE, H264Encoder

    class HardwareH264Encoder(H264Encoder):  # type: ignore[misc]  # aiortc has no type stubs
        name = encoder

        def _encode_frame(self, frame: Any, force_keyframe: bool) -> Iterator[bytes]:
            if self.codec is not None and (frame.width, frame.height) != (self.codec.width, self.codec.height):
                self.buffer_data, self.buffer_pts, self.codec = b"", None, None
            frame.pict_type = (av.video.frame.PictureType.I if force_keyframe
                               else av.video.frame.PictureType.NONE)
            if self.codec is None:
                ctx: Any = av.CodecContext.create(encoder, "w")
                ctx.width, ctx.height, ctx.pix_fmt = frame.width, frame.height, "yuv420p"
                ctx.bit_rate = self.target_bitrate
                ctx.framerate = fractions.Fraction(MAX_FRAME_RATE, 1)
                ctx.time_base = fractions.Fraction(1, MAX_FRAME_RATE)
                ctx.gop_size = MAX_FRAME_RATE  # a key frame a second: a lost one heals
                self.codec = ctx
                log.info("video: encoding H.264 with %s", encoder)
            codec: Any = self.codec
            data = b"".join(bytes(packet) for packet in codec.encode(frame))
            if data:
                yield from self._split_bitstream(data)

    return HardwareH264Encoder()

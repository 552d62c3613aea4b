"""How we encode our voice: Opus settings per call, and the encoder that applies them.

aiortc's own Opus encoder is stereo at 96 kbit/s with no FEC, chosen for
music.  Ours is mono, voice bitrate, in-band FEC.  aiortc creates a sender's
encoder deep inside its RTP task with no reference to the call, so a call's
settings travel in a context variable: ``PeerConnection`` sets it while it
negotiates, and the sender tasks aiortc spawns then inherit it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VoiceSettings:
    """One call's Opus settings (aiortc's own default: stereo, 96 kbit/s, no FEC)."""

    bitrate: int = 32000
    #: In-band FEC: the peer can rebuild a lost packet from the next one.
    fec: bool = True
    #: The loss the encoder plans FEC for, in percent.
    loss_pct: int = 10
    #: Discontinuous transmission: send almost nothing during silence.
    dtx: bool = False


_current: contextvars.ContextVar[VoiceSettings] = contextvars.ContextVar(
    "callctl_voice", default=VoiceSettings()  # noqa: B039  # frozen: never mutated
)


@contextlib.contextmanager
def voice_settings(settings: VoiceSettings) -> Iterator[None]:
    """Encoders created by tasks spawned inside this block use ``settings``."""
    token = _current.set(settings)
    try:
        yield
    finally:
        _current.reset(token)


def current_voice() -> VoiceSettings:
    return _current.get()


def voice_encoder(settings: VoiceSettings | None = None) -> Any:
    """A mono Opus encoder tuned for speech, in place of aiortc's stereo music one."""
    from aiortc.codecs.opus import SAMPLE_RATE, SAMPLES_PER_FRAME, TIME_BASE, OpusEncoder
    from av import AudioResampler, CodecContext

    voice = settings or current_voice()

    class VoiceOpusEncoder(OpusEncoder):  # type: ignore[misc]  # aiortc has no type stubs
        def __init__(self) -> None:  # replaces the parent's set-up entirely
            self.codec = CodecContext.create("libopus", "w")
            self.codec.bit_rate = voice.bitrate
            self.codec.format = "s16"
            self.codec.layout = "mono"
            self.codec.sample_rate = SAMPLE_RATE
            self.codec.time_base = TIME_BASE
            options = {"application": "voip"}
            if voice.fec:
                options.update(fec="1", packet_loss=str(voice.loss_pct))
            if voice.dtx:
                options["dtx"] = "1"
            self.codec.options = options
            self.resampler = AudioResampler(
                format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=SAMPLES_PER_FRAME
            )
            self.first_packet_pts = None

    return VoiceOpusEncoder()


def dbov(frame: Any) -> int:
    """The RFC 6464 audio level of a frame (0 loud .. 127 silent), with numpy.

    Replaces aiortc's pure-Python loop (~0.3 ms per 20 ms frame) on the send path.
    """
    pcm = np.frombuffer(frame.planes[0], dtype=np.int16)[: frame.samples * len(frame.layout.channels)]
    if pcm.size == 0:
        return 127
    mean_square = float(np.dot(pcm, pcm.astype(np.float64))) / (pcm.size * 32767.0 * 32767.0)
    if mean_square <= 1e-13:
        return 127
    return int(round(min(127.0, max(0.0, -10.0 * math.log10(mean_square)))))


# ------------------------------------------------------------------- decoding

#: Frames rebuilt from the next packet's in-band FEC, by every decoder in this process (a call's
#: figure is the difference over the call: a process has one call at a time).
FEC_RECOVERED = [0]


def fec_decode_problem() -> str | None:
    """None when lost packets can be rebuilt from FEC here, else why not."""
    if os.environ.get("CALLCTL_FEC_DECODE", "1") == "0":
        return "CALLCTL_FEC_DECODE=0"
    try:
        _load_libopus()
    except Exception as exc:  # the binding loads libopus when imported: OSError when it is missing
        return f"no libopus binding (opuslib-next, libopus0): {exc}"
    return None


_libopus_loaded = threading.Event()
_libopus_error: list[BaseException] = []


def _load_libopus() -> None:
    """Import the binding (it finds and loads libopus: ~50 ms, ldconfig included), once."""
    if not _libopus_loaded.is_set():
        try:
            import opuslib_next  # noqa: F401
        except Exception as exc:
            _libopus_error.append(exc)
        finally:
            _libopus_loaded.set()
    if _libopus_error:
        raise _libopus_error[0]


def preload_libopus() -> None:
    """Load the binding on a thread of its own: off a call's start-up path, ready before its first
    packet.  ``fec_decode_problem`` then waits for it (the import lock) if it is not done."""
    def load() -> None:
        with contextlib.suppress(Exception):  # said by fec_decode_problem when it is asked
            _load_libopus()

    if os.environ.get("CALLCTL_FEC_DECODE", "1") != "0" and not _libopus_loaded.is_set():
        threading.Thread(target=load, name="callctl-libopus", daemon=True).start()


def voice_decoder() -> Any:
    """A mono Opus decoder that rebuilds a lost packet from the next one's in-band FEC.

    aiortc decodes with FFmpeg's libopus wrapper, which never asks for FEC: a
    lost packet is a hole the playout conceals.  This one (libopus through
    ``opuslib-next``) remembers where the stream should go on; a packet that
    comes one frame late of that, or more, is first decoded with ``decode_fec``
    (the copy of the frame before it that the sender put in it), stamped one
    frame earlier, then decoded as itself.  Runs on aiortc's decoder thread.
    """
    import av
    import opuslib_next
    from aiortc.codecs.opus import TIME_BASE

    from callctl.media.audio import RATE

    max_samples = RATE * 120 // 1000  # an Opus packet holds 120 ms at most

    class FecOpusDecoder:
        def __init__(self) -> None:
            self._decoder = opuslib_next.Decoder(RATE, 1)
            self._next: int | None = None  # where the stream goes on (RTP ticks)
            self._frame = RATE // 50  # the last packet's duration

        def _frame_of(self, pcm: bytes, pts: int) -> Any:
            samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = pts
            frame.time_base = TIME_BASE
            return frame

        def decode(self, encoded_frame: Any) -> list[Any]:
            data, pts = bytes(encoded_frame.data), int(encoded_frame.timestamp)
            frames = []
            try:
                if self._next is not None and pts - self._next >= self._frame:
                    # the packet before this one is lost: its FEC copy travels in this one
                    lost = self._decoder.decode(data, self._frame, decode_fec=True)
                    frames.append(self._frame_of(lost, pts - self._frame))
                    FEC_RECOVERED[0] += 1
                pcm = self._decoder.decode(data, max_samples, decode_fec=False)
            except opuslib_next.OpusError:
                return frames  # a corrupt packet: a hole, as a lost one
            samples = len(pcm) // 2
            if samples:
                self._frame = samples
            frames.append(self._frame_of(pcm, pts))
            if self._next is None or pts + samples > self._next:
                self._next = pts + samples
            return frames

    return FecOpusDecoder()


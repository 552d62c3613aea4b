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
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiceSettings:
    """One call's Opus settings (aiortc's own default: stereo, 96 kbit/s, no FEC)."""

    bitrate: int = 32000
    #: In-band FEC: the peer can rebuild a lost packet from the next one.
    fec: bool = True
    #: The loss the encoder plans FEC for, in percent; None: the loss the peer reports (LossPlan).
    loss_pct: int | None = None
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
    """A mono Opus encoder tuned for speech, in place of aiortc's stereo music one.

    Its in-band FEC is planned for the loss the peer reports (``note_loss``,
    from each RTCP report about what we send), unless the settings fix it.
    """
    from aiortc.codecs.opus import SAMPLE_RATE, SAMPLES_PER_FRAME, TIME_BASE, OpusEncoder
    from av import AudioResampler, CodecContext

    voice = settings or current_voice()

    class VoiceOpusEncoder(OpusEncoder):  # type: ignore[misc]  # aiortc has no type stubs
        def __init__(self) -> None:  # replaces the parent's set-up entirely
            self.plan = LossPlan(voice.loss_pct)
            self.codec = self._open(self.plan.pct)
            #: made for the first frame that is not 20 ms of 48 kHz mono s16 (they all are, from
            #: our sources): such a frame goes to the codec as it is
            self.resampler: Any = None
            self.first_packet_pts: Any = None

        def _open(self, loss_pct: int) -> Any:
            codec = CodecContext.create("libopus", "w")
            codec.bit_rate = voice.bitrate
            codec.format = "s16"
            codec.layout = "mono"
            codec.sample_rate = SAMPLE_RATE
            codec.time_base = TIME_BASE
            options = {"application": "voip"}
            if voice.fec:
                options.update(fec="1", packet_loss=str(loss_pct))
            if voice.dtx:
                options["dtx"] = "1"
            codec.options = options
            return codec

        def note_loss(self, fraction_lost: int) -> None:
            """The peer reports the fraction of our packets it lost (RTCP, 0..255)."""
            if not voice.fec:
                return
            before = self.plan.pct
            if self.plan.report(fraction_lost):
                # libopus takes the figure at any time; FFmpeg's wrapper only when it opens: a
                # new encoder goes on where the old one stopped (the packets' timestamps are
                # the frames')
                self.codec = self._open(self.plan.pct)
                log.info("Opus FEC planned for %d %% loss (was %d %%): the peer lost %.1f %%",
                         self.plan.pct, before, fraction_lost * 100 / 256)

        def encode(self, frame: Any, force_keyframe: bool = False) -> Any:  # (payloads, timestamp | None)
            if (self.resampler is None and frame.samples == SAMPLES_PER_FRAME
                    and frame.sample_rate == SAMPLE_RATE and frame.format.name == "s16"
                    and frame.layout.name == "mono"):
                packets = self.codec.encode(frame)
            else:
                if self.resampler is None:
                    self.resampler = AudioResampler(
                        format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=SAMPLES_PER_FRAME
                    )
                packets = []
                for resampled in self.resampler.resample(frame):
                    packets += self.codec.encode(resampled)
            if not packets:
                return [], None
            if self.first_packet_pts is None:
                self.first_packet_pts = packets[0].pts  # the codec's delay: negative at first
            return [bytes(p) for p in packets], packets[0].pts - self.first_packet_pts

    return VoiceOpusEncoder()


#: The losses (in percent) the encoder plans FEC for: the smallest at or above what the peer reports.
LOSS_STEPS = (0, 5, 10, 20, 30)
#: Reports in a row that ask for less before the plan comes down (a report comes every ~1 s).
STEP_DOWN_AFTER = 5


class LossPlan:
    """The loss the Opus encoder plans its in-band FEC for, from the peer's reports (sans-IO).

    Planning FEC more than doubles the encoder's work (84 → 192 µs a 20 ms
    frame of a tone here: SILK encodes each frame's copy as well) and spends bits on
    the copies: planned for 0 % on a clean link, it
    goes up at the first report of a loss and down only after ``STEP_DOWN_AFTER``
    reports in a row ask for less, as libwebrtc plans it from what RTCP says.
    ``fixed`` keeps it at one figure.
    """

    def __init__(self, fixed: int | None = None) -> None:
        self.fixed = fixed
        self.pct = LOSS_STEPS[0] if fixed is None else fixed
        self._lower = 0  # reports in a row that asked for less

    def report(self, fraction_lost: int) -> bool:
        """One report (RTCP's fraction lost, 0..255); True when the plan changed."""
        if self.fixed is not None:
            return False
        lost = max(0, min(255, fraction_lost)) * 100 / 256
        wanted = next((s for s in LOSS_STEPS if s >= lost), LOSS_STEPS[-1])
        if wanted > self.pct:
            self.pct, self._lower = wanted, 0
            return True
        if wanted == self.pct:
            self._lower = 0
            return False
        self._lower += 1
        if self._lower < STEP_DOWN_AFTER:
            return False
        # down one step at a time: a link that is lossy now and then stays protected
        self.pct, self._lower = max(s for s in LOSS_STEPS if s < self.pct), 0
        return True


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


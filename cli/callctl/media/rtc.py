"""The aiortc glue: one peer connection per call, our sources in, our sinks out.

This is the only module that uses aiortc's camelCase API.  It also applies a
few documented, version-checked adjustments to aiortc/aioice at run time
(``tune_aiortc``); nothing on disk is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callctl.media.audio import FRAME, FRAME_S, RATE, SILENCE, AudioSink, AudioSource, level
from callctl.media.playout import PlayoutBuffer
from callctl.signaling.protocol import IceServer

log = logging.getLogger("callctl.media")

#: A connected call with no RTP from the peer for this long has lost its media path.
MEDIA_SILENCE_TIMEOUT_S = 3.0
#: ICE consent checks: every second, and 3 misses end the path (aioice: 5 s x 6).
CONSENT_INTERVAL_S = 1
CONSENT_FAILURES = 3

_tuned = False
STOCK_AUDIO = os.environ.get("CALLCTL_STOCK_AUDIO") == "1"


@dataclass
class VoiceSettings:
    """How we encode our audio (aiortc's own default: stereo, 96 kbit/s, no FEC)."""

    bitrate: int = 32000
    #: In-band FEC: the peer can rebuild a lost packet from the next one.
    fec: bool = True
    #: The loss the encoder plans FEC for, in percent.
    loss_pct: int = 10
    #: Discontinuous transmission: send almost nothing during silence.
    dtx: bool = False


VOICE = VoiceSettings()


def dbov(frame) -> int:  # type: ignore[no-untyped-def]
    """The RFC 6464 audio level of a frame (0 loud .. 127 silent), with numpy.

    Replaces aiortc's pure-Python loop (~0.3 ms per 20 ms frame) on the send path.
    """
    import math

    pcm = np.frombuffer(frame.planes[0], dtype=np.int16)[: frame.samples * len(frame.layout.channels)]
    if pcm.size == 0:
        return 127
    mean_square = float(np.dot(pcm, pcm.astype(np.float64))) / (pcm.size * 32767.0 * 32767.0)
    if mean_square <= 1e-13:
        return 127
    return int(round(min(127.0, max(0.0, -10.0 * math.log10(mean_square)))))


def voice_encoder():  # type: ignore[no-untyped-def]
    """A mono Opus encoder tuned for speech (VOICE), in place of aiortc's stereo music one."""
    from aiortc.codecs.opus import SAMPLE_RATE, SAMPLES_PER_FRAME, TIME_BASE, OpusEncoder
    from av import AudioResampler, CodecContext

    class VoiceOpusEncoder(OpusEncoder):  # type: ignore[misc]
        def __init__(self) -> None:  # replaces the parent's set-up entirely
            self.codec = CodecContext.create("libopus", "w")
            self.codec.bit_rate = VOICE.bitrate
            self.codec.format = "s16"
            self.codec.layout = "mono"
            self.codec.sample_rate = SAMPLE_RATE
            self.codec.time_base = TIME_BASE
            options = {"application": "voip"}
            if VOICE.fec:
                options.update(fec="1", packet_loss=str(VOICE.loss_pct))
            if VOICE.dtx:
                options["dtx"] = "1"
            self.codec.options = options
            self.resampler = AudioResampler(
                format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=SAMPLES_PER_FRAME
            )
            self.first_packet_pts = None

    return VoiceOpusEncoder()


def tune_aiortc() -> None:
    """Run-time adjustments to aiortc/aioice, applied once per process.

    - No public STUN default: aiortc falls back to a Google STUN server when
      iceServers is None; we always pass a list, and also make the fallback empty.
    - Host candidates on a machine whose only interface is loopback (a
      container, a network namespace): aioice skips 127.0.0.1 and would gather
      nothing, so the call would never connect; we fall back to it.
    - Consent freshness: detect a vanished peer in ~3-4 s instead of ~30 s.
    - Opus for voice: mono, VOICE.bitrate, in-band FEC (``voice_encoder``),
      through the sender's ``get_encoder`` hook; the SDP is unchanged
      (opus/48000/2, as RFC 7587 requires), so any WebRTC peer decodes it.
    - The audio-level header extension computed with numpy (``dbov``).
    - Audio playout is ours (``media/playout.py``): aiortc's fixed audio jitter
      buffer is replaced by a pass-through, and its timestamp mapper (which
      takes a reordered packet for a wrap) by ``SerialTimestampMapper``.
      ``CALLCTL_STOCK_AUDIO=1`` keeps
      aiortc's own buffer and writes frames straight to the sinks (for A/B
      measurements).
    """
    global _tuned
    if _tuned:
        return
    import aioice.ice
    from aiortc.rtcicetransport import RTCIceGatherer

    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return original(use_ipv4=use_ipv4, use_ipv6=use_ipv6) or ["127.0.0.1"]

    aioice.ice.get_host_addresses = host_addresses
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL_S
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES
    RTCIceGatherer.getDefaultIceServers = classmethod(lambda cls: [])  # type: ignore[method-assign,assignment]

    import aiortc.rtcrtpsender
    import aiortc.rtp

    stock_encoder = aiortc.rtcrtpsender.get_encoder

    def get_encoder(codec):  # type: ignore[no-untyped-def]
        if codec.mimeType.lower() == "audio/opus":
            return voice_encoder()
        return stock_encoder(codec)

    aiortc.rtcrtpsender.get_encoder = get_encoder
    aiortc.rtp.compute_audio_level_dbov = dbov
    if not STOCK_AUDIO:
        import aiortc.rtcrtpreceiver

        from callctl.media.playout import PassThroughJitterBuffer, SerialTimestampMapper

        stock_buffer = aiortc.rtcrtpreceiver.JitterBuffer

        def jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False):  # type: ignore[no-untyped-def]
            if is_video:
                return stock_buffer(capacity=capacity, prefetch=prefetch, is_video=True)
            return PassThroughJitterBuffer(capacity, prefetch)

        aiortc.rtcrtpreceiver.JitterBuffer = jitter_buffer
        # reordered packets now reach the decoder: map their timestamps correctly
        aiortc.rtcrtpreceiver.TimestampMapper = SerialTimestampMapper
    _tuned = True


class FramePacer:
    """Paces frame n to ``start + n * period`` on the monotonic clock.

    ``tick()`` sleeps until the next frame is due and returns its index.  When
    the caller fell behind (the loop stalled, an encoder was slow) by more
    than ``max_lag``, it does not burst to catch up: with ``skip`` the missed
    frames are skipped (video: the index jumps); otherwise the clock is
    re-anchored and the index just continues (audio: timestamps stay
    contiguous).
    """

    def __init__(self, period: float, *, max_lag: float = 0.2, skip: bool = False) -> None:
        self.period = period
        self.max_lag = max_lag
        self.skip = skip
        self._start: float | None = None
        self._n = -1

    async def tick(self) -> int:
        self._n += 1
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return self._n
        due = self._start + self._n * self.period
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > self.max_lag:
            if self.skip:
                self._n = int((now - self._start) / self.period)
            else:
                self._start = now - self._n * self.period
        return self._n


def preload() -> None:
    """Import aiortc now (~0.4 s), not in the middle of dialing."""
    import aiortc  # noqa: F401

    tune_aiortc()


def _track_base() -> type:
    from aiortc.mediastreams import MediaStreamTrack

    return MediaStreamTrack


class Meter:
    """Frames counted, the latest peak level, and the peak since last asked."""

    __slots__ = ("frames", "level", "_held")

    def __init__(self) -> None:
        self.frames = 0
        self.level = 0.0
        self._held = 0.0

    def note(self, value: float) -> None:
        self.frames += 1
        self.level = value
        if value > self._held:
            self._held = value

    def take_peak(self) -> float:
        peak, self._held = self._held, 0.0
        return peak


def make_source_track(source: AudioSource, meter: Meter, muted: Callable[[], bool],  # type: ignore[no-untyped-def]
                      gate: asyncio.Event | None = None):
    """An aiortc audio track pulling 20 ms frames from ``source``, paced by the clock.

    With a ``gate``, the first ``recv()`` waits until the gate opens: the track
    can be attached when the offer/answer is made, and the first frame leaves
    the moment the call starts (aiortc polls a track-less sender only every 20 ms).
    """
    import av
    from aiortc.mediastreams import MediaStreamError

    base = _track_base()
    time_base = fractions.Fraction(1, RATE)

    class SourceTrack(base):  # type: ignore[misc,valid-type]
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._pacer = FramePacer(FRAME_S)

        async def recv(self):  # type: ignore[no-untyped-def]
            if self.readyState != "live":
                raise MediaStreamError
            if gate is not None and not gate.is_set():
                await gate.wait()
            n = await self._pacer.tick()
            pcm = source.read()
            if muted():
                pcm = SILENCE
            meter.note(level(pcm))
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = n * FRAME
            frame.time_base = time_base
            return frame

    return SourceTrack()


def make_video_track(source: Any, fps: float, meter: Meter):  # type: ignore[no-untyped-def]
    """An aiortc video track sending the source's newest frame ``fps`` times a second."""
    from aiortc.mediastreams import MediaStreamError

    base = _track_base()
    clock = 90000
    time_base = fractions.Fraction(1, clock)

    class VideoTrack(base):  # type: ignore[misc,valid-type]
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            # a slow encoder skips the frames it missed instead of queueing them
            self._pacer = FramePacer(1.0 / fps, max_lag=0.0, skip=True)

        async def recv(self):  # type: ignore[no-untyped-def]
            if self.readyState != "live":
                raise MediaStreamError
            n = await self._pacer.tick()
            # the newest frame; the same one again if the source is slower than fps
            # (re-stamping it is safe: the sender encodes it before asking again)
            frame = source.latest()
            if frame is None:
                frame = self._black_frame()
            frame.pts = int(n * clock / fps)
            frame.time_base = time_base
            meter.note(1.0)
            return frame

        def _black_frame(self):  # type: ignore[no-untyped-def]
            import av

            fmt = source.fmt
            frame = av.VideoFrame(fmt.width, fmt.height, "yuv420p")
            for plane, value in zip(frame.planes, (16, 128, 128)):
                plane.update(bytes([value]) * plane.buffer_size)
            return frame

    return VideoTrack()


@dataclass
class MediaCallbacks:
    on_up: Callable[[], None]
    on_lost: Callable[[str], None]
    on_first_frame: Callable[[], None] = lambda: None
    on_first_video: Callable[[int, int], None] = lambda w, h: None
    #: ("device.lost" | "device.restored", {"device": name, "kind": "mic"|"speaker"})
    on_device: Callable[[str, dict[str, str]], None] = lambda event, fields: None


@dataclass
class VideoSetup:
    """This side's video: what to send (if anything) and where the peer's goes."""

    source: Any = None  # media.video.VideoSource, or None: receive only
    sinks: list[Any] = field(default_factory=list)
    fps: float = 15.0
    #: Send from the start (False: negotiated but held, "initial video paused").
    sending: bool = True


class AudioPeer:
    """One call's peer connection: offer/answer, preparation, start, stats, close."""

    def __init__(
        self,
        ice_servers: list[IceServer],
        source: AudioSource,
        sinks: list[AudioSink],
        callbacks: MediaCallbacks,
        video: VideoSetup | None = None,
    ) -> None:
        tune_aiortc()
        self.video = video or VideoSetup()
        self.video_sent = Meter()
        self.video_received = Meter()
        self._video_track: Any = None
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        self.source = source
        self.sinks = sinks
        self.callbacks = callbacks
        self.sent = Meter()
        self.received = Meter()
        self.playout = PlayoutBuffer()
        self._started = asyncio.Event()
        self.muted = False
        self.playing = False
        self.first_remote_frame_at: float | None = None
        self._closing = False
        self._up = False
        self._last_rx = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._remote_sdp: str | None = None
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                    for s in ice_servers
                ]
            )
        )
        self.pc.on("connectionstatechange", self._state_changed)
        self.pc.on("track", self._on_track)

    # ------------------------------------------------------------ negotiation
    def _audio_track(self):  # type: ignore[no-untyped-def]
        """Our source as a track, held behind the start gate until ``start()``."""
        return make_source_track(self.source, self.sent, lambda: self.muted, self._started)

    async def create_offer(self) -> str:
        self.pc.addTransceiver(self._audio_track(), direction="sendrecv")
        # video is negotiated in every call, held until used: pause, resume and
        # "video on" in an audio call are then a track swap, with no renegotiation
        self.pc.addTransceiver("video", direction="sendrecv")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp  # type: ignore[no-any-return]

    async def apply_answer(self, sdp: str) -> None:
        """Apply the callee's answer; the same answer twice (prepared, then answered) is a no-op."""
        if self._remote_sdp == sdp:
            return
        if self._remote_sdp is not None:
            raise RuntimeError("a different answer was already applied")
        from aiortc import RTCSessionDescription

        self._remote_sdp = sdp
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    @property
    def has_answer(self) -> bool:
        return self._remote_sdp is not None

    async def create_answer(self, offer_sdp: str) -> str:
        """Callee: answer the offer with no track yet, so ICE/DTLS can start while ringing."""
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            transceiver.direction = "sendrecv"
            if transceiver.kind == "audio":
                transceiver.sender.replaceTrack(self._audio_track())
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ media
    def start(self) -> None:
        """Start sending our source and playing the peer into the sinks."""
        if self.playing:
            return
        self.playing = True
        self._last_rx = time.monotonic()
        self._started.set()  # the audio track, attached at offer/answer, starts sending
        if self.video.source is not None and self.video.sending:
            self.set_video_sending(True)
        self._spawn(self._watch_rtp())
        self._spawn(self._watch_devices())
        if not STOCK_AUDIO:
            self._spawn(self._playout_clock())

    def set_video_source(self, source: Any) -> None:
        """Use this video source from now on (None: stop sending video)."""
        old = self.video.source
        self.video.source = source
        self._video_track = None
        if old is not None and old is not source:
            old.close()
        if self.playing:
            self.set_video_sending(source is not None and self.video.sending)

    def set_video_sending(self, sending: bool) -> None:
        """Pause or resume our video: the track is swapped, nothing is renegotiated."""
        self.video.sending = sending
        if not self.playing:
            return
        track = None
        if sending and self.video.source is not None:
            if self._video_track is None:
                self._video_track = make_video_track(self.video.source, self.video.fps, self.video_sent)
            track = self._video_track
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(track)

    def _on_track(self, track) -> None:  # type: ignore[no-untyped-def]
        if track.kind == "audio":
            self._spawn(self._pump(track))
        elif track.kind == "video":
            self._spawn(self._pump_video(track))

    async def _pump_video(self, track) -> None:  # type: ignore[no-untyped-def]
        from aiortc.mediastreams import MediaStreamError

        first = True
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not self.playing:
                continue
            if first:
                first = False
                self.callbacks.on_first_video(frame.width, frame.height)
            self.video_received.note(1.0)
            for sink in self.video.sinks:
                try:
                    sink.write(frame)
                except Exception as exc:  # a broken sink must not stop the call
                    log.error("video sink %s: %s", getattr(sink, "name", sink), exc)

    async def _pump(self, track) -> None:  # type: ignore[no-untyped-def]
        """Read every remote frame (so nothing piles up while ringing); play once started."""
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not self.playing:
                continue
            self._last_rx = time.monotonic()
            if self.first_remote_frame_at is None:
                self.first_remote_frame_at = self._last_rx
                self.callbacks.on_first_frame()
            pcm = frame.to_ndarray().reshape(-1)
            if frame.layout.nb_channels == 2:  # packed stereo from the decoder: downmix
                pcm = ((pcm[0::2].astype(np.int32) + pcm[1::2]) // 2).astype(np.int16)
            if STOCK_AUDIO:
                self._play(pcm)
            else:
                self.playout.push(frame.pts, pcm, self._last_rx)

    def _play(self, pcm: np.ndarray) -> None:
        self.received.note(level(pcm))
        for sink in self.sinks:
            sink.write(pcm)

    async def _playout_clock(self) -> None:
        """Every 20 ms: the next frame from the playout buffer to the sinks."""
        pacer = FramePacer(FRAME_S)  # after a stalled loop: no catch-up burst
        while True:
            await pacer.tick()
            pcm, kind = self.playout.pop(time.monotonic())
            if kind != "wait":
                self._play(pcm)

    async def _watch_rtp(self) -> None:
        """A peer that stops sending while connected has vanished (killed, link cut)."""
        while not self._closing:
            await asyncio.sleep(0.5)
            if self._up and time.monotonic() - self._last_rx > MEDIA_SILENCE_TIMEOUT_S:
                self.callbacks.on_lost(f"no media from the peer for {MEDIA_SILENCE_TIMEOUT_S:g} s")
                return

    async def _watch_devices(self) -> None:
        """A microphone or speaker that stops (unplugged) does not end the call.

        It goes silent, ``device.lost`` is reported, and it is reopened every
        2 s until that works (``device.restored``).
        """
        devices = [d for d in (self.source, *self.sinks) if hasattr(d, "stalled")]
        if not devices:
            return
        lost: dict[Any, float] = {}
        while not self._closing:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for device in devices:
                fields = {"device": device.device.name,
                          "kind": "mic" if device is self.source else "speaker"}
                if device not in lost:
                    if device.stalled():
                        lost[device] = 0.0
                        log.warning("%s stopped delivering: lost", device.name)
                        self.callbacks.on_device("device.lost", fields)
                    continue
                if now - lost[device] < 2.0:
                    continue
                lost[device] = now
                try:  # opening a device blocks: not on the event loop
                    await asyncio.wait_for(asyncio.to_thread(device.reopen), 5)
                except Exception as exc:
                    log.info("%s still gone: %s", device.name, exc)
                    continue
                del lost[device]
                self.callbacks.on_device("device.restored", fields)

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.debug("peer connection %s", state)
        if state == "connected" and not self._up:
            self._up = True
            self._last_rx = time.monotonic()
            self.callbacks.on_up()
        elif state in ("failed", "closed") and not self._closing:
            self.callbacks.on_lost(f"media path {state}")

    @property
    def closed_by_peer(self) -> bool:
        """The peer closed the connection (as opposed to it failing)."""
        return self.pc.connectionState == "closed" and not self._closing

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ stats
    async def stats(self) -> dict[str, float]:
        """RTT, loss and jitter as the peer reports them, when known."""
        out: dict[str, float] = {}
        with contextlib.suppress(Exception):
            report = await self.pc.getStats()
            for s in report.values():
                if s.type == "remote-inbound-rtp" and s.kind == "audio":
                    if getattr(s, "roundTripTime", None) is not None:
                        out["rtt_ms"] = round(s.roundTripTime * 1000, 1)
                    out["loss_pct"] = round(100 * (s.fractionLost or 0) / 256, 1)
                if s.type == "inbound-rtp" and s.kind == "audio":
                    out["jitter_ms"] = round((s.jitter or 0) / RATE * 1000, 1)
                    out["packets_lost"] = s.packetsLost or 0
        return out

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.source.close()
        if self.video.source is not None:
            self.video.source.close()
        await asyncio.to_thread(self._close_sinks)

    def _close_sinks(self) -> None:
        for sink in [*self.sinks, *self.video.sinks]:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing %s failed: %s", sink.name, exc)


FRAME_DURATION_S = FRAME_S

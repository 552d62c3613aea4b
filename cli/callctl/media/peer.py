"""One call's peer connection: negotiation, our tracks in, the peer's media out to the sinks.

The only module that uses aiortc's camelCase API for a call.  Audio and video
are both negotiated in every call (video held until used), so pausing,
resuming and turning video on are a track swap, never a renegotiation.
DTMF rides on the audio stream as RFC 4733 telephone-events (``dtmf.py``):
``send_dtmf``, ``on_dtmf``, ``dtmf_ready``.
With a ``Messenger``, each connection also carries the call's data channel
for app messages (``messages.py`` makes it and speaks aiortc's channel API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from callctl.media import echo
from callctl.media.adjust import STOCK_AUDIO, gathering_outcomes, selected_pair, tune_aiortc
from callctl.media.audio import FRAME_S, AudioSink, AudioSource, level
from callctl.media.dtmf import CallDtmf
from callctl.media.errors import BadSdp, MediaError
from callctl.media.messages import Messenger, create_channel
from callctl.media.playout import PlayoutBuffer
from callctl.media.sdp import check_sdp, has_data_channel, refusals
from callctl.media.stats import CallStats
from callctl.media.tracks import FramePacer, Meter, make_source_track, make_video_track
from callctl.media.video_sinks import VideoSink
from callctl.media.video_codec import VideoCodec, negotiated, prefer, prefer_negotiated, video_codec
from callctl.media.video_sources import VideoSource
from callctl.media.voice import VoiceSettings, voice_settings
from callctl.media.watchdog import watch_devices
from callctl.signaling.protocol import IceServer

log = logging.getLogger("callctl.media")

#: Closing the peer connection gives up after this long (the call has ended anyway).
CLOSE_TIMEOUT_S = 1.0
#: A connected call with no RTP from the peer for this long has lost its media path.
MEDIA_SILENCE_TIMEOUT_S = 3.0


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

    source: VideoSource | None = None  # None: receive only
    sinks: list[VideoSink] = field(default_factory=list)
    fps: float = 15.0
    #: Send from the start (False: negotiated but held, "initial video paused").
    sending: bool = True


#: The playout clock moves its phase by at most this per 20 ms tick (a 5 % change of pace).
PLAYOUT_SLEW_S = 0.001


class PeerConnection:
    """One call's peer connection: offer/answer, preparation, start, stats, close."""

    def __init__(
        self,
        ice_servers: list[IceServer],
        source: AudioSource,
        sinks: list[AudioSink],
        callbacks: MediaCallbacks,
        video: VideoSetup | None = None,
        voice: VoiceSettings | None = None,
        relay_only: bool = False,
        messenger: Messenger | None = None,
        processing: echo.Processing | None = None,
        video_codec: VideoCodec | None = None,
    ) -> None:
        tune_aiortc()
        #: The call's app messages: each peer connection's data channel is attached to it.
        self.messenger = messenger
        self._channel: Any = None
        self.voice = voice or VoiceSettings()
        self.video = video or VideoSetup()
        self.video_sent = Meter()
        self.video_received = Meter()
        self._video_track: Any = None
        self.source = source
        self.sinks = sinks
        #: The microphone path asked for, and what is on for the source and speaker of the moment.
        self.processing_wanted = processing or echo.Processing()
        self.processing = echo.link(source, sinks[0] if sinks else None, self.processing_wanted)
        #: The video encoder asked for (None: aiortc's choice, VP8 in software).
        self.video_codec = video_codec
        self.callbacks = callbacks
        self.sent = Meter()
        self.received = Meter()
        self.playout = PlayoutBuffer()
        self._started = asyncio.Event()
        self.muted = False
        #: Held, by us or by the peer: the peer's audio is not played (silence to the sinks) ...
        self.on_hold = False
        #: ... and this sink, where the hold sound plays, gets nothing from the call meanwhile.
        self.hold_sink: AudioSink | None = None
        self.playing = False
        self.first_remote_frame_at: float | None = None
        #: The peer's newest video frame (``callctl snapshot``), and whether one came at all.
        self.last_video_frame: Any = None
        self.video_arrived = asyncio.Event()
        self._watched: list[Any] | None = None
        #: Called on the event loop once per DTMF digit the peer sends (RFC 4733 telephone-event).
        self.on_dtmf: Callable[[str], None] | None = None
        self._dtmf = CallDtmf(self._dtmf_heard)
        self._closing = False
        self._up = False
        self._last_rx = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._remote_sdp: str | None = None
        self.ice_servers = ice_servers
        self.relay_only = relay_only
        #: Which peer connection this is: a restart makes a new one on the same endpoints.
        self.generation = 0
        self.pc = self._new_pc()
        #: The call's statistics over every peer connection it has (``media.stats``).
        self.call_stats = CallStats(self)

    def _new_pc(self) -> Any:
        from aiortc import (
            RTCConfiguration,
            RTCIceServer,
            RTCIceTransportPolicy,
            RTCPeerConnection,
        )

        pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                    for s in self.ice_servers
                ],
                iceTransportPolicy=(
                    RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
                ),
            )
        )
        generation = self.generation
        pc.on("connectionstatechange", lambda: self._dtmf_follow(pc))  # before on_up is told
        pc.on("connectionstatechange", lambda: self._state_changed(generation))
        pc.on("track", self._on_track)
        return pc

    async def restart(self, ice_servers: list[IceServer]) -> None:
        """A new peer connection (new ICE credentials, candidates, DTLS) on the same endpoints.

        The call's source, sinks, recording, mute and video carry over; the old
        connection is closed.  Then negotiate again with ``create_offer`` or
        ``create_answer``.  Used to reconnect after the media path broke, and
        when another device than the prepared one answered.
        """
        old = self.pc
        self._dtmf.detach("the call reconnected")
        self._detach_channel()
        self.generation += 1
        self.ice_servers = ice_servers
        self._up = False
        self._remote_sdp = None
        self._video_track = None
        self.playout = PlayoutBuffer()  # the new stream's timestamps start anywhere
        for transceiver in old.getTransceivers():
            transceiver.sender.replaceTrack(None)  # our source feeds the new connection only
        self.pc = self._new_pc()
        # closing releases its TURN allocation, which can take seconds on a path that
        # just came back: the new connection does not wait for it
        self._spawn(self._close_quietly(old))
        if self.playing:
            self._last_rx = time.monotonic()
            self._spawn(self._watch_rtp(self.generation))

    # ------------------------------------------------------------ negotiation
    def _audio_track(self) -> Any:
        """Our source as a track, held behind the start gate until ``start()``."""
        return make_source_track(lambda: self.source, self.sent, lambda: self.muted, self._started)

    async def create_offer(self) -> str:
        self.pc.addTransceiver(self._audio_track(), direction="sendrecv")
        # video is negotiated in every call, held until used: pause, resume and
        # "video on" in an audio call are then a track swap, with no renegotiation
        video = self.pc.addTransceiver("video", direction="sendrecv")
        if self.video_codec is not None:
            prefer(video, self.video_codec)
        self._attach_channel()
        with voice_settings(self.voice), video_codec(self.video_codec):  # aiortc's sender tasks take them
            await self.pc.setLocalDescription(await self.pc.createOffer())
        if self.playing and self.video.source is not None and self.video.sending:
            self.set_video_sending(True)  # a restarted call goes on sending its video
        return str(self.pc.localDescription.sdp)

    async def apply_answer(self, sdp: str) -> None:
        """Apply the callee's answer; the same answer twice (prepared, then answered) is a no-op."""
        if self._remote_sdp == sdp:
            return
        if self._remote_sdp is not None:
            raise BadSdp("a second, different answer for the same offer")
        from aiortc import RTCSessionDescription

        check_sdp(sdp, "answer")
        self._remote_sdp = sdp
        with voice_settings(self.voice), video_codec(self.video_codec), refusals("answer"):
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        if self.messenger is not None and not has_data_channel(sdp):
            self.messenger.unavailable("the peer's answer has no data channel")

    @property
    def has_answer(self) -> bool:
        return self._remote_sdp is not None

    async def create_answer(self, offer_sdp: str) -> str:
        """Callee: answer the offer with no track yet, so ICE/DTLS can start while ringing."""
        from aiortc import RTCSessionDescription

        check_sdp(offer_sdp, "offer")
        with voice_settings(self.voice), video_codec(self.video_codec), refusals("offer"):
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if has_data_channel(offer_sdp):
                self._attach_channel()  # the peer made the same negotiated channel
            elif self.messenger is not None:
                self.messenger.unavailable("the peer's offer has no data channel")
            for transceiver in self.pc.getTransceivers():
                transceiver.direction = "sendrecv"
                if transceiver.kind == "audio":
                    transceiver.sender.replaceTrack(self._audio_track())
                elif transceiver.kind == "video" and self.video_codec is not None:
                    prefer_negotiated(transceiver, self.video_codec)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        if self.playing and self.video.source is not None and self.video.sending:
            self.set_video_sending(True)
        return str(self.pc.localDescription.sdp)

    def _attach_channel(self) -> None:
        """This connection's message channel, made the same on both sides (negotiated, id 0)."""
        if self.messenger is not None and self._channel is None:
            self._channel = create_channel(self.pc)
            self.messenger.attach(self._channel)

    def _detach_channel(self) -> None:
        if self.messenger is not None and self._channel is not None:
            self.messenger.detach(self._channel)
        self._channel = None

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
        self._spawn(self._watch_rtp(self.generation))
        self._spawn(watch_devices(self._endpoints, self.callbacks.on_device))
        if not STOCK_AUDIO:
            self._spawn(self._playout_clock())

    @property
    def _endpoints(self) -> list[Any]:
        """What the device watchdog watches: the same list object, kept current by the switches."""
        if self._watched is None:
            self._watched = [self.source, *self.sinks]
        return self._watched

    def switch_audio_source(self, source: AudioSource) -> AudioSource:
        """Send from ``source`` from now on, on the same track (no renegotiation); the old one
        is returned for the caller to close."""
        old, self.source = self.source, source
        self._endpoints[:] = [source if e is old else e for e in self._endpoints]
        self.processing = echo.link(source, self.sinks[0] if self.sinks else None, self.processing_wanted)
        return old

    def switch_audio_sink(self, sink: AudioSink) -> AudioSink:
        """Play the peer into ``sink`` instead of the first sink (the speaker); the old one is returned."""
        old = self.sinks[0]
        self.sinks[0] = sink
        self._endpoints[:] = [sink if e is old else e for e in self._endpoints]
        if hasattr(old, "far_end"):  # a speaker no longer the reference
            old.far_end = None
        self.processing = echo.link(self.source, sink, self.processing_wanted)
        if self.hold_sink is old:
            self.hold_sink = None
        return old

    def set_video_source(self, source: VideoSource | None) -> None:
        """Use this video source from now on (None: stop sending video)."""
        old = self.video.source
        self.video.source = source  # the track, if there is one, takes its frames from here now
        if old is not None and old is not source:
            old.close()
        if self.playing:
            self.set_video_sending(source is not None and self.video.sending)

    def video_codec_name(self) -> str | None:
        """The negotiated video codec and its encoder (``status``), None before negotiation."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                return negotiated(transceiver, self.video_codec)
        return None

    def set_video_sending(self, sending: bool) -> None:
        """Pause or resume our video: the track is swapped, nothing is renegotiated."""
        self.video.sending = sending
        if not self.playing:
            return
        track = None
        if sending and self.video.source is not None:
            if self._video_track is None:
                self._video_track = make_video_track(lambda: self.video.source, self.video.fps, self.video_sent)
            track = self._video_track
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.sender.replaceTrack(track)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._spawn(self._pump(track))
        elif track.kind == "video":
            self._spawn(self._pump_video(track))

    async def _frames(self, track: Any) -> AsyncIterator[Any]:
        """Every remote frame is read (so nothing piles up while ringing); yielded once playing."""
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.playing:
                yield frame

    async def _pump_video(self, track: Any) -> None:
        first = True
        async for frame in self._frames(track):
            if first:
                first = False
                self.callbacks.on_first_video(frame.width, frame.height)
            self.last_video_frame = frame
            self.video_arrived.set()
            self.video_received.note(1.0)
            for sink in self.video.sinks:
                try:
                    sink.write(frame)
                except Exception as exc:  # a broken sink must not stop the call
                    log.error("video sink %s: %s", sink.name, exc)

    async def _pump(self, track: Any) -> None:
        async for frame in self._frames(track):
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
        if self.on_hold:
            pcm = np.zeros_like(pcm)
        self.received.note(level(pcm))
        for sink in self.sinks:
            if sink is not self.hold_sink:
                sink.write(pcm)

    async def _playout_clock(self) -> None:
        """Every 20 ms: the next frame from the playout buffer to the sinks."""
        pacer = FramePacer(FRAME_S)  # after a stalled loop: no catch-up burst
        while True:
            await pacer.tick()
            pcm, kind = self.playout.pop(time.monotonic())
            if kind != "wait":
                self._play(pcm)
            due = self.playout.next_due()
            if due is not None:  # tick when the next frame is due, not at a phase of our own
                pacer.steer(due, PLAYOUT_SLEW_S)

    @property
    def peer_sends_audio(self) -> bool:
        """The negotiated audio direction has the peer sending (False: it said recvonly/inactive)."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio" and transceiver.currentDirection is not None:
                return transceiver.currentDirection in ("sendrecv", "recvonly")
        return True  # not negotiated yet

    def direction_problems(self) -> list[str]:
        """What the negotiated directions say we will miss (a peer that only listens)."""
        if self.peer_sends_audio:
            return []
        return ["the peer sends no audio (its description only receives): the call goes on, "
                "silent here, and a lost peer is noticed by ICE consent alone"]

    async def _watch_rtp(self, generation: int) -> None:
        """A peer that stops sending while connected has vanished (killed, link cut).

        Not one that never sends (recvonly): ICE consent watches that path.
        """
        while not self._closing and generation == self.generation:
            await asyncio.sleep(0.5)
            if (generation == self.generation and self._up and self.peer_sends_audio
                    and time.monotonic() - self._last_rx > MEDIA_SILENCE_TIMEOUT_S):
                self.callbacks.on_lost(f"no media from the peer for {MEDIA_SILENCE_TIMEOUT_S:g} s")
                return

    def _state_changed(self, generation: int) -> None:
        if generation != self.generation:
            return  # a connection we replaced: its end is no news
        state = self.pc.connectionState
        log.debug("peer connection %s", state)
        if state == "connected" and not self._up:
            self._up = True
            self._last_rx = time.monotonic()
            self.callbacks.on_up()
        elif state in ("failed", "closed") and not self._closing:
            self.callbacks.on_lost(self._why(state))

    def _why(self, state: str) -> str:
        """Which layer failed: ICE (no path) or DTLS (a path, but no secure session)."""
        for transceiver in self.pc.getTransceivers():
            dtls = getattr(transceiver.sender, "transport", None)
            ice = getattr(dtls, "transport", None)
            if state == "failed" and dtls is not None and dtls.state == "failed":
                if ice is not None and ice.state == "completed":
                    return "the DTLS handshake with the peer failed (ICE had connected)"
                return "the DTLS handshake with the peer failed"
            if state == "failed" and ice is not None and ice.state == "failed":
                return "ICE found no working path to the peer"
        return f"media path {state}"

    # ------------------------------------------------------------------ DTMF
    @property
    def dtmf_ready(self) -> bool:
        """DTMF can be sent: telephone-event negotiated, and audio flowing both ways."""
        receiving = self.first_remote_frame_at is not None and time.monotonic() - self._last_rx < 1.0
        return self.playing and not self._closing and self._dtmf.ready(self.pc, receiving)

    async def send_dtmf(self, tones: str, duration_ms: int = 100, gap_ms: int = 70) -> None:
        """Send DTMF ``tones`` as RFC 4733 telephone-events on the call's audio; returns once sent.

        ``tones``: 0-9, *, #, A-D; ``,`` pauses 2 s, ``w`` 0.5 s (``dtmf.check_tones``).
        MediaError when a tone or a duration is not allowed, the peer did not
        negotiate telephone-event, or the call's audio sender is gone.
        """
        if self._closing or not self.playing:
            raise MediaError("DTMF not sent: no call in progress")
        await self._dtmf.send(self.pc, tones, duration_ms, gap_ms)

    def _dtmf_follow(self, pc: Any) -> None:
        if pc is self.pc and not self._closing:
            self._dtmf.follow(pc)

    def _dtmf_heard(self, digit: str | None) -> None:
        """A telephone-event packet from the peer: media (its audio pauses during a tone)."""
        self._last_rx = time.monotonic()  # a 6 s tone must not look like a vanished peer
        if digit is not None and self.playing and self.on_dtmf is not None:
            try:
                self.on_dtmf(digit)
            except Exception as exc:  # a broken callback must not stop the call
                log.error("DTMF callback: %s", exc)

    # --------------------------------------------------------------- network
    def route(self) -> dict[str, str]:
        """The candidate pair the media goes over: its local and remote types, and how.

        ``via`` is ``relay`` when either end is a TURN relay, ``nat`` for a
        server- or peer-reflexive pair, ``host`` for two host candidates.
        """
        pair = selected_pair(self.pc)
        if pair is None:
            return {}
        local, remote = pair
        via = "relay" if "relay" in (local, remote) else "host" if local == remote == "host" else "nat"
        return {"via": via, "local": local, "remote": remote}

    def gathering_problems(self) -> list[str]:
        """What went wrong with STUN and TURN while gathering (empty: nothing, or none configured)."""
        turns = [u for s in self.ice_servers for u in s.urls if u.startswith("turn")]
        stuns = [u for s in self.ice_servers for u in s.urls if u.startswith("stun")]
        report = gathering_outcomes(self.pc)
        if report is None:
            return []
        kinds, candidates = report
        problems = []
        if turns and "relay" not in candidates:
            outcome = kinds.get("turn", "unreachable")
            if outcome == "refused":
                problems.append(f"TURN server {turns[0]} refused our credentials: no relay for this call")
            elif outcome == "ok":
                pass
            else:
                problems.append(f"TURN server {turns[0]} {outcome}: no relay for this call")
        if stuns and not self.relay_only and "srflx" not in candidates and kinds.get("stun") != "ok":
            problems.append(f"STUN server {stuns[0]} {kinds.get('stun', 'unreachable')}")
        return problems

    @staticmethod
    async def _close_quietly(pc: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pc.close(), CLOSE_TIMEOUT_S * 10)

    @property
    def closed_by_peer(self) -> bool:
        """The peer closed the connection (as opposed to it failing)."""
        return self.pc.connectionState == "closed" and not self._closing

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ stats
    async def stats(self) -> dict[str, float]:
        """The call's latest statistics (``media.stats``), or a first sample if none was taken."""
        return self.call_stats.latest or await self.call_stats.sample()

    # ------------------------------------------------------------------ close
    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._dtmf.detach("the call ended")
        self._detach_channel()
        # on a dead path, aiortc would wait out its TURN server (releasing the
        # allocation) for many seconds: the allocation expires by itself
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)
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
        sinks: list[AudioSink | VideoSink] = [*self.sinks, *self.video.sinks]
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("closing %s failed: %s", sink.name, exc)

"""The asyncio side of a call: executes the state machine's actions.

``Phone`` is one identity online (its signaling client and event stream) with
at most one call at a time; ``CallSession`` is that call (a ``machine.Call``,
its peer connection, its timers).  Everything a user sees is an event emitted
through ``Phone.emit`` (see docs/EVENTS.md); the commands render them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callctl.engine import machine as m
from callctl.signaling import protocol as p
from callctl.signaling.client import (
    AuthFailed,
    Conflict,
    Disconnected,
    Received,
    SignalingClient,
    SignalingError,
)

log = logging.getLogger("callctl.engine")

#: Before a call connects, signaling that stays lost this long ends it.
SIGNALING_GRACE_S = 5.0
#: ICE + DTLS must complete within this after answer/accept.
CONNECT_TIMEOUT_S = 15.0
#: After the peer closes the media path, how long its signalled hangup may take to arrive.
PEER_CLOSE_GRACE_S = 1.0
#: How often ``media.level`` events are emitted during a call.
LEVEL_INTERVAL_S = 0.5

Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class MediaOptions:
    audio_in: str = "mic"
    audio_out: str = "speaker"
    loop: bool = False
    record: Path | None = None
    #: Opus bitrate we send, kbit/s.
    bitrate_kbps: int = 32
    #: Video: what we send when video is on, where the peer's video goes.
    video_in: str | None = None
    video_out: str = "null"
    video_size: tuple[int, int] = (640, 480)
    fps: float = 15.0
    camera_format: str | None = None
    #: Start with video negotiated but not sent (resume later).
    video_paused: bool = False

    @property
    def video_format(self):  # type: ignore[no-untyped-def]
        from callctl.media.video import VideoFormat

        return VideoFormat(self.video_size[0], self.video_size[1], self.fps)

    @property
    def records_video(self) -> bool:
        return self.record is not None and self.record.suffix.lower() in (".mkv", ".webm", ".mp4")


def check_media(opts: MediaOptions) -> None:
    """Validate the call's media specs without opening anything (raises MediaError/DeviceError)."""
    from callctl.media.registry import open_sink, open_source

    from callctl.media.registry import open_video_sink, open_video_source

    open_source(opts.audio_in, check_only=True)
    open_sink(opts.audio_out, check_only=True)
    if opts.record is not None and opts.records_video:
        from callctl.media.audio import FileSink

        FileSink.check(opts.record, any_extension=True)
    elif opts.record is not None:
        open_sink(f"file:{opts.record}", check_only=True)
    if opts.video_in is not None:
        open_video_source(opts.video_in, opts.video_format, check_only=True)
    open_video_sink(opts.video_out, opts.video_format, check_only=True)


@dataclass
class CallPolicy:
    """How a listening phone treats incoming calls."""

    auto_accept: bool = False
    accept_after: float | None = None
    allow: frozenset[str] | None = None


@dataclass
class Outcome:
    reason: p.EndReason
    source: m.Source
    call_id: str | None
    duration_s: float


def open_media(opts: MediaOptions):  # type: ignore[no-untyped-def]
    """Source and sinks for one call (raises MediaError / DeviceError)."""
    from callctl.media.registry import open_sink, open_source

    source = open_source(opts.audio_in, loop=opts.loop)
    assert source is not None
    try:
        sinks = [open_sink(opts.audio_out)]
        if opts.record is not None and not opts.records_video:
            sinks.append(open_sink(f"file:{opts.record}"))
    except Exception:
        source.close()
        raise
    return source, sinks


class _VideoFace:
    """A Recorder seen as a video sink."""

    name = "record-video"

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def write(self, frame: Any) -> None:
        self.recorder.write_video(frame)

    def close(self) -> None:
        pass  # the recorder is closed once, as an audio sink


class CallSession:
    """One call on this device, from dial or ring to its end."""

    def __init__(self, phone: Phone, role: m.Role, media: MediaOptions) -> None:
        self.phone = phone
        self.call = m.Call(role)
        self.media_opts = media
        self.peer: Any = None  # media.rtc.AudioPeer, created lazily
        self.answer_sdp: str | None = None
        self.ended = asyncio.Event()
        self.hangup_after: float | None = None
        self.max_duration: float | None = None
        self.ring_timeout: float | None = None
        self.muted = False
        self.peer_muted = False
        self.peer_video: str | None = None
        self.prepared_by: str | None = None
        self._create_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._queue: asyncio.Queue[m.CallEvent] = asyncio.Queue()
        self._runner = asyncio.ensure_future(self._run())
        self.accepted_at: float | None = None
        self._levels: asyncio.Future[None] | None = None

    # ----------------------------------------------------------- event input
    def feed(self, event: m.CallEvent) -> None:
        """Queue an event; events are handled one at a time, in order."""
        self._queue.put_nowait(event)

    async def _run(self) -> None:
        while self.call.state != m.State.ENDED:
            event = await self._queue.get()
            try:
                actions = self.call.handle(event, time.monotonic())
            except m.ProtocolError as exc:
                log.debug("ignored: %s", exc)
                continue
            for action in actions:
                try:
                    await self._do(action)
                except Exception as exc:  # an action failing must end the call, not hang it
                    log.exception("action %s failed", type(action).__name__)
                    if self.call.state != m.State.ENDED:
                        self.feed(m.Failed(p.EndReason.INTERNAL_ERROR))
                        self.phone.emit("error", {"message": f"{type(exc).__name__}: {exc}"})
        self.ended.set()

    # --------------------------------------------------------------- actions
    async def _do(self, action: m.Action) -> None:
        c = self.call
        if isinstance(action, m.Notify):
            self.phone.emit(action.event, action.fields)
        elif isinstance(action, m.CreateCall):
            self._create_task = asyncio.ensure_future(self._create(action))
        elif isinstance(action, m.ApplyAnswer):
            await self._apply_answer(action.sdp)
            self._arm_connect_timeout()
        elif isinstance(action, m.Prepare):
            await self._prepare(action.sdp)
        elif isinstance(action, m.SendAnswer):
            asyncio.ensure_future(self._send_answer())
            self._arm_connect_timeout()
        elif isinstance(action, m.SendDecline):
            assert c.call_id is not None
            await self._quietly(self.phone.client.decline(c.call_id, action.busy))
        elif isinstance(action, m.SendHangup):
            await self._send_hangup(action.reason)
        elif isinstance(action, m.StartMedia):
            if self.peer is not None:
                self.peer.start()
                self.peer.muted = self.muted
                if self.peer.video.source is not None and not self.peer.video.sending:
                    # PlanetKit's initial video state "paused": the peer is told
                    self._signal_video("paused")
            self._arm_call_timers()
            self._levels = asyncio.ensure_future(self._report_levels())
        elif isinstance(action, m.Release):
            await self._release()

    def _video_source(self) -> Any:
        from callctl.media.registry import open_video_source

        opts = self.media_opts
        return open_video_source(opts.video_in or "camera", opts.video_format,
                                 camera_format=opts.camera_format)

    def _new_peer(self) -> Any:
        from callctl.media.registry import open_video_sink
        from callctl.media.rtc import VOICE, AudioPeer, MediaCallbacks, VideoSetup
        from callctl.media.video import Recorder

        opts = self.media_opts
        VOICE.bitrate = opts.bitrate_kbps * 1000
        source, sinks = open_media(opts)
        video_call = self.call.media == p.Media.VIDEO
        video = VideoSetup(
            source=self._video_source() if video_call and opts.video_in else None,
            sinks=[open_video_sink(opts.video_out, opts.video_format)],
            fps=opts.fps,
            sending=not opts.video_paused,
        )
        if opts.record is not None and opts.records_video:
            recorder = Recorder(opts.record, audio=True, video=video_call,
                                size=opts.video_size, fps=opts.fps)
            sinks.append(recorder)
            if video_call:
                video.sinks.append(_VideoFace(recorder))
        return AudioPeer(
            self.phone.ice_servers,
            source,
            sinks,
            video=video,
            callbacks=MediaCallbacks(
                on_device=lambda event, fields: self.phone.emit(
                    event, {"call_id": self.call.call_id, **fields}
                ),
                on_first_video=lambda w, h: self.phone.emit(
                    "video.flowing", {"call_id": self.call.call_id, "width": w, "height": h}
                ),
                on_up=lambda: self.feed(m.MediaUp()),
                on_lost=self._media_lost,
                on_first_frame=lambda: self.phone.emit(
                    "media.flowing", {"call_id": self.call.call_id, "peer": self.call.peer}
                ),
            ),
        )

    def _media_lost(self, why: str) -> None:
        log.info("media lost: %s", why)
        if self.peer is not None and self.peer.closed_by_peer:
            # a peer that hangs up may close the media path a moment before its
            # hangup reaches us through the server: let the hangup win
            self._later(PEER_CLOSE_GRACE_S, m.Failed(p.EndReason.NETWORK_LOST))
            return
        self.feed(m.Failed(p.EndReason.NETWORK_LOST))

    async def _create(self, action: m.CreateCall) -> None:
        try:
            self.peer = self._new_peer()
            sdp = await self.peer.create_offer()
            info = await self.phone.client.create_call(
                action.peer, sdp, action.media, ring_timeout=self.ring_timeout
            )
        except AuthFailed:
            self.feed(m.Failed(p.EndReason.AUTH_FAILED))
            return
        except SignalingError as exc:
            self.phone.emit("error", {"message": exc.message})
            reason = p.EndReason.AUTH_FAILED if exc.status == 403 else p.EndReason.SERVER_UNREACHABLE
            if exc.status in (400, 413, 422):
                reason = p.EndReason.INTERNAL_ERROR
            self.feed(m.Failed(reason))
            return
        self.feed(m.Created(info.call_id))
        self.phone.adopt(info.call_id, self)
        if info.state == p.CallState.ENDED and info.reason is not None:
            self.feed(m.RemoteEnded(info.reason, by_server=info.ended_by == p.Party.SERVER))

    async def _apply_answer(self, sdp: str) -> None:
        assert self.peer is not None
        if self.peer.has_answer and self.peer._remote_sdp != sdp:
            # another device prepared, this one answered: negotiate afresh with it
            await self._reoffer()
            return
        await self.peer.apply_answer(sdp)

    async def _reoffer(self) -> None:
        assert self.call.call_id is not None
        old, self.peer = self.peer, self._new_peer()
        await old.close()
        sdp = await self.peer.create_offer()
        self.peer.start()
        self.peer.muted = self.muted
        await self.phone.client.signal(self.call.call_id, "reoffer", {"sdp": sdp})

    async def _prepare(self, offer_sdp: str) -> None:
        """Callee preparation: answer now, media held, so accepting is instant."""
        try:
            self.peer = self._new_peer()
            self.answer_sdp = await self.peer.create_answer(offer_sdp)
        except Exception as exc:
            from callctl.media.audio import DeviceError

            if isinstance(exc, DeviceError):
                self.phone.emit("error", {"message": str(exc)})
                self.feed(m.Failed(p.EndReason.DEVICE_ERROR))
                return
            raise
        assert self.call.call_id is not None
        await self._quietly(
            self.phone.client.signal(
                self.call.call_id, "prepare", {"sdp": self.answer_sdp, "device": self.phone.device}
            )
        )

    async def _send_answer(self) -> None:
        c = self.call
        assert c.call_id is not None and self.answer_sdp is not None
        self.accepted_at = time.monotonic()
        try:
            await self.phone.client.answer(c.call_id, self.answer_sdp)
        except Conflict as exc:
            if exc.code == "already_answered":
                self.feed(m.RemoteEnded(p.EndReason.ANSWERED_ELSEWHERE))
            else:
                with contextlib.suppress(SignalingError):
                    info = await self.phone.client.get_call(c.call_id)
                    if info.reason is not None:
                        self.feed(m.RemoteEnded(info.reason, info.ended_by == p.Party.SERVER))
                        return
                self.feed(m.RemoteEnded(p.EndReason.CANCELLED))
            return
        except AuthFailed:
            self.feed(m.Failed(p.EndReason.AUTH_FAILED))
            return
        except SignalingError as exc:
            self.phone.emit("error", {"message": exc.message})
            self.feed(m.Failed(p.EndReason.SERVER_UNREACHABLE))
            return
        self.feed(m.AnswerSent())

    async def _send_hangup(self, reason: p.EndReason) -> None:
        if self.call.call_id is None and self._create_task is not None:
            # hung up while the create request was in flight: wait for the id
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._create_task), 5)
        if self.call.call_id is not None:
            await self._quietly(self.phone.client.hangup(self.call.call_id, reason))

    async def _quietly(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, 5)
        except (TimeoutError, SignalingError) as exc:
            log.info("signaling request failed: %s", exc)
            return None

    # ---------------------------------------------------------------- timers
    def _later(self, delay: float, event: m.CallEvent) -> None:
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(delay, self.feed, event))

    def _arm_connect_timeout(self) -> None:
        self._later(CONNECT_TIMEOUT_S, m.ConnectTimeout())

    def _arm_call_timers(self) -> None:
        if self.hangup_after is not None:
            self._later(self.hangup_after, m.Hangup(p.EndReason.HANGUP))
        if self.max_duration is not None:
            self._later(self.max_duration, m.Hangup(p.EndReason.MAX_DURATION))

    # --------------------------------------------------------------- release
    async def _report_levels(self) -> None:
        """``media.level`` twice a second: peak levels (0..1) of our mic and of the peer."""
        while True:
            await asyncio.sleep(LEVEL_INTERVAL_S)
            if self.peer is not None and self.call.state == m.State.CONNECTED:
                self.phone.emit("media.level", {
                    "call_id": self.call.call_id,
                    "mic": round(self.peer.sent.take_peak(), 3),
                    "remote": round(self.peer.received.take_peak(), 3),
                })

    async def _release(self) -> None:
        if self._levels is not None:
            self._levels.cancel()
        for timer in self._timers:
            timer.cancel()
        if self._create_task is not None and not self._create_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._create_task), 5)
        if self.peer is not None:
            await self.peer.close()

    # -------------------------------------------------------------- commands
    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        if self.peer is not None:
            self.peer.muted = muted
        self.phone.emit("media.muted" if muted else "media.unmuted", {"call_id": self.call.call_id})
        if self.call.call_id and self.call.state in (m.State.CONNECTING, m.State.CONNECTED):
            asyncio.ensure_future(self._quietly(self.phone.client.signal(
                self.call.call_id, "mute" if muted else "unmute", {"audio": True}
            )))

    def on_signal(self, event: p.CallSignal) -> None:
        kind = event.kind
        if kind == "prepare" and self.call.role == m.Role.CALLER:
            sdp = event.data.get("sdp")
            if isinstance(sdp, str) and self.peer is not None and not self.peer.has_answer:
                self.prepared_by = str(event.data.get("device"))
                asyncio.ensure_future(self._early_answer(sdp))
        elif kind == "reoffer" and self.call.role == m.Role.CALLEE:
            sdp = event.data.get("sdp")
            if isinstance(sdp, str):
                asyncio.ensure_future(self._answer_reoffer(sdp))
        elif kind == "reanswer" and self.call.role == m.Role.CALLER:
            sdp = event.data.get("sdp")
            if isinstance(sdp, str) and self.peer is not None:
                asyncio.ensure_future(self.peer.apply_answer(sdp))
        elif kind in ("mute", "unmute"):
            self.peer_muted = kind == "mute"
            self.phone.emit(f"peer.{kind}d", {"call_id": self.call.call_id})
        elif kind == "video":
            state = event.data.get("state")
            if state in ("paused", "resumed", "enabled", "disabled"):
                self.peer_video = state
                self.phone.emit(f"peer.video.{state}", {"call_id": self.call.call_id})

    # ------------------------------------------------------------------ video
    def _signal_video(self, state: str) -> None:
        self.phone.emit(f"media.video.{state}", {"call_id": self.call.call_id})
        if self.call.call_id:
            asyncio.ensure_future(self._quietly(
                self.phone.client.signal(self.call.call_id, "video", {"state": state})
            ))

    def video_command(self, what: str) -> dict[str, Any]:
        """pause | resume | on | off, mid-call."""
        from callctl.media.audio import DeviceError, MediaError

        peer = self.peer
        if peer is None or self.call.state not in (m.State.CONNECTING, m.State.CONNECTED):
            return {"ok": False, "error": "video can only change during a call"}
        has_video = peer.video.source is not None
        if what in ("pause", "resume"):
            if not has_video:
                return {"ok": False, "error": "no video in this call: use 'video on'"}
            peer.set_video_sending(what == "resume")
            self._signal_video("paused" if what == "pause" else "resumed")
        elif what == "on":
            if has_video:
                return {"ok": False, "error": "video is already on"}
            try:
                source = self._video_source()
            except (MediaError, DeviceError) as exc:
                return {"ok": False, "error": str(exc)}
            peer.video.sending = True
            peer.set_video_source(source)
            self._signal_video("enabled")
        elif what == "off":
            if not has_video:
                return {"ok": False, "error": "video is already off"}
            peer.set_video_source(None)
            self._signal_video("disabled")
        else:
            return {"ok": False, "error": "video takes pause, resume, on or off"}
        return {"ok": True, "call": self.status()}

    async def _early_answer(self, sdp: str) -> None:
        try:
            await self.peer.apply_answer(sdp)
        except Exception as exc:  # a bad prepared answer: fall back to the real one
            log.info("prepared answer not applied: %s", exc)

    async def _answer_reoffer(self, offer_sdp: str) -> None:
        old, self.peer = self.peer, self._new_peer()
        if old is not None:
            await old.close()
        sdp = await self.peer.create_answer(offer_sdp)
        if self.call.accepted:
            self.peer.start()
            self.peer.muted = self.muted
        assert self.call.call_id is not None
        await self.phone.client.signal(self.call.call_id, "reanswer", {"sdp": sdp})

    def status(self) -> dict[str, Any]:
        c = self.call
        out: dict[str, Any] = {
            "call_id": c.call_id,
            "peer": c.peer,
            "role": c.role.value,
            "state": c.state.value,
            "media": c.media.value,
            "muted": self.muted,
            "peer_muted": self.peer_muted,
        }
        if c.connected_at is not None and c.state == m.State.CONNECTED:
            out["duration_s"] = round(time.monotonic() - c.connected_at, 1)
        if self.peer is not None:
            out["frames_sent"] = self.peer.sent.frames
            out["frames_received"] = self.peer.received.frames
            out["video"] = (
                "off" if self.peer.video.source is None
                else "sending" if self.peer.video.sending else "paused"
            )
            out["video_frames_sent"] = self.peer.video_sent.frames
            out["video_frames_received"] = self.peer.video_received.frames
            if self.peer_video is not None:
                out["peer_video"] = self.peer_video
            out["level_out"] = round(self.peer.sent.level, 3)
            out["level_in"] = round(self.peer.received.level, 3)
            out["codec"] = "opus/48000"
        if c.reason is not None:
            out["reason"] = c.reason.value
        return out

    def outcome(self) -> Outcome:
        c = self.call
        assert c.reason is not None and c.source is not None
        return Outcome(c.reason, c.source, c.call_id, c.duration_s)


@dataclass
class Phone:
    """One identity online: the event stream, incoming-call policy, the current call."""

    client: SignalingClient
    media: MediaOptions
    policy: CallPolicy = field(default_factory=CallPolicy)
    user: str = ""
    device: str = "default"
    ice_servers: list[p.IceServer] = field(default_factory=list)
    listeners: list[Emit] = field(default_factory=list)
    session: CallSession | None = None
    sessions_by_id: dict[str, CallSession] = field(default_factory=dict)
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    online: bool = False
    fatal: SignalingError | None = None
    #: Set when the stream failed for good (auth refused, device taken over).
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    call_ended: asyncio.Event = field(default_factory=asyncio.Event)
    calls_done: list[Outcome] = field(default_factory=list)
    _stream_task: asyncio.Task[None] | None = None
    _offline_timer: asyncio.TimerHandle | None = None
    #: Events for call ids not known yet: the stream can beat the POST's response.
    _early: dict[str, list[p.Event]] = field(default_factory=dict)

    def adopt(self, call_id: str, session: CallSession) -> None:
        """Bind a call id to its session and hand it what already arrived for it."""
        self.sessions_by_id[call_id] = session
        for event in self._early.pop(call_id, []):
            self._on_event(event)

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        record = {"v": 1, "ts": round(time.time(), 3), "event": event, **fields}
        for listener in list(self.listeners):
            try:
                listener(event, record)
            except Exception:
                log.exception("event listener failed")

    # ---------------------------------------------------------------- stream
    def start(self) -> None:
        self._stream_task = asyncio.ensure_future(self._stream())

    async def _stream(self) -> None:
        try:
            async for item in self.client.events():
                if isinstance(item, Disconnected):
                    self._went_offline(item)
                elif isinstance(item, Received):
                    self._on_event(item.event)
        except (AuthFailed, Conflict) as exc:
            self.fatal = exc
            self.emit("error", {"message": exc.message})
            if self.session is not None:
                reason = p.EndReason.AUTH_FAILED if isinstance(exc, AuthFailed) else p.EndReason.SERVER_UNREACHABLE
                self.session.feed(m.Failed(reason))
            self.stopped.set()

    def _went_offline(self, item: Disconnected) -> None:
        if self.online or not self.registered.is_set():
            self.emit("server.lost", {"message": item.error.message, "retry_in_s": round(item.retry_in, 2)})
        self.online = False
        s = self.session
        if s is not None and self._offline_timer is None and s.call.state in (
            m.State.OUTGOING, m.State.INCOMING, m.State.CONNECTING
        ):
            self._offline_timer = asyncio.get_running_loop().call_later(
                SIGNALING_GRACE_S, self._signaling_gone
            )

    def _signaling_gone(self) -> None:
        self._offline_timer = None
        s = self.session
        if not self.online and s is not None and s.call.state != m.State.CONNECTED:
            s.feed(m.Failed(p.EndReason.SERVER_UNREACHABLE))

    def _on_event(self, event: p.Event) -> None:
        if isinstance(event, p.Registered):
            was_registered = self.registered.is_set()
            self.online = True
            self.user = event.user
            self.ice_servers = list(event.ice_servers)
            if self._offline_timer is not None:
                self._offline_timer.cancel()
                self._offline_timer = None
            self.emit(
                "server.restored" if was_registered else "registered",
                {"user": event.user, "service": event.service, "device": event.device,
                 "server": self.client.server},
            )
            self.registered.set()
            return
        if isinstance(event, p.CallIncoming):
            self._on_ring(event)
            return
        call_id = getattr(event, "call_id", None)
        s = self.sessions_by_id.get(call_id) if call_id else None
        if s is None and call_id is not None:
            if len(self._early) >= 16:
                self._early.pop(next(iter(self._early)))
            self._early.setdefault(call_id, []).append(event)
            return
        if s is None or s.call.state == m.State.ENDED:
            return
        if isinstance(event, p.CallRinging):
            s.feed(m.Ringing())
        elif isinstance(event, p.CallAnswered):
            s.feed(m.Answered(event.sdp))
        elif isinstance(event, p.CallEnded):
            s.feed(m.RemoteEnded(event.reason, by_server=event.by == p.Party.SERVER))
        elif isinstance(event, p.CallSignal):
            s.on_signal(event)

    def _on_ring(self, ring: p.CallIncoming) -> None:
        if ring.call_id in self.sessions_by_id or ring.ring_expires_at < time.time():
            return  # a replayed ring we know, or one that has expired meanwhile
        allow = self.policy.allow
        if allow is not None and ring.caller not in allow:
            self.emit("call.refused", {"call_id": ring.call_id, "peer": ring.caller,
                                       "media": ring.media.value})
            asyncio.ensure_future(self._decline_quietly(ring.call_id, busy=False))
            return
        if self.session is not None and self.session.call.state != m.State.ENDED:
            self.emit("call.missed", {"call_id": ring.call_id, "peer": ring.caller,
                                      "media": ring.media.value, "reason": "busy"})
            asyncio.ensure_future(self._decline_quietly(ring.call_id, busy=True))
            return
        session = self._new_session(m.Role.CALLEE)
        self.sessions_by_id[ring.call_id] = session
        session.feed(m.Ring(ring.call_id, ring.caller, ring.media, ring.sdp))
        if self.policy.auto_accept:
            session.feed(m.Accept())
        elif self.policy.accept_after is not None:
            asyncio.get_running_loop().call_later(
                self.policy.accept_after, lambda: session.feed(m.Accept())
            )

    async def _decline_quietly(self, call_id: str, busy: bool) -> None:
        with contextlib.suppress(SignalingError):
            await self.client.decline(call_id, busy)

    def _new_session(self, role: m.Role) -> CallSession:
        session = CallSession(self, role, self.media)
        self.session = session
        self.call_ended.clear()
        asyncio.ensure_future(self._watch(session))
        return session

    async def _watch(self, session: CallSession) -> None:
        await session.ended.wait()
        self.calls_done.append(session.outcome())
        if self.session is session:
            self.session = None
        self.call_ended.set()

    # -------------------------------------------------------------- commands
    def dial(
        self, peer: str, media: p.Media, *, ring_timeout: float | None,
        hangup_after: float | None, max_duration: float | None,
    ) -> CallSession:
        session = self._new_session(m.Role.CALLER)
        session.ring_timeout = ring_timeout
        session.hangup_after = hangup_after
        session.max_duration = max_duration
        session.feed(m.Dial(peer, media))
        return session

    def command(self, cmd: str, call_id: str | None = None, arg: str | None = None) -> dict[str, Any]:
        """The control socket's commands; returns the JSON answer."""
        s = self.session
        if cmd == "status":
            return {"ok": True, "user": self.user, "device": self.device, "online": self.online,
                    "call": s.status() if s is not None else None}
        if s is None or s.call.state == m.State.ENDED:
            return {"ok": False, "error": "no call in progress"}
        if call_id is not None and s.call.call_id != call_id:
            return {"ok": False, "error": f"no call {call_id} here (the current call is {s.call.call_id})"}
        event: m.CallEvent
        if cmd == "accept":
            event = m.Accept()
            if arg == "video-paused":
                s.media_opts.video_paused = True
                if s.peer is not None:
                    s.peer.video.sending = False
        elif cmd == "decline":
            event = m.Decline()
        elif cmd == "hangup":
            event = m.Hangup()
        elif cmd in ("mute", "unmute"):
            s.set_muted(cmd == "mute")
            return {"ok": True, "call": s.status()}
        elif cmd == "video":
            return s.video_command(arg or "")
        else:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        if not s.call.can(type(event)):
            return {"ok": False, "error": f"cannot {cmd} a call that is {s.call.state.value}"}
        s.feed(event)
        return {"ok": True, "call": s.status()}

    async def close(self) -> None:
        if self.session is not None and self.session.call.state != m.State.ENDED:
            self.session.feed(m.Hangup())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.session.ended.wait(), 6)
        if self._stream_task is not None:
            self._stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_task
        await self.client.aclose()

"""One call on this device: executes the machine's actions, feeds it what happens.

The session owns the call's peer connection, timers and tasks.  It decides
nothing: what to do next comes from ``machine.Call.handle``, and the reason
of a failure from ``reasons.reason_for``.  Everything a user sees is an event
emitted through the phone (see docs/EVENTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from callctl.engine import machine as m
from callctl.engine.events import VIDEO_STATES, Ev
from callctl.engine.reasons import reason_for
from callctl.engine.tasks import Tasks
from callctl.media import assembly
from callctl.media.assembly import MediaOptions
from callctl.media.errors import BadSdp, DeviceError, MediaError
from callctl.media.sdp import check_negotiable
from callctl.media.messages import Messenger
from callctl.media.peer import MediaCallbacks, PeerConnection
from callctl.media.ring import RingPlayer
from callctl.signaling import protocol as p
from callctl.signaling.client import Conflict, RateLimited, SignalingClient, SignalingError

log = logging.getLogger("callctl.engine")

#: ICE + DTLS must complete within this after answer/accept (``--connect-timeout``).
CONNECT_TIMEOUT_S = 15.0
#: After the peer closes the media path, how long its signalled hangup may take to arrive.
PEER_CLOSE_GRACE_S = 1.0
#: How often ``media.level`` events are emitted during a call.
LEVEL_INTERVAL_S = 0.5
#: How often a connected call reports ``media.stats``.
STATS_INTERVAL_S = 5.0
#: A signaling request that takes longer than this has failed.
REQUEST_TIMEOUT_S = 5.0
#: A new call the server refuses for now (429: this user's calls a minute) is tried again after
#: its Retry-After, for at most this long in all; past that it ends ``server_unreachable``.
RATE_LIMIT_WAIT_S = 10.0
#: Our own ring deadline runs this much past the server's (whose timeout normally decides).
RING_GRACE_S = 3.0
#: Reconnecting: a signaling request gives up after this long (the next attempt retries it).
RECONNECT_REQUEST_TIMEOUT_S = 2.0
#: Reconnecting: the callee asks the caller for a re-offer this many times at most.
RECONNECT_REQUEST_TRIES = 5
#: Failures that are a bad day, not a bug: logged without a traceback.
EXPECTED = (SignalingError, DeviceError, MediaError, BadSdp, TimeoutError)


class PhoneSide(Protocol):
    """What a session needs of the phone it belongs to (``engine/phone.py`` is one)."""

    client: SignalingClient
    device: str
    #: Seconds a broken media path may take to come back before the call ends.
    reconnect_timeout: float
    #: Seconds ICE and DTLS may take after answer/accept before the call ends.
    connect_timeout: float
    #: The event stream is up (registered, not lost since).
    online: bool

    @property
    def ice_servers(self) -> list[p.IceServer]: ...

    def emit(self, event: Ev, fields: dict[str, Any]) -> None: ...

    def adopt(self, call_id: str, session: CallSession) -> None: ...

    def refresh_signaling(self) -> None: ...


@dataclass
class CallLimits:
    """Timers a caller asks for."""

    ring_timeout: float | None = None
    hangup_after: float | None = None
    max_duration: float | None = None


class CallSession:
    """One call on this device, from dial or ring to its end."""

    def __init__(self, phone: PhoneSide, role: m.Role, media: MediaOptions,
                 limits: CallLimits | None = None) -> None:
        self.phone = phone
        self.call = m.Call(role)
        self.media_opts = media
        self.limits = limits or CallLimits()
        self.peer: PeerConnection | None = None
        self.answer_sdp: str | None = None
        self.ended = asyncio.Event()
        #: The user has been told of this call (``call.incoming`` / ``call.outgoing``), or it ended.
        self.announced = asyncio.Event()
        self.muted = False
        self.ending = False
        self.accepted_at: float | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._queue: asyncio.Queue[m.CallEvent | None] = asyncio.Queue()  # None: look at _failure
        self._tasks = Tasks(on_error=self._task_failed, expected=EXPECTED)
        self._create_task: asyncio.Task[Any] | None = None
        self._created_id: str | None = None
        #: Re-offers and re-answers one at a time (each restarts the peer connection).
        self._negotiating = asyncio.Lock()
        #: The re-offer attempt whose offer the current peer connection holds.
        self._offered_attempt = 0
        #: Callee: the newest re-offer to answer (an older one still waiting is skipped).
        self._newest_reoffer = 0
        #: Gathering problems already reported in this call (each is told once).
        self._warned: set[str] = set()
        #: A failure goes before anything already queued (an Accept queued behind a bad offer).
        self._failure: m.Failed | None = None
        #: The ring or ringback playing on the speaker while the call rings.
        self._ring: RingPlayer | None = None
        #: The call's app messages (its data channel), across every peer connection it has.
        self.messenger = Messenger(self._on_message)
        #: We hold the call (``callctl hold``); the peer's hold is ``call.peer_held``.
        self.held = False
        self._hold_player: RingPlayer | None = None
        #: Our video was being sent when the hold began: it comes back after.
        self._video_before_hold: bool | None = None
        self._runner = asyncio.ensure_future(self._run())  # awaited through ``ended``

    # ----------------------------------------------------------- event input
    def feed(self, event: m.CallEvent) -> None:
        """Queue an event; events are handled one at a time, in order."""
        if isinstance(event, m.RemoteEnded | m.Hangup | m.Decline | m.Failed | m.MediaLost):
            self.ending = True  # the end is queued: a new ring need not be declined as busy
        self._queue.put_nowait(event)

    def _emit(self, event: Ev, **fields: Any) -> None:
        self.phone.emit(event, {"call_id": self.call.call_id, **fields})

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro, f"call-{name}")

    def _task_failed(self, error: BaseException) -> None:
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        """Something raised: end the call with the reason that error stands for."""
        if self.call.state == m.State.ENDED:
            return
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        self.phone.emit(Ev.ERROR, {"call_id": self.call.call_id, "message": str(message)})
        if self._failure is None:
            self._failure = m.Failed(reason_for(error))
            self._queue.put_nowait(None)

    async def _run(self) -> None:
        try:
            while self.call.state != m.State.ENDED:
                event: m.CallEvent | None = self._failure
                self._failure = None
                if event is None:
                    event = await self._queue.get()
                    if event is None:
                        continue  # woken for a failure: it is taken at the top
                try:
                    actions = self.call.handle(event, time.monotonic())
                except m.ProtocolError as exc:
                    log.debug("ignored: %s", exc)
                    continue
                self._update_ring()  # an answered call stops ringing before its media starts
                for action in actions:
                    try:
                        await self._do(action)
                    except EXPECTED as exc:
                        log.info("action %s failed: %s", type(action).__name__, exc)
                        self._fail(exc)
                    except Exception as exc:  # a bug: it must end the call, not hang it
                        log.exception("action %s failed", type(action).__name__)
                        self._fail(exc)
                    if self._failure is not None and self.call.state != m.State.ENDED:
                        break  # the rest of this step is moot: the failure is handled next
                self._update_ring()
        finally:
            if self._ring is not None:
                self._ring.stop()
            if self._hold_player is not None:
                self._hold_player.stop()
            self.messenger.close()
            await self._tasks.cancel_all()
            self.announced.set()
            self.ended.set()

    # --------------------------------------------------------------- actions
    async def _do(self, action: m.Action) -> None:
        c = self.call
        if isinstance(action, m.Notify):
            fields = action.fields
            if action.event in (Ev.CALL_CONNECTED, Ev.CALL_RECONNECTED) and self.peer is not None:
                fields = {**fields, "route": self.peer.route()}
            if action.event == Ev.CALL_ENDED and self.peer is not None:
                summary = self.peer.call_stats.summary()
                if summary:
                    fields = {**fields, "stats": summary}
            self.phone.emit(action.event, fields)
            if action.event in (Ev.CALL_INCOMING, Ev.CALL_OUTGOING):
                self.announced.set()
            elif action.event in (Ev.PEER_HELD, Ev.PEER_UNHELD):
                self._apply_hold()
        elif isinstance(action, m.CreateCall):
            self._create_task = self._spawn(self._create(action), "create")
        elif isinstance(action, m.ApplyAnswer):
            await self._peer().apply_answer(action.sdp)
            self._warn(self._peer().direction_problems())
        elif isinstance(action, m.ApplyEarlyAnswer):
            self._spawn(self._early_answer(action.sdp), "early-answer")
        elif isinstance(action, m.Reoffer):
            if c.state == m.State.RECONNECTING:
                self._spawn(self._reoffer_quietly(action.attempt), "reoffer")
            else:
                await self._reoffer(action.attempt)
        elif isinstance(action, m.AnswerReoffer):
            self._newest_reoffer = max(self._newest_reoffer, action.attempt)
            self._spawn(self._answer_reoffer(action.sdp, action.start, action.attempt),
                        "answer-reoffer")
        elif isinstance(action, m.ApplyReanswer):
            self._spawn(self._apply_reanswer(action.sdp, action.attempt), "reanswer")
        elif isinstance(action, m.Prepare):
            await self._prepare(action.sdp)
        elif isinstance(action, m.SendAnswer):
            self._spawn(self._send_answer(), "answer")
        elif isinstance(action, m.ArmConnectTimeout):
            self._later_call(self.phone.connect_timeout, self._connect_timed_out)
        elif isinstance(action, m.ArmCallTimers):
            if self.limits.hangup_after is not None:
                self._later(self.limits.hangup_after, m.TalkTimeUp())
            if self.limits.max_duration is not None:
                self._later(self.limits.max_duration, m.MaxDurationReached())
        elif isinstance(action, m.ArmReconnectDeadline):
            timeout = self.phone.reconnect_timeout
            self._later(timeout, m.ReconnectTimeout(action.epoch, timeout))
        elif isinstance(action, m.ArmReconnectRetry):
            self._later(m.RETRY_S, m.ReconnectRetry(action.attempt))
        elif isinstance(action, m.RefreshSignaling):
            self.phone.refresh_signaling()
        elif isinstance(action, m.RequestReconnect):
            self._spawn(self._request_reconnect(action.attempt), "request-reconnect")
        elif isinstance(action, m.ArmRingDeadline):
            self._later(action.seconds + RING_GRACE_S, m.RingExpired())
        elif isinstance(action, m.SendDecline):
            assert c.call_id is not None
            await self._quietly(self.phone.client.decline(c.call_id, action.busy, action.no_answer))
        elif isinstance(action, m.SendHangup):
            await self._send_hangup(action.reason)
        elif isinstance(action, m.StartMedia):
            self._start_media()
        elif isinstance(action, m.Release):
            await self._release()

    def _peer(self) -> PeerConnection:
        assert self.peer is not None, "no peer connection yet"
        return self.peer

    def _new_peer(self) -> PeerConnection:
        call_id = lambda: self.call.call_id  # noqa: E731  # the id may arrive after the peer
        peer = assembly.build_peer(
            self.media_opts, self.phone.ice_servers,
            video_call=self.call.media == p.Media.VIDEO, messenger=self.messenger,
            callbacks=MediaCallbacks(
                on_device=lambda event, fields: self._emit(Ev(event), **fields),
                on_first_video=lambda w, h: self._emit(Ev.VIDEO_FLOWING, width=w, height=h),
                on_up=lambda: self.feed(m.MediaUp()),
                on_lost=self._media_lost,
                on_first_frame=lambda: self.phone.emit(
                    Ev.MEDIA_FLOWING, {"call_id": call_id(), "peer": self.call.peer}),
            ),
        )
        peer.on_dtmf = lambda digit: self._emit(Ev.DTMF, peer=self.call.peer, digit=digit)
        return peer

    def _on_message(self, kind: str, body: Any) -> None:
        self._emit(Ev.MESSAGE, peer=self.call.peer, type=kind, body=body)

    def _media_lost(self, why: str) -> None:
        log.info("media lost: %s", why)
        if self.call.state == m.State.CONNECTING and not why.startswith("media path closed"):
            self._emit(Ev.ERROR, message=why)  # the call ends next: say what failed
        if self.peer is not None and self.peer.closed_by_peer:
            # a peer that hangs up may close the media path a moment before its
            # hangup reaches us through the server: let the hangup win.  One that
            # reconnects closes it too: then a new connection has replaced it meanwhile
            generation = self.peer.generation
            self._later_call(PEER_CLOSE_GRACE_S, lambda: self._still_lost(generation))
            return
        self.feed(m.MediaLost())

    def _still_lost(self, generation: int) -> None:
        if self.peer is not None and self.peer.generation == generation:
            self.feed(m.MediaLost(closed_by_peer=True))

    async def _post_call(self, action: m.CreateCall, sdp: str) -> p.CallInfo:
        """POST the call; a rate limit is waited out when the server says soon (a script calling in a loop)."""
        waited = 0.0
        while True:
            try:
                return await self.phone.client.create_call(
                    action.peer, sdp, action.media, ring_timeout=self.limits.ring_timeout
                )
            except RateLimited as exc:
                if waited + exc.retry_after > RATE_LIMIT_WAIT_S:
                    raise
                log.warning("the server takes no more calls from this user for now: calling again in %g s",
                            exc.retry_after)
                await asyncio.sleep(exc.retry_after)
                waited += exc.retry_after
                if self.call.state == m.State.ENDED:  # hung up meanwhile: nothing is posted
                    raise

    async def _create(self, action: m.CreateCall) -> None:
        try:
            self.peer = self._new_peer()
            sdp = await self.peer.create_offer()
            self._check_gathering(self.peer)
            info = await self._post_call(action, sdp)
        except (SignalingError, DeviceError, MediaError) as exc:
            self._fail(exc)
            return
        self._created_id = info.call_id  # for a hangup that came while the request was in flight
        # the ring's length by the server's own clock (both times are its): no clock skew
        self.feed(m.Created(info.call_id, ring_s=max(0.0, info.ring_expires_at - info.created_at)))
        self.phone.adopt(info.call_id, self)
        if info.state == p.CallState.ENDED and info.reason is not None:
            self.feed(m.RemoteEnded(info.reason, by_server=info.ended_by == p.Party.SERVER))

    async def _early_answer(self, sdp: str) -> None:
        try:
            await self._peer().apply_answer(sdp)
        except Exception as exc:  # a bad prepared answer: fall back to the real one
            log.info("prepared answer not applied: %s", exc)

    async def _restarted_peer(self) -> PeerConnection:
        """The call's peer connection made afresh on the same endpoints (or a first one)."""
        if self.peer is None:
            self.peer = self._new_peer()
        else:
            await self.peer.restart(self.phone.ice_servers)
        return self.peer

    async def _reoffer(self, attempt: int) -> None:
        assert self.call.call_id is not None
        async with self._negotiating:
            if attempt < self.call.attempt:
                return  # a newer attempt is on its way
            peer = await self._restarted_peer()
            sdp = await peer.create_offer()
            self._offered_attempt = attempt
            self._check_gathering(peer)
        timeout = RECONNECT_REQUEST_TIMEOUT_S if self.call.state == m.State.RECONNECTING else REQUEST_TIMEOUT_S
        await asyncio.wait_for(self.phone.client.signal(
            self.call.call_id, "reoffer", {"sdp": sdp, "attempt": attempt}), timeout)
        log.debug("re-offer %d sent", attempt)

    async def _reoffer_quietly(self, attempt: int) -> None:
        """Reconnecting: an attempt that fails (no network yet) is retried, not an end."""
        try:
            await self._reoffer(attempt)
        except EXPECTED as exc:
            log.info("reconnect attempt %d: %s", attempt, exc)

    async def _request_reconnect(self, attempt: int) -> None:
        """Ask the caller for a fresh re-offer, again until it goes through (the network is shaky).

        Not while our event stream is down: the request is made again when it is back
        (``SignalingBack``), and one held up by the outage would arrive late.
        """
        assert self.call.call_id is not None
        for _ in range(RECONNECT_REQUEST_TRIES):
            if self.call.state != m.State.RECONNECTING or not self.phone.online:
                return
            try:
                await asyncio.wait_for(self.phone.client.signal(
                    self.call.call_id, "reconnect", {"attempt": attempt}), RECONNECT_REQUEST_TIMEOUT_S / 2)
                log.debug("reconnect request sent (we answered %d)", attempt)
                return
            except EXPECTED as exc:
                log.info("reconnect request not sent: %s", exc)
                await asyncio.sleep(0.2)

    async def _apply_reanswer(self, sdp: str, attempt: int) -> None:
        async with self._negotiating:
            if attempt != self._offered_attempt:
                log.debug("re-answer %d dropped: we offer %d now", attempt, self._offered_attempt)
                return  # the answer to an offer we have replaced
            log.debug("re-answer %d applied", attempt)
            await self._peer().apply_answer(sdp)

    def _check_gathering(self, peer: PeerConnection) -> None:
        """A STUN/TURN server that refused us or never answered: one warning, never silence."""
        self._warn(peer.gathering_problems())

    def _warn(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self._warned:
                self._warned.add(problem)
                self._emit(Ev.WARNING, message=problem)

    def _connect_timed_out(self) -> None:
        self.feed(m.ConnectTimeout(self.phone.connect_timeout, self._why_no_media()))

    def _why_no_media(self) -> str:
        if self.peer is None:
            return ""
        if self.media_opts.relay_only and not self.phone.ice_servers:
            return "--relay-only needs a TURN server, and none is configured"
        if not any(u.startswith("turn") for s in self.phone.ice_servers for u in s.urls):
            return ("no relay candidate was gathered (no TURN server configured); "
                    "between two NATs a TURN server is needed (see docs/NETWORK.md)")
        problems = self.peer.gathering_problems()
        if problems:
            return problems[0]
        return "no candidate pair worked, not even through the TURN relay"

    async def _answer_reoffer(self, offer_sdp: str, start: bool, attempt: int = 0) -> None:
        assert self.call.call_id is not None
        try:
            await check_negotiable(offer_sdp, "re-offer")
        except BadSdp as exc:  # refused, and the media we have goes on
            self.phone.emit(Ev.ERROR, {"call_id": self.call.call_id, "message": str(exc)})
            await self._quietly(self.phone.client.signal(
                self.call.call_id, "reoffer-refused", {"reason": str(exc)}))
            return
        async with self._negotiating:
            if attempt < self._newest_reoffer:
                log.debug("re-offer %d skipped: %d came after it", attempt, self._newest_reoffer)
                return
            log.debug("answering re-offer %d", attempt)
            peer = await self._restarted_peer()
            sdp = await peer.create_answer(offer_sdp)
            self._check_gathering(peer)
            if start:
                peer.start()
                self._apply_hold()
        assert self.call.call_id is not None
        reconnecting = self.call.state == m.State.RECONNECTING
        try:
            await asyncio.wait_for(self.phone.client.signal(
                self.call.call_id, "reanswer", {"sdp": sdp, "attempt": attempt}),
                RECONNECT_REQUEST_TIMEOUT_S if reconnecting else REQUEST_TIMEOUT_S)
            log.debug("re-answer %d sent", attempt)
        except EXPECTED as exc:
            if not reconnecting:
                raise
            log.info("re-answer %d not sent: %s", attempt, exc)  # the caller's next attempt retries

    async def _prepare(self, offer_sdp: str) -> None:
        """Callee preparation: answer now, media held, so accepting is instant."""
        self.peer = self._new_peer()
        self.answer_sdp = await self.peer.create_answer(offer_sdp)
        self._check_gathering(self.peer)
        self._warn(self.peer.direction_problems())
        assert self.call.call_id is not None
        await self._quietly(self.phone.client.signal(
            self.call.call_id, "prepare", {"sdp": self.answer_sdp, "device": self.phone.device}
        ))

    async def _send_answer(self) -> None:
        c = self.call
        assert c.call_id is not None and self.answer_sdp is not None
        self.accepted_at = time.monotonic()
        try:
            await self.phone.client.answer(c.call_id, self.answer_sdp)
        except Conflict as exc:
            info = None
            if exc.code != p.ErrorCode.ALREADY_ANSWERED.value:
                with contextlib.suppress(SignalingError):
                    info = await self.phone.client.get_call(c.call_id)
            self.feed(m.AnswerRefused(
                already_answered=exc.code == p.ErrorCode.ALREADY_ANSWERED.value,
                reason=info.reason if info is not None else None,
                by_server=info is not None and info.ended_by == p.Party.SERVER,
            ))
            return
        except SignalingError as exc:
            self._fail(exc)
            return
        self.feed(m.AnswerSent())

    async def _send_hangup(self, reason: p.EndReason) -> None:
        if self.call.call_id is None and self._create_task is not None:
            # hung up while the create request was in flight: wait for the id
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._create_task), REQUEST_TIMEOUT_S)
        call_id = self.call.call_id or self._created_id  # the call has ended before it learnt its id
        if call_id is not None:
            await self._quietly(self.phone.client.hangup(call_id, reason))

    async def _quietly(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """A request whose failure does not change the call (it ends anyway, or is advisory)."""
        try:
            return await asyncio.wait_for(coro, REQUEST_TIMEOUT_S)
        except (TimeoutError, SignalingError) as exc:
            log.info("signaling request failed: %s", exc)
            return None

    def _signal(self, kind: str, data: dict[str, Any]) -> None:
        if self.call.call_id:
            self._spawn(self._quietly(self.phone.client.signal(self.call.call_id, kind, data)),
                        f"signal-{kind}")

    # ----------------------------------------------------------------- media
    def _update_ring(self) -> None:
        """Ring while the call rings here, ringback while it rings there; silence otherwise."""
        c = self.call
        wanted = c.state == m.State.INCOMING or (c.state == m.State.OUTGOING and c.rang)
        if wanted and self._ring is None and self.peer is not None and self.peer.sinks:
            caller = c.role == m.Role.CALLER
            self._ring = RingPlayer(self.media_opts.ring_spec(ringback=caller), self.peer.sinks[0],
                                    ringback=caller)
            self._ring.start()
        elif not wanted and self._ring is not None:
            self._ring.stop()
            self._ring = None

    def stop_ringing_after(self, seconds: float) -> None:
        """Callee: decline as ``no_answer`` if nobody answered within ``seconds`` (a no-op after)."""
        def expire() -> None:
            if self.call.state == m.State.INCOMING:
                self.feed(m.Decline(no_answer=True))
        self._later_call(seconds, expire)

    def _start_media(self) -> None:
        if self.peer is not None:
            self.peer.start()
            self._apply_hold()
            if self.peer.video.source is not None and not self.peer.video.sending:
                self.video_changed("paused")  # PlanetKit's initial video state "paused": the peer is told
        self._spawn(self._report_levels(), "levels")
        self._spawn(self._report_stats(), "stats")

    async def _report_levels(self) -> None:
        """``media.level`` twice a second: peak levels (0..1) of our mic and of the peer."""
        while True:
            await asyncio.sleep(LEVEL_INTERVAL_S)
            if self.peer is not None and self.call.state in (m.State.CONNECTED, m.State.RECONNECTING):
                self._emit(Ev.MEDIA_LEVEL, mic=round(self.peer.sent.take_peak(), 3),
                           remote=round(self.peer.received.take_peak(), 3))

    async def _report_stats(self) -> None:
        """``media.stats`` every STATS_INTERVAL_S while connected (docs/EVENTS.md)."""
        if self.peer is not None:  # where the first interval's rates count from
            await self.peer.call_stats.sample()
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.peer is not None and self.call.state in (m.State.CONNECTED, m.State.RECONNECTING):
                sample = await self.peer.call_stats.sample()
                if sample:
                    self._emit(Ev.MEDIA_STATS, **sample)

    def _later(self, delay: float, event: m.CallEvent) -> None:
        self._later_call(delay, lambda: self.feed(event))

    def _later_call(self, delay: float, callback: Callable[[], None]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, callback))

    async def _release(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._create_task is not None and not self._create_task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._create_task), REQUEST_TIMEOUT_S)
        if self.peer is not None:
            if self.call.connected_at is not None:  # the last figures, for the call's summary
                await self.peer.call_stats.sample()
            await self.peer.close()

    # -------------------------------------------------------------- commands
    @property
    def in_call(self) -> bool:
        return self.call.state in (m.State.CONNECTING, m.State.CONNECTED, m.State.RECONNECTING)

    def set_muted(self, muted: bool) -> None:
        """Mute or unmute; the same again is nothing new (no second event, no second signal)."""
        if muted == self.muted:
            return
        self.muted = muted
        if self.peer is not None:
            self.peer.muted = muted or self.on_hold
        self._emit(Ev.MEDIA_MUTED if muted else Ev.MEDIA_UNMUTED)
        if self.in_call:
            self._signal("mute" if muted else "unmute", {"audio": True})

    @property
    def on_hold(self) -> bool:
        """Held by us or by the peer: no media either way."""
        return self.held or self.call.peer_held

    def set_held(self, held: bool) -> None:
        """Hold or take off hold (media stops both ways; the call, its path and its timers go on)."""
        if held == self.held:
            return
        self.held = held
        self._apply_hold()
        self._emit(Ev.MEDIA_HELD if held else Ev.MEDIA_UNHELD)
        if self.in_call:
            self._signal("hold" if held else "unhold", {})

    def _apply_hold(self) -> None:
        """Our mic and video stop and the peer's audio is not played while on hold (silence
        still flows: the path and its watchdogs stay up); held by the peer, the hold sound plays."""
        peer = self.peer
        if peer is None or not peer.playing:
            return
        on_hold = self.on_hold
        peer.on_hold = on_hold
        peer.muted = self.muted or on_hold
        if peer.video.source is not None:
            if on_hold and self._video_before_hold is None:
                self._video_before_hold = peer.video.sending
                peer.set_video_sending(False)
            elif not on_hold and self._video_before_hold is not None:
                peer.set_video_sending(self._video_before_hold)
                self._video_before_hold = None
        wanted = self.call.peer_held and self.call.state != m.State.ENDED
        if wanted and self._hold_player is None and peer.sinks:
            self._hold_player = RingPlayer(self.media_opts.hold_spec(), peer.sinks[0], ringback=False, hold=True)
            self._hold_player.start()
            peer.hold_sink = peer.sinks[0] if self._hold_player.playing else None
        elif not wanted and self._hold_player is not None:
            self._hold_player.stop()
            self._hold_player = None
            peer.hold_sink = None

    async def switch(self, kind: str, spec: str) -> str:
        """Send from, play to or film with another device mid-call (``kind``: audio_in, audio_out,
        video_in): the device behind the same track changes, nothing is renegotiated.  The new
        device's name; MediaError/DeviceError (the call goes on as it was) if it cannot be opened."""
        peer = self.peer
        if peer is None:
            raise MediaError("no media in this call yet")
        new: Any = await asyncio.to_thread(assembly.open_switched, self.media_opts, kind, spec)
        if self.peer is not peer or self.call.state == m.State.ENDED:
            await asyncio.to_thread(new.close)
            raise MediaError("the call ended meanwhile")
        if kind == "audio_in":
            old: Any = peer.switch_audio_source(new)
        elif kind == "audio_out":
            old = peer.switch_audio_sink(new)
            if self._hold_player is not None:  # the hold sound moves to the new speaker
                self._hold_player.stop()
                self._hold_player = None
                peer.hold_sink = None
                self._apply_hold()
        else:
            old = None
            if peer.video.source is None and self.call.media != p.Media.VIDEO:
                await asyncio.to_thread(new.close)
                raise MediaError("an audio call: turn video on first (callctl video on)")
            peer.set_video_source(new)  # closes the old one
        if old is not None:
            await asyncio.to_thread(old.close)
        self._emit(Ev.MEDIA_SWITCHED, kind=kind, device=new.name)
        return str(new.name)

    def video_changed(self, state: str) -> None:
        """Tell the user and the peer that our video is now ``state``."""
        self._emit(VIDEO_STATES[state][0])
        self._signal("video", {"state": state})

    def outcome(self) -> m.Outcome:
        return self.call.outcome()


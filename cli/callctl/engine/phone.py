"""One identity online: its event stream, the routing of events to calls, the incoming-call policy.

A ``Phone`` has at most one call at a time (a ``CallSession``).  Events from
the server reach the session of their call id as machine events; a ring is
taken, refused (not in ``--allow``) or declined as busy by the policy here.
Everything a user sees goes out through ``emit`` to the listeners (output,
control socket, hooks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from callctl.engine import machine as m
from callctl.engine.events import Ev
from callctl.engine.reasons import reason_for
from callctl.engine.machine import Outcome
from callctl.engine.memory import give_back
from callctl.engine.session import CONNECT_TIMEOUT_S, CallLimits, CallSession
from callctl.engine.signals import event_for
from callctl.engine.tasks import Tasks
from callctl.media.assembly import MediaOptions
from callctl.signaling import protocol as p
from callctl.signaling.client import (
    AuthFailed,
    Conflict,
    Disconnected,
    EventStream,
    NotFound,
    Received,
    SignalingClient,
    SignalingError,
)

log = logging.getLogger("callctl.engine")

#: Before a call connects, signaling that stays lost this long ends it.
SIGNALING_GRACE_S = 5.0
#: Events for call ids not known yet (the stream can beat the POST's response): at most this many ids.
EARLY_CALLS_KEPT = 16
#: Asking the server about our call after a reconnect may take this long.
RECONCILE_TIMEOUT_S = 5.0
#: A ring that arrives while the call before is ending waits this long for it.
RING_AFTER_END_S = 3.0
#: A hangup at close waits this long for the call to end.
CLOSE_TIMEOUT_S = 6.0
#: After a reconnect, the replayed events are taken within this (they come in one burst).
REPLAY_WAIT_S = 0.3
#: TURN credentials are fetched again when this share of their lifetime is left.
ICE_REFRESH_AT = 0.5
#: After a failed refresh, the next try.
ICE_RETRY_S = 30.0
#: Ended calls remembered (their ids, to drop late and replayed events; their outcomes).
ENDED_KEPT = 64

#: A connected call whose microphone sends no frame for this long is wedged (``health``).
MEDIA_STUCK_S = 10.0
#: An incoming call that ended unanswered for one of these was missed (``call.missed``).
MISSED_REASONS = frozenset({p.EndReason.NO_ANSWER, p.EndReason.CANCELLED})

Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class PhoneCounts:
    """Since the process started: calls placed (dialed), taken (answered and connected), missed
    and refused, the last error, the server link."""

    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    calls_placed: int = 0
    calls_taken: int = 0
    calls_missed: int = 0
    calls_refused: int = 0
    last_error: dict[str, Any] | None = None
    #: When the server link last changed and how it is (online, lost).
    link_since: float | None = None

    def count(self, event: str, record: dict[str, Any], session: Any) -> None:
        if event == Ev.CALL_OUTGOING:  # every call dialed, whether it connects or not
            self.calls_placed += 1
        elif event == Ev.CALL_CONNECTED and session is not None and session.call.role == m.Role.CALLEE:
            self.calls_taken += 1
        elif event == Ev.CALL_MISSED:
            self.calls_missed += 1
        elif event == Ev.CALL_REFUSED:
            self.calls_refused += 1
        elif event in (Ev.ERROR, Ev.WARNING):
            self.last_error = {"ts": record["ts"], "event": event,
                               "message": str(record.get("message", ""))[:300]}
        elif event in (Ev.REGISTERED, Ev.SERVER_RESTORED, Ev.SERVER_LOST):
            self.link_since = record["ts"]

    def as_status(self, online: bool) -> dict[str, Any]:
        return {"uptime_s": round(time.monotonic() - self.started_mono, 1),
                "started_at": round(self.started_at, 3),
                "server_link": "online" if online else "lost" if self.link_since else "connecting",
                "server_link_since": self.link_since,
                "calls_placed": self.calls_placed, "calls_taken": self.calls_taken,
                "calls_missed": self.calls_missed, "calls_refused": self.calls_refused,
                "last_error": self.last_error}


@dataclass
class CallPolicy:
    """How a listening phone treats incoming calls."""

    auto_accept: bool = False
    accept_after: float | None = None
    allow: frozenset[str] | None = None
    #: Timers for each call taken (``listen --ring-timeout/--hangup-after/--max-duration``).
    limits: CallLimits = field(default_factory=CallLimits)


@dataclass
class Phone:
    """One identity online: the event stream, incoming-call policy, the current call."""

    client: SignalingClient
    media: MediaOptions
    policy: CallPolicy = field(default_factory=CallPolicy)
    user: str = ""
    device: str = "default"
    #: The server's STUN/TURN servers (credentials refreshed before they expire).
    server_ice: list[p.IceServer] = field(default_factory=list)
    ice_expires_at: float | None = None
    #: Seconds a call's broken media path may take to come back (``--reconnect-timeout``).
    reconnect_timeout: float = 20.0
    #: Seconds ICE and DTLS may take after answer/accept (``--connect-timeout``).
    connect_timeout: float = CONNECT_TIMEOUT_S
    listeners: list[Emit] = field(default_factory=list)
    #: A ``listen``: other processes may place calls through it (control ``dial``).
    takes_dials: bool = False
    session: CallSession | None = None
    sessions_by_id: dict[str, CallSession] = field(default_factory=dict)
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    online: bool = False
    #: Why the event stream is down, while it is (the last attempt's error).
    offline_reason: str | None = None
    #: ``server.lost`` was told since the last registration: the next one is ``server.restored``.
    _lost_told: bool = False
    fatal: SignalingError | None = None
    #: Set when the stream failed for good (auth refused, device taken over).
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    call_ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: The latest outcomes (bounded: a kiosk takes calls for months).
    calls_done: collections.deque[Outcome] = field(
        default_factory=lambda: collections.deque(maxlen=ENDED_KEPT))
    #: The call that ended last, until the next one ends (what ``demo`` reports on).
    last_session: CallSession | None = None
    #: What ``status`` reports of the process's life: uptime, calls, the last error.
    counts: PhoneCounts = field(default_factory=lambda: PhoneCounts())
    _tasks: Tasks = field(default_factory=lambda: Tasks(expected=(SignalingError,)))
    #: (frames sent, when) at the last health check of a connected call.
    _health_mark: tuple[int, float] | None = None
    _stream_task: asyncio.Task[None] | None = None
    _events: EventStream | None = None
    #: Events still to come of the replay that followed the last ``registered``.
    _replaying: int = 0
    #: While it lasts, a reconnecting call's newest re-offer (older ones are moot) and
    #: whether the call is to hear that signaling is back once it ends.
    _held_reoffer: tuple[CallSession, p.CallSignal] | None = None
    _back_pending: CallSession | None = None
    _offline_timer: asyncio.TimerHandle | None = None
    _ice_timer: asyncio.TimerHandle | None = None
    _early: dict[str, list[p.Event]] = field(default_factory=dict)
    #: ``call.missed`` (busy) waiting for the call that holds the line to be told first.
    _held_missed: list[dict[str, Any]] = field(default_factory=list)
    #: Ids of calls that ended here: a late or replayed event for one is dropped.
    _ended_ids: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)

    def adopt(self, call_id: str, session: CallSession) -> None:
        """Bind a call id to its session and hand it what already arrived for it."""
        self.sessions_by_id[call_id] = session
        for event in self._early.pop(call_id, []):
            self._route(event, replayed=False)

    @property
    def ice_servers(self) -> list[p.IceServer]:
        """Ours (``--ice-server``) first, then the server's: aiortc uses the first STUN and TURN."""
        return [*self.media.ice_servers, *self.server_ice]

    def _set_ice(self, servers: list[p.IceServer], expires_at: float | None) -> None:
        self.server_ice, self.ice_expires_at = list(servers), expires_at
        if self._ice_timer is not None:
            self._ice_timer.cancel()
            self._ice_timer = None
        if expires_at is not None:
            self._refresh_ice_in(max(1.0, (expires_at - time.time()) * ICE_REFRESH_AT))

    def _refresh_ice_in(self, delay: float) -> None:
        self._ice_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._tasks.spawn(self._refresh_ice(), "ice-refresh"))

    async def _refresh_ice(self) -> None:
        """Fresh TURN credentials before the ones we hold expire (a call needs them to allocate)."""
        self._ice_timer = None
        try:
            fresh = await asyncio.wait_for(self.client.ice_servers(), RECONCILE_TIMEOUT_S)
        except (SignalingError, TimeoutError) as exc:
            log.info("could not refresh the ICE servers: %s", exc)
            if self._ice_timer is None:
                self._refresh_ice_in(ICE_RETRY_S)
            return
        self._set_ice(fresh.ice_servers, fresh.expires_at)

    def emit(self, event: Ev, fields: dict[str, Any]) -> None:
        record = {"v": 1, "ts": round(time.time(), 3), "event": event.value, **fields}
        self.counts.count(event, record, self.session)
        for listener in list(self.listeners):
            try:
                listener(event.value, record)
            except Exception:
                log.exception("event listener failed")

    # ---------------------------------------------------------------- stream
    def start(self) -> None:
        self._stream_task = asyncio.ensure_future(self._stream())

    async def _stream(self) -> None:
        try:
            self._events = self.client.events(allow=self.policy.allow)
            async for item in self._events:
                if isinstance(item, Disconnected):
                    self._went_offline(item)
                elif isinstance(item, Received):
                    self._on_event(item.event)
        except SignalingError as exc:  # the stream retries the rest by itself
            if not isinstance(exc, AuthFailed | Conflict):
                exc = SignalingError(
                    f"{self.client.server} answered {exc.status or 'oddly'} for its event stream "
                    f"({exc.message}): is that a callctl server?", exc.code, exc.status)
            self.fatal = exc
            self.emit(Ev.ERROR, {"message": exc.message})
            if self.session is not None:
                self.session.feed(m.Failed(reason_for(exc)))
            self.stopped.set()

    def refresh_signaling(self) -> None:
        """Open the event stream afresh now, and keep retrying fast while a call reconnects."""
        if self._events is not None:
            self._events.restart(hurry_s=self.reconnect_timeout)

    def _went_offline(self, item: Disconnected) -> None:
        if item.deliberate:  # we reopen it ourselves: the server is not known to be gone
            log.info("reopening the event stream (%s)", item.error.message)
            return
        self.offline_reason = item.error.message
        log.info("event stream down (%s): trying again in %.1f s", item.error.message, item.retry_in)
        if self.online or not self.registered.is_set():
            self._lost_told = True
            self.emit(Ev.SERVER_LOST, {"message": item.error.message,
                                       "retry_in_s": round(item.retry_in, 2)})
        self.online = False
        if self.session is not None and self._offline_timer is None:
            self._offline_timer = asyncio.get_running_loop().call_later(
                SIGNALING_GRACE_S, self._signaling_gone
            )

    def _signaling_gone(self) -> None:
        self._offline_timer = None
        if not self.online and self.session is not None:
            self.session.feed(m.SignalingLost())  # the machine ignores it once connected

    def _on_event(self, event: p.Event) -> None:
        if isinstance(event, p.Registered):
            self._on_registered(event)
            return
        replayed, self._replaying = self._replaying > 0, max(0, self._replaying - 1)
        try:
            self._route(event, replayed)
        finally:
            if replayed and self._replaying == 0:
                self._replay_done()

    def _route(self, event: p.Event, replayed: bool) -> None:
        call_id = getattr(event, "call_id", None)
        if call_id is None or call_id in self._ended_ids:
            return  # news of a call that is over here (a replayed ring among them)
        if isinstance(event, p.CallMissed):  # the server answered it busy: it never rang here
            self._forget(call_id)
            self._missed_busy({"call_id": call_id, "peer": event.caller,
                               "media": event.media.value, "reason": event.reason.value})
            return
        if isinstance(event, p.CallIncoming):
            self._on_ring(event)
            return
        s = self.sessions_by_id.get(call_id)
        if s is None:
            if len(self._early) >= EARLY_CALLS_KEPT:
                self._early.pop(next(iter(self._early)))
            self._early.setdefault(call_id, []).append(event)
            return
        if s.call.state == m.State.ENDED:
            return
        if isinstance(event, p.CallRinging):
            s.feed(m.Ringing())
        elif isinstance(event, p.CallAnswered):
            s.feed(m.Answered(event.sdp))
        elif isinstance(event, p.CallEnded):
            s.feed(m.RemoteEnded(event.reason, by_server=event.by == p.Party.SERVER))
        elif isinstance(event, p.CallSignal):
            if replayed and event.kind == "reoffer" and s.call.state == m.State.RECONNECTING:
                self._held_reoffer = (s, event)  # re-offers made while we were away: the newest counts
                return
            signal_event = event_for(event)
            if signal_event is not None:
                s.feed(signal_event)

    def _replay_done(self) -> None:
        """The replay after a reconnect is through: the newest re-offer, then "signaling is back"."""
        self._replaying = 0
        held, self._held_reoffer = self._held_reoffer, None
        back, self._back_pending = self._back_pending, None
        if held is not None:
            session, signal = held
            signal_event = event_for(signal)
            if signal_event is not None:
                session.feed(signal_event)
        if back is not None:
            back.feed(m.SignalingBack())

    def _on_registered(self, event: p.Registered) -> None:
        was_registered = self.registered.is_set()
        self.online, self.offline_reason = True, None
        self.user = event.user
        self._set_ice(event.ice_servers, event.ice_expires_at)
        if self._offline_timer is not None:
            self._offline_timer.cancel()
            self._offline_timer = None
        self._replaying = event.replayed
        if was_registered and self.session is not None:  # a ring may not have survived the outage
            self._tasks.spawn(self._reconcile(self.session), "reconcile")
            if self.session.call.state == m.State.RECONNECTING:
                self._back_pending = self.session
                if self._replaying:  # after the replay (a duplicate dropped by the stream: in a moment)
                    asyncio.get_running_loop().call_later(REPLAY_WAIT_S, self._replay_done)
                else:
                    self._replay_done()
        lost, self._lost_told = self._lost_told, False
        fields = {"user": event.user, "service": event.service, "device": event.device,
                  "server": self.client.server}
        if not was_registered:
            self.emit(Ev.REGISTERED, fields)
        elif lost:
            self.emit(Ev.SERVER_RESTORED, fields)
        else:  # a stream we reopened ourselves (a refresh, a renewed token): no loss to answer
            log.info("event stream open again")
        self.registered.set()

    async def _ring_after(self, ending: CallSession, ring: p.CallIncoming) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ending.ended.wait(), RING_AFTER_END_S)
        await asyncio.sleep(0)  # let the watcher clear the ended session first
        self._on_ring(ring, retried=True)

    async def _reconcile(self, session: CallSession) -> None:
        """After the stream came back: does the server still know this call, and how is it?

        A server that restarted has no record (404): the call is gone for it, so
        it ends here too instead of ringing forever.  One that ended it while we
        were away says how.
        """
        call_id = session.call.call_id
        if call_id is None or session.call.state in (m.State.ENDED, m.State.CONNECTED):
            return  # a connected call's media is peer to peer: the server's record does not matter
        try:
            info = await asyncio.wait_for(self.client.get_call(call_id), RECONCILE_TIMEOUT_S)
        except NotFound:
            session.feed(m.CallForgotten())
            return
        except (SignalingError, TimeoutError) as exc:
            log.info("could not reconcile call %s: %s", call_id, exc)
            return
        if info.state == p.CallState.ENDED and info.reason is not None:
            session.feed(m.RemoteEnded(info.reason, by_server=info.ended_by == p.Party.SERVER))

    def _on_ring(self, ring: p.CallIncoming, retried: bool = False) -> None:
        if ring.call_id in self.sessions_by_id or ring.ring_expires_at < time.time():
            return  # a replayed ring we know, or one that has expired meanwhile
        ids = {"call_id": ring.call_id, "peer": ring.caller, "media": ring.media.value}
        allow = self.policy.allow
        if allow is not None and ring.caller not in allow:
            self.emit(Ev.CALL_REFUSED, ids)
            self._tasks.spawn(self.client.decline(ring.call_id, False), "decline-refused")
            return
        if self.session is not None and self.session.call.state != m.State.ENDED:
            if self.session.ending and not retried:
                # the call before is ending (its hangup arrived just ahead of this ring):
                # wait for it instead of turning the caller away as busy
                self._tasks.spawn(self._ring_after(self.session, ring), "ring-after-end")
                return
            self._tasks.spawn(self.client.decline(ring.call_id, True), "decline-busy")
            self._missed_busy({**ids, "reason": "busy"})
            return
        session = self._new_session(m.Role.CALLEE, self.policy.limits)
        self.sessions_by_id[ring.call_id] = session
        ring_s = max(0.0, ring.ring_expires_at - time.time())
        session.feed(m.Ring(ring.call_id, ring.caller, ring.media, ring.sdp, ring_s=ring_s))
        if self.policy.limits.ring_timeout is not None and not self.policy.auto_accept:
            session.stop_ringing_after(self.policy.limits.ring_timeout)
        if self.policy.auto_accept:
            session.feed(m.Accept())
        elif self.policy.accept_after is not None:
            asyncio.get_running_loop().call_later(
                self.policy.accept_after, session.feed, m.Accept()
            )

    def _missed_busy(self, fields: dict[str, Any]) -> None:
        """``call.missed`` of a call turned away because of ours: after ours was told.

        The call holding the line may not have said ``call.incoming`` (or
        ``call.outgoing``) yet: its ring is prepared first, and a second ring can
        come in the same burst of the stream.
        """
        holder = self.session
        if not self._held_missed and (holder is None or holder.announced.is_set()):
            self.emit(Ev.CALL_MISSED, fields)
            return
        self._held_missed.append(fields)  # in order, behind any held already
        if len(self._held_missed) == 1:
            self._tasks.spawn(self._missed_after(holder), "missed-busy")

    async def _missed_after(self, holder: CallSession | None) -> None:
        if holder is not None:
            await holder.announced.wait()
        while self._held_missed:
            self.emit(Ev.CALL_MISSED, self._held_missed.pop(0))

    def _new_session(self, role: m.Role, limits: CallLimits,
                     media: MediaOptions | None = None) -> CallSession:
        session = CallSession(self, role, media or self.media, limits)
        self.session = session
        self.call_ended.clear()
        self._tasks.spawn(self._watch(session), "watch-call")
        return session

    async def _watch(self, session: CallSession) -> None:
        await session.ended.wait()
        outcome = session.outcome()
        self.calls_done.append(outcome)
        c = session.call
        if (c.role == m.Role.CALLEE and c.connected_at is None and c.call_id is not None
                and outcome.reason in MISSED_REASONS):
            self.emit(Ev.CALL_MISSED, {"call_id": c.call_id, "peer": c.peer, "media": c.media.value,
                                       "reason": outcome.reason.value})
        # let the call go: its session holds the whole peer connection (~370 kB a call)
        for call_id in [i for i, s in self.sessions_by_id.items() if s is session]:
            del self.sessions_by_id[call_id]
            self._forget(call_id)
        self.last_session = session
        if self.session is session:
            self.session = None
        self.call_ended.set()
        if self.takes_dials and self.session is None:
            # a listener lives for months: the call's memory goes back (nothing new started)
            await give_back()

    def _forget(self, call_id: str) -> None:
        """This call is over here: later and replayed events for it are dropped (bounded)."""
        self._ended_ids[call_id] = None
        while len(self._ended_ids) > ENDED_KEPT:
            self._ended_ids.popitem(last=False)

    # ---------------------------------------------------------------- health
    def health(self) -> str | None:
        """None if the event stream and the call's media are alive, else what is not.

        A server that is down is not a fault (the stream retries by itself): a
        stream task that is gone is.  In a connected call the microphone's
        frames must keep flowing (a lost device sends silence, a wedged media
        thread sends nothing).
        """
        if self._stream_task is None or self._stream_task.done():
            return "the event stream has stopped"
        s = self.session
        peer = s.peer if s is not None else None
        if s is None or peer is None or s.call.state != m.State.CONNECTED:
            self._health_mark = None
            return None
        now, frames = time.monotonic(), peer.sent.frames
        if self._health_mark is None or self._health_mark[0] != frames:
            self._health_mark = (frames, now)
            return None
        stuck = now - self._health_mark[1]
        return f"no audio sent for {stuck:.0f} s in a connected call" if stuck > MEDIA_STUCK_S else None

    # -------------------------------------------------------------- commands
    def dial(self, peer: str, media: p.Media, limits: CallLimits,
             *, media_opts: MediaOptions | None = None) -> CallSession:
        session = self._new_session(m.Role.CALLER, limits, media_opts)
        session.feed(m.Dial(peer, media))
        return session

    async def close(self) -> None:
        if self.session is not None and self.session.call.state != m.State.ENDED:
            self.session.feed(m.Hangup())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.session.ended.wait(), CLOSE_TIMEOUT_S)
        if self._stream_task is not None:
            self._stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_task
        if self._ice_timer is not None:
            self._ice_timer.cancel()
        await self._tasks.cancel_all()
        await self.client.aclose()

"""The server's call logic: who may do what to a call, and who hears about it.

The hub turns authenticated requests into Store operations and events.  It owns
this node's timers (ring timeouts, offline grace) and its open streams
(heartbeats, shutdown); everything shared between nodes is in the Store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from callctl.signaling import protocol as p
from callctl.signaling.auth import Identity
from callctl.server.errors import Refused
from callctl.server.ice import IcePolicy
from callctl.server.metrics import ServerMetrics
from callctl.server.store import HEARTBEAT, CallRecord, Store, StoredEvent, Subscription

log = logging.getLogger("callctl.server")


#: A timer this late was not fired by the node that set it: another one fires it.
OVERDUE_S = 1.0


def offline_timer(user_key: str, device: str) -> str:
    """The store timer of a device's offline grace (user keys have no "|", device ids neither)."""
    return f"offline:{user_key}|{device}"


@dataclass(slots=True)
class HubConfig:
    ring_timeout_s: float = 60.0
    heartbeat_s: float = 15.0
    max_devices: int = 8
    #: New calls per caller: sustained rate and burst.
    calls_per_minute: float = 30.0
    call_burst: int = 10
    #: A party whose call device stays offline this long ends the call.
    offline_grace_s: float = 20.0
    #: ... and this long when its device closed the stream itself (a process that died:
    #: its kernel closes the connection; a network that broke closes nothing).
    gone_grace_s: float = 2.0
    ice: IcePolicy = field(default_factory=IcePolicy)


@dataclass(eq=False, slots=True)
class Stream:
    """One open event stream (one device of one user) on this node."""

    identity: Identity
    device: str
    stream_id: str
    sub: Subscription
    #: When this stream's next keep-alive is due (monotonic); phases are spread.
    next_heartbeat: float = 0.0
    #: The callers this device rings for (``?allow=``); None: everyone.
    allow: frozenset[str] | None = None


class Hub:
    def __init__(self, store: Store, config: HubConfig) -> None:
        self.store = store
        self.config = config
        self.server_id = secrets.token_hex(4)
        self._streams: dict[tuple[str, str], Stream] = {}
        self._timers: set[asyncio.Task[None]] = set()
        #: Ring timeouts of calls created on this node, cancelled once they stop ringing.
        self._ring_timers: dict[str, asyncio.TimerHandle] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.closing = False
        #: The store's recoveries seen (``_ring_again`` after each new one).
        self._recoveries = 0
        self.metrics = ServerMetrics(self.server_id, lambda: self.stream_count)

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.store.start()
        self._ticker = asyncio.create_task(self._tick(), name="hub-ticker")

    async def close_streams(self) -> None:
        """Tell every open stream to end (server shutting down)."""
        self.closing = True
        for stream in list(self._streams.values()):
            stream.sub.close("shutdown")

    async def stop(self) -> None:
        await self.close_streams()
        for timer in self._ring_timers.values():
            timer.cancel()
        self._ring_timers.clear()
        tasks = [t for t in (self._ticker, *self._timers) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    async def _tick(self) -> None:
        """Heartbeats (each stream on its own phase), token expiry, housekeeping.

        Ticks every second and heartbeats the streams whose turn has come, so
        thousands of idle streams never all get written in the same instant.
        """
        tick = min(1.0, self.config.heartbeat_s)
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now, mono = time.time(), time.monotonic()
            for stream in list(self._streams.values()):
                if stream.identity.expires_at + 30 < now:
                    stream.sub.close("token_expired")
                elif stream.next_heartbeat <= mono:
                    stream.next_heartbeat = mono + self.config.heartbeat_s
                    stream.sub.offer(HEARTBEAT)
            try:
                if self.store.recoveries != self._recoveries:
                    self._recoveries = self.store.recoveries
                    await self._ring_again()
                # devices of a node that died: offline now, their calls' grace begins
                gone = await self.store.reap_dead_nodes(self.config.offline_grace_s)
                if gone:
                    log.warning("a node died: %d of its devices are offline", gone)
                # timers whose node did not fire them (it died or stopped): once, here
                for timer in await self.store.overdue(now - OVERDUE_S):
                    try:
                        await self._overdue(timer)
                    except self.store.unavailable:
                        raise
                    except Exception:  # the ticker must go on
                        log.exception("timer %s failed", timer[:40])
                if mono - last_purge >= 30:
                    last_purge = mono
                    await self.store.purge(now)
            except self.store.unavailable as exc:
                self.metrics.store_error()
                log.warning("store unavailable: %s", exc)

    async def _ring_again(self) -> None:
        """The store forgot this node's devices for a moment: a call made then rang none of
        them here.  Each stream gets the rings pending for it (one it has is dropped by id)."""
        for (user_key, device), stream in list(self._streams.items()):
            for call in await self.store.ringing_calls_for(user_key):
                if call.ring_event_id is None or not self._rings_for(user_key, device, call.caller):
                    continue
                await self._mark_rang(call)
                stream.sub.offer(StoredEvent(call.ring_event_id, "call.incoming",
                                             p.encode(_ring_event(call))))

    async def _overdue(self, timer: str) -> None:
        kind, _, key = timer.partition(":")
        if kind == "ring":
            log.info("call %s: ring timeout taken over from another node", key[:8])
            await self._ring_timeout(key)
        elif kind == "offline":
            user_key, _, device = key.rpartition("|")
            await self._check_offline(user_key, device)

    def _later(self, delay: float, coro_fn: Callable[..., Awaitable[None]], *args: Any) -> asyncio.TimerHandle:
        """Run ``coro_fn(*args)`` after ``delay``: a timer handle, not a sleeping task."""

        async def run() -> None:
            try:
                await coro_fn(*args)
            except self.store.unavailable as exc:  # a ring timer is fired later (``overdue``)
                self.metrics.store_error()
                log.warning("timer %s: store unavailable: %s", coro_fn.__name__, exc)
            except Exception:  # a timer must never take the server down
                log.exception("timer failed")

        def fire() -> None:
            task = asyncio.ensure_future(run())
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)

        return asyncio.get_running_loop().call_later(delay, fire)

    # ----------------------------------------------------------------- events
    async def _emit(
        self,
        user_key: str,
        event: p.Event,
        *,
        only_device: str | None = None,
        except_device: str | None = None,
    ) -> str:
        return await self.store.publish(
            user_key,
            p.event_name(event),
            p.encode(event),
            only_device=only_device,
            except_device=except_device,
        )

    async def _emit_ended(self, call: CallRecord) -> None:
        assert call.reason is not None and call.ended_by is not None
        event = p.CallEnded(call_id=call.call_id, reason=call.reason, by=call.ended_by)
        await self._emit(call.caller_key, event, only_device=call.caller_device)
        # while ringing every device of the callee rang: tell them all
        await self._emit(call.callee_key, event, only_device=call.callee_device)
        log.info(
            "call %s %s -> %s ended reason=%s by=%s",
            call.call_id[:8], call.caller, call.callee, call.reason.value, call.ended_by.value,
        )

    # ----------------------------------------------------------------- streams
    async def open_stream(
        self, identity: Identity, device: str, last_id: str | None,
        allow: frozenset[str] | None = None,
    ) -> tuple[Stream, list[StoredEvent], p.Registered]:
        """Register a device and return what to send first (replay + pending rings)."""
        if self.closing:
            raise Refused(p.ErrorCode.UNAVAILABLE, "server is shutting down")
        user_key = identity.key
        stream_id = secrets.token_hex(8)
        # subscribe before registering and before reading the log, so nothing falls between:
        # with several nodes, an event sent once the device shows online may arrive here
        # before the registration's own reply does
        sub = self.store.subscribe(user_key, device)
        try:
            opening = await self.store.open_device(
                user_key, device, stream_id, self.config.max_devices, last_id
            )
        except BaseException:
            self.store.unsubscribe(sub)
            raise
        if opening is None:
            self.store.unsubscribe(sub)
            raise Refused(p.ErrorCode.TOO_MANY_DEVICES,
                f"user already has {self.config.max_devices} devices online",
            )
        online, cursor = opening.online, opening.cursor
        opened: Stream | None = None
        try:
            previous = self._streams.get((user_key, device))
            if previous is not None:
                previous.sub.close("replaced")
            stream = opened = Stream(
                identity, device, stream_id, sub,
                time.monotonic() + random.uniform(0, self.config.heartbeat_s), allow,
            )
            self._streams[(user_key, device)] = stream

            backlog = [e for e in opening.backlog if e.for_device(device)]
            sent = {e.id for e in backlog}
            for call in opening.ringing:
                await self._mark_rang(call)
                if call.ring_event_id is None or call.ring_event_id in sent:
                    continue
                if last_id and not self.store.is_after(call.ring_event_id, last_id):
                    continue  # the client has seen this ring already
                ring = _ring_event(call)
                backlog.append(StoredEvent(call.ring_event_id, "call.incoming", p.encode(ring)))
            ice_servers, ice_expires = self.config.ice.for_user(identity.user, time.time())
            registered = p.Registered(
                user=identity.user,
                service=identity.service,
                device=device,
                devices_online=online,
                heartbeat_s=self.config.heartbeat_s,
                server_id=self.server_id,
                ice_servers=ice_servers,
                ice_expires_at=ice_expires,
                replayed=len(backlog),
                cursor=cursor,
            )
            log.debug("stream open %s device=%s online=%d", user_key, device, online)
            return stream, backlog, registered
        except BaseException:
            # a stream that never opened leaves nothing registered: not the device, not the stream
            self.store.unsubscribe(sub)
            if opened is not None and self._streams.get((user_key, device)) is opened:
                del self._streams[(user_key, device)]
            await self.store.unregister_device(user_key, device, stream_id)
            raise

    async def stream_started(self, stream: Stream) -> None:
        """Its client has the first bytes: the device's stream on another node ends now."""
        try:
            await self.store.stream_started(stream.identity.key, stream.device, stream.stream_id)
        except self.store.unavailable as exc:
            self.metrics.store_error()
            log.warning("stream of %s/%s: the store did not hear it started: %s",
                        stream.identity.key, stream.device, exc)

    async def close_stream(self, stream: Stream, gone: bool = False) -> None:
        """The stream ended; ``gone``: its client closed the connection (it did not just stall)."""
        user_key = stream.identity.key
        self.store.unsubscribe(stream.sub)
        if self._streams.get((user_key, stream.device)) is not stream:
            return  # replaced by a newer stream of the same device: still online
        del self._streams[(user_key, stream.device)]
        grace = min(self.config.gone_grace_s, self.config.offline_grace_s) if gone \
            else self.config.offline_grace_s
        # in the store, so that the grace ends even if this node stops or dies meanwhile; a
        # device that leaves again later moves the due time (the earlier timer is then moot)
        timer, at = offline_timer(user_key, stream.device), time.time() + grace
        try:
            await self.store.unregister_device(user_key, stream.device, stream.stream_id)
            await self.store.schedule(timer, at)
        except self.store.unavailable as exc:  # listed until the device is back or its node goes
            self.metrics.store_error()
            log.warning("stream of %s/%s closed, but the store did not hear of it: %s",
                        user_key, stream.device, exc)
            return
        log.debug("stream closed %s device=%s", user_key, stream.device)
        if not self.closing:
            self._later(grace, self._offline_fire, timer, at)

    async def _offline_fire(self, timer: str, at: float) -> None:
        if await self.store.claim(timer, at):
            user_key, _, device = timer.removeprefix("offline:").rpartition("|")
            await self._check_offline(user_key, device)

    async def _check_offline(self, user_key: str, device: str) -> None:
        """End a call whose party's device did not come back within the grace."""
        if device in await self.store.devices_online(user_key):
            return  # came back (if it leaves again, that has its own timer)
        call_id = await self.store.connected_call_of(user_key)
        if call_id is None:
            return
        call = await self.store.get_call(call_id)
        if call is None:
            return
        mine = (call.caller_key == user_key and call.caller_device == device) or (
            call.callee_key == user_key and call.callee_device == device
        )
        if mine:
            await self._end(call, p.CallState.CONNECTED, p.EndReason.NETWORK_LOST, p.Party.SERVER)

    async def _mark_rang(self, call: CallRecord) -> None:
        if call.rang:
            return
        devices = [d for d in await self.store.devices_online(call.callee_key)
                   if self._rings_for(call.callee_key, d, call.caller)]
        if not devices:
            return  # nobody online, or every device refuses this caller: no ringback for it
        updated, applied = await self.store.update_call(
            call.call_id, p.CallState.RINGING, {"rang": True}
        )
        if applied and updated is not None:
            call.rang = True
            await self._emit(
                call.caller_key,
                p.CallRinging(call_id=call.call_id, devices=len(devices)),
                only_device=call.caller_device,
            )
            log.info("call %s %s -> %s ringing", call.call_id[:8], call.caller, call.callee)

    def _rings_for(self, user_key: str, device: str, caller: str) -> bool:
        stream = self._streams.get((user_key, device))
        return stream is None or stream.allow is None or caller in stream.allow

    # ------------------------------------------------------------------- calls
    def info(self, call: CallRecord) -> p.CallInfo:
        return p.CallInfo(
            call_id=call.call_id,
            caller=call.caller,
            callee=call.callee,
            media=call.media,
            state=call.state,
            created_at=call.created_at,
            ring_expires_at=call.ring_expires_at,
            answered_at=call.answered_at,
            ended_at=call.ended_at,
            reason=call.reason,
            ended_by=call.ended_by,
            answer_sdp=call.answer_sdp,
            ice_servers=self.config.ice.shared(),
        )

    async def create_call(self, me: Identity, device: str, req: p.CreateCall) -> p.CallInfo:
        if req.to == me.user:
            raise Refused(p.ErrorCode.INVALID, "a user cannot call itself")
        wait = await self.store.take_token(
            f"calls:{me.key}", self.config.calls_per_minute / 60.0, self.config.call_burst
        )
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            raise Refused(p.ErrorCode.RATE_LIMITED,
                f"too many new calls; retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        now = time.time()
        timeout = self.config.ring_timeout_s
        if req.ring_timeout is not None:
            timeout = min(timeout, req.ring_timeout)
        call = CallRecord(
            call_id=secrets.token_hex(16),
            service=me.service,
            caller=me.user,
            callee=req.to,
            media=req.media,
            offer_sdp=req.sdp,
            state=p.CallState.RINGING,
            created_at=now,
            ring_expires_at=now + timeout,
            caller_device=device,
        )
        if await self.store.connected_call_of(me.key) is not None:
            raise Refused(p.ErrorCode.WRONG_STATE, "you are already in a call; hang it up first")
        if await self.store.connected_call_of(call.callee_key) is not None:
            call.state = p.CallState.ENDED
            call.reason, call.ended_by, call.ended_at = p.EndReason.BUSY, p.Party.SERVER, now
            call.offer_sdp = ""  # an ended call keeps no SDP
            await self.store.create_call(call)
            self.metrics.call_created(call)
            log.info("call %s %s -> %s busy", call.call_id[:8], call.caller, call.callee)
            await self._emit(
                call.caller_key,
                p.CallEnded(call_id=call.call_id, reason=call.reason, by=call.ended_by),
                only_device=device,
            )
            # the callee's devices never rang: they hear of the call as missed
            await self._emit(call.callee_key, p.CallMissed(call_id=call.call_id, caller=call.caller,
                                                           media=call.media, reason=call.reason))
            return self.info(call)

        await self.store.create_call(call)
        # due in the store at once: if this node dies (or the store fails) before the ring is
        # out, another node (or this one, later) still ends the call at its ring timeout
        await self.store.schedule(f"ring:{call.call_id}", call.ring_expires_at)
        self.metrics.call_created(call)
        log.info("call %s %s -> %s created media=%s", call.call_id[:8], call.caller, call.callee,
                 call.media.value)
        ring = _ring_event(call)
        # the ring goes into the callee's log even when no device is online:
        # a device that connects (or resumes) before the timeout still rings
        ring_id = await self._emit(call.callee_key, ring)
        updated, _ = await self.store.update_call(
            call.call_id, p.CallState.RINGING, {"ring_event_id": ring_id}
        )
        if updated is not None:
            call = updated
            await self._mark_rang(call)
        self._ring_timers[call.call_id] = self._later(timeout, self._ring_fire, call.call_id)
        return self.info(call)

    async def _ring_fire(self, call_id: str) -> None:
        self._ring_timers.pop(call_id, None)
        if await self.store.claim(f"ring:{call_id}"):  # else another node fired it
            await self._ring_timeout(call_id)

    async def _ring_timeout(self, call_id: str) -> None:
        call = await self.store.get_call(call_id)
        if call is None or call.state != p.CallState.RINGING:
            return
        reason = p.EndReason.NO_ANSWER if call.rang else p.EndReason.UNAVAILABLE
        await self._end(call, p.CallState.RINGING, reason, p.Party.SERVER)

    async def _end(
        self, call: CallRecord, expect: p.CallState, reason: p.EndReason, by: p.Party
    ) -> CallRecord | None:
        updated, applied = await self.store.update_call(
            call.call_id,
            expect,
            # the SDPs are of no use once it ended: don't keep them for the retention time
            {"state": p.CallState.ENDED, "reason": reason, "ended_by": by, "ended_at": time.time(),
             "offer_sdp": "", "answer_sdp": None},
        )
        if applied and updated is not None:
            await self._cancel_ring_timer(call.call_id)
            self.metrics.call_ended(expect, reason)
            await self._emit_ended(updated)
            return updated
        return None

    async def _cancel_ring_timer(self, call_id: str) -> None:
        timer = self._ring_timers.pop(call_id, None)
        if timer is not None:
            timer.cancel()
        await self.store.claim(f"ring:{call_id}")

    async def _party_call(self, me: Identity, call_id: str) -> tuple[CallRecord, p.Party]:
        call = await self.store.get_call(call_id)
        if call is None:
            raise Refused(p.ErrorCode.NOT_FOUND, "no such call")
        if call.service == me.service and me.user == call.caller:
            return call, p.Party.CALLER
        if call.service == me.service and me.user == call.callee:
            return call, p.Party.CALLEE
        raise Refused(p.ErrorCode.FORBIDDEN, "not a party to this call")

    async def get_call(self, me: Identity, call_id: str) -> p.CallInfo:
        call, _ = await self._party_call(me, call_id)
        return self.info(call)

    async def answer(self, me: Identity, device: str, call_id: str, sdp: str) -> p.CallInfo:
        call, role = await self._party_call(me, call_id)
        if role is not p.Party.CALLEE:
            raise Refused(p.ErrorCode.FORBIDDEN, "only the callee may answer")
        if call.state == p.CallState.RINGING and await self.store.connected_call_of(me.key):
            raise Refused(p.ErrorCode.WRONG_STATE, "you are already in another call")
        updated, applied = await self.store.update_call(
            call_id,
            p.CallState.RINGING,
            {
                "state": p.CallState.CONNECTED,
                "callee_device": device,
                "answer_sdp": sdp,
                "answered_at": time.time(),
            },
        )
        if not applied or updated is None:
            raise _state_error(updated or call)
        await self._cancel_ring_timer(call_id)
        self.metrics.call_answered()
        await self._emit(
            updated.caller_key,
            p.CallAnswered(call_id=call_id, sdp=sdp),
            only_device=updated.caller_device,
        )
        await self._emit(
            updated.callee_key,
            p.CallEnded(
                call_id=call_id, reason=p.EndReason.ANSWERED_ELSEWHERE, by=p.Party.CALLEE
            ),
            except_device=device,
        )
        log.info("call %s %s -> %s connected", call_id[:8], updated.caller, updated.callee)
        return self.info(updated)

    async def decline(self, me: Identity, call_id: str, busy: bool = False,
                      no_answer: bool = False) -> p.CallInfo:
        call, role = await self._party_call(me, call_id)
        if role is not p.Party.CALLEE:
            raise Refused(p.ErrorCode.FORBIDDEN, "only the callee may decline")
        reason = p.EndReason.BUSY if busy else p.EndReason.NO_ANSWER if no_answer else p.EndReason.DECLINED
        ended = await self._end(call, p.CallState.RINGING, reason, p.Party.CALLEE)
        if ended is None:
            latest = await self.store.get_call(call_id) or call
            if latest.state == p.CallState.CONNECTED:
                raise Refused(p.ErrorCode.WRONG_STATE, "the call is connected: hang up instead")
            raise _state_error(latest)
        return self.info(ended)

    async def hangup(
        self, me: Identity, call_id: str, reason: p.EndReason
    ) -> p.CallInfo:
        call, role = await self._party_call(me, call_id)
        if reason not in p.HANGUP_REASONS:
            raise Refused(p.ErrorCode.INVALID,
                f"hangup reason must be one of {sorted(r.value for r in p.HANGUP_REASONS)}",
            )
        for _ in range(3):  # the state may move under us (answer racing a cancel)
            if call.state == p.CallState.ENDED:
                return self.info(call)  # idempotent: report how it ended
            why = p.hangup_reason(reason, ringing=call.state == p.CallState.RINGING,
                                  by_caller=role is p.Party.CALLER)
            ended = await self._end(call, call.state, why, role)
            if ended is not None:
                return self.info(ended)
            latest = await self.store.get_call(call_id)
            if latest is None:
                break
            call = latest
        raise Refused(p.ErrorCode.WRONG_STATE, "call changed state; try again")

    async def signal(
        self, me: Identity, device: str, call_id: str, req: p.SignalCall
    ) -> p.CallInfo:
        call, role = await self._party_call(me, call_id)
        if call.state == p.CallState.ENDED:
            raise _state_error(call)
        event = p.CallSignal(call_id=call_id, sender=me.user, kind=req.kind, data=req.data)
        if role is p.Party.CALLER:
            await self._emit(call.callee_key, event, only_device=call.callee_device)
        else:
            if call.callee_device is not None and device != call.callee_device:
                raise Refused(p.ErrorCode.FORBIDDEN, "another device has this call")
            await self._emit(call.caller_key, event, only_device=call.caller_device)
        return self.info(call)

    def ice_servers(self, me: Identity) -> p.IceServers:
        """This user's ICE servers, with TURN credentials issued now."""
        servers, expires = self.config.ice.for_user(me.user, time.time())
        return p.IceServers(ice_servers=servers, expires_at=expires)

    async def health(self) -> p.Health:
        from callctl import __version__

        status = "shutting_down" if self.closing else "ok"
        calls_active = -1
        if not self.store.healthy:
            status = "store_unavailable"
        else:
            try:
                calls_active = await self.store.count_active_calls()
            except self.store.unavailable:
                status = "store_unavailable"
        return p.Health(status=status, version=__version__, streams=self.stream_count,
                        calls_active=calls_active)

    def streams(self) -> Iterable[Stream]:
        return self._streams.values()


def _ring_event(call: CallRecord) -> p.CallIncoming:
    return p.CallIncoming(
        call_id=call.call_id,
        caller=call.caller,
        media=call.media,
        sdp=call.offer_sdp,
        ring_expires_at=call.ring_expires_at,
    )


def _state_error(call: CallRecord) -> Refused:
    if call.state == p.CallState.CONNECTED:
        return Refused(p.ErrorCode.ALREADY_ANSWERED, "the call was already answered")
    if call.state == p.CallState.ENDED:
        reason = call.reason.value if call.reason else "unknown"
        return Refused(p.ErrorCode.CALL_ENDED, f"the call has ended ({reason})")
    return Refused(p.ErrorCode.WRONG_STATE, f"the call is {call.state.value}")

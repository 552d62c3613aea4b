"""Server state behind one interface: calls, per-user event logs, presence, rate limits.

``Store`` is what the server's call logic (``hub.py``) needs, as atomic
operations; ``MemoryStore`` is the embedded default.  A Redis store implements
the same interface and runs the same contract tests (``tests/signaling/
test_store_contract.py``).

Rules every implementation keeps:

- ``update_call`` is a compare-and-set on the call's state: of two racing
  answers exactly one sees ``applied=True``.
- Event ids are opaque strings, increasing per user; ``replay`` returns the
  events after a given id, or the whole retained log when that id is unknown
  (from another server epoch, or aged out), so a reconnecting client never
  misses what is still retained.  Clients deduplicate by id.
- Every live event of a user is offered to each local ``Subscription`` of that
  user; a subscription whose bounded queue is full (in items or in bytes) is
  closed (overflow), and its client reconnects and replays: nothing grows
  without bound.
- A user's log is bounded in events and in bytes, and is kept only for users
  who have had a device online: events for a user nobody can receive (a name
  that never connected) are offered to no one and not retained.  Such a
  user's pending rings still reach a device that connects later: they come
  from the call records (``ringing_calls_for``), not from the log.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import heapq
import secrets
import time
from typing import Any

import msgspec

from callctl.signaling.protocol import CallState, EndReason, Media, Party

#: How many events each user's log retains for replay, and how many bytes at most.
LOG_LENGTH = 256
LOG_BYTES = 1024 * 1024
#: A user log with no activity for this long (and no subscriber) is dropped.
LOG_IDLE_S = 3600.0
#: Ended calls stay readable (GET) for this long.
ENDED_CALL_RETENTION_S = 600.0
#: Each stream's queue of undelivered events.
SUBSCRIPTION_QUEUE = 512
#: ... and the bytes it may hold (a slow reader and large signals: 512 x 64 KiB would be 32 MiB).
SUBSCRIPTION_BYTES = 2 * 1024 * 1024


class CallRecord(msgspec.Struct, kw_only=True):
    call_id: str
    service: str
    caller: str
    callee: str
    media: Media
    offer_sdp: str
    state: CallState
    created_at: float
    ring_expires_at: float
    caller_device: str
    callee_device: str | None = None
    answer_sdp: str | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    reason: EndReason | None = None
    ended_by: Party | None = None
    #: True once at least one device of the callee was online while it rang.
    rang: bool = False
    #: Id of the ``call.incoming`` event in the callee's log.
    ring_event_id: str | None = None

    @property
    def caller_key(self) -> str:
        return f"{self.service}/{self.caller}"

    @property
    def callee_key(self) -> str:
        return f"{self.service}/{self.callee}"


class StoredEvent(msgspec.Struct, frozen=True):
    id: str
    name: str
    data: bytes
    #: Deliver only to this device of the user (None: every device).
    only_device: str | None = None
    #: Deliver to every device of the user but this one.
    except_device: str | None = None

    def for_device(self, device: str) -> bool:
        if self.only_device is not None and self.only_device != device:
            return False
        return self.except_device is None or self.except_device != device


class Opening(msgspec.Struct):
    """What a device's new event stream starts with (``Store.open_device``)."""

    #: Devices of the user online, this one included.
    online: int
    #: ``cursor`` of the user's log when the device registered.
    cursor: str
    #: The user's events after the stream's ``Last-Event-ID`` (none without one), every device's.
    backlog: list[StoredEvent]
    #: The calls ringing the user, oldest first.
    ringing: list[CallRecord]


class Heartbeat:
    """Queue item: time to write a keep-alive comment."""


class Close:
    """Queue item: end the stream with this reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


HEARTBEAT = Heartbeat()
QueueItem = StoredEvent | Heartbeat | Close


class Subscription:
    """One open event stream's inbox: a bounded deque of what to send, one waiter.

    Lighter than an asyncio.Queue (thousands of these stay open at once).
    """

    __slots__ = ("user_key", "device", "closed", "_items", "_waiter", "_bytes")

    def __init__(self, user_key: str, device: str) -> None:
        self.user_key = user_key
        self.device = device
        self.closed = False
        self._items: collections.deque[QueueItem] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: QueueItem) -> None:
        if self.closed:
            return
        size = len(item.data) if isinstance(item, StoredEvent) else 0
        if len(self._items) >= SUBSCRIPTION_QUEUE or self._bytes + size > SUBSCRIPTION_BYTES:
            self.close("overflow")
            return
        self._items.append(item)
        self._bytes += size
        self._wake()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if len(self._items) >= SUBSCRIPTION_QUEUE:  # make room: the close matters more
            self._items.popleft()
        self._items.append(Close(reason))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> QueueItem:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, StoredEvent):
            self._bytes -= len(item.data)
        return item

    def drain(self) -> list[QueueItem]:
        """Everything waiting, at once (for tests and shutdown)."""
        items = list(self._items)
        self._items.clear()
        return items


class LocalStreams:
    """The subscriptions of the streams open on this node, by user (every store has them)."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = collections.defaultdict(set)

    def subscribe(self, user_key: str, device: str) -> Subscription:
        sub = Subscription(user_key, device)
        self._subs[user_key].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.user_key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.user_key]
                self._no_streams(sub.user_key)

    def _no_streams(self, user_key: str) -> None:
        """The user's last stream here closed."""


class Store(abc.ABC):
    """The state one or more server nodes share."""

    #: Identifies this store's event-id epoch (a memory store's lifetime).
    epoch: str
    #: What the store raises while it cannot be reached (503 with Retry-After, not a 500).
    unavailable: tuple[type[BaseException], ...] = ()

    #: Goes up each time the store came back without this node's presence (a Redis restarted
    #: empty): rings that were sent meanwhile may have reached nobody here.
    recoveries: int = 0

    @property
    def healthy(self) -> bool:
        """False while the store cannot be reached."""
        return True

    # -- calls
    @abc.abstractmethod
    async def create_call(self, call: CallRecord) -> None: ...

    @abc.abstractmethod
    async def get_call(self, call_id: str) -> CallRecord | None: ...

    async def call_created_at(self, call_id: str) -> float | None:
        """When the call was created (its ring latency metric), without reading all of it."""
        call = await self.get_call(call_id)
        return call.created_at if call is not None else None

    @abc.abstractmethod
    async def update_call(
        self, call_id: str, expect: CallState, changes: dict[str, Any]
    ) -> tuple[CallRecord | None, bool]:
        """Apply ``changes`` only if the call is in state ``expect``.

        Returns (the record after the attempt or None if unknown, applied?).
        """

    @abc.abstractmethod
    async def ringing_calls_for(self, callee_key: str) -> list[CallRecord]: ...

    @abc.abstractmethod
    async def connected_call_of(self, user_key: str) -> str | None: ...

    @abc.abstractmethod
    async def count_active_calls(self) -> int: ...

    # -- events
    @abc.abstractmethod
    async def publish(
        self,
        user_key: str,
        name: str,
        data: bytes,
        *,
        only_device: str | None = None,
        except_device: str | None = None,
    ) -> str:
        """Append an event to the user's log, offer it to live subscriptions; its id."""

    @abc.abstractmethod
    async def replay(self, user_key: str, last_id: str) -> list[StoredEvent]: ...

    @abc.abstractmethod
    async def cursor(self, user_key: str) -> str:
        """An id such that replay(user, id) returns only events published later."""

    @abc.abstractmethod
    def is_after(self, event_id: str, last_id: str | None) -> bool:
        """True if ``event_id`` comes after ``last_id`` (unknown ids: True)."""

    @abc.abstractmethod
    def subscribe(self, user_key: str, device: str) -> Subscription: ...

    @abc.abstractmethod
    def unsubscribe(self, sub: Subscription) -> None: ...

    # -- presence
    @abc.abstractmethod
    async def register_device(self, user_key: str, device: str, stream: str, cap: int) -> int | None:
        """Mark a device online; number of devices online, or None over the cap."""

    async def open_device(self, user_key: str, device: str, stream: str, cap: int,
                          last_id: str | None) -> Opening | None:
        """``register_device``, and what the new stream sends first; None over the cap.

        A store that can (Redis: one script) does it all in one round trip: a
        thousand devices coming back at once from a node that died wait for
        nothing else.
        """
        online = await self.register_device(user_key, device, stream, cap)
        if online is None:
            return None
        try:
            cursor = await self.cursor(user_key)
            backlog = await self.replay(user_key, last_id) if last_id else []
            ringing = await self.ringing_calls_for(user_key)
        except BaseException:
            await self.unregister_device(user_key, device, stream)
            raise
        return Opening(online, cursor, backlog, ringing)

    async def stream_started(self, user_key: str, device: str, stream: str) -> None:  # noqa: B027
        """The stream's client got its first bytes: a stream of the device elsewhere ends now
        (not at registration: a client that gave up on a slow open must not end its newer one)."""

    @abc.abstractmethod
    async def unregister_device(self, user_key: str, device: str, stream: str) -> None:
        """Mark offline, unless a newer stream of the same device took over."""

    @abc.abstractmethod
    async def devices_online(self, user_key: str) -> set[str]: ...

    # -- stream tickets (browsers: EventSource cannot send an Authorization header)
    @abc.abstractmethod
    async def put_ticket(self, ticket: str, value: bytes, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def take_ticket(self, ticket: str) -> bytes | None:
        """The ticket's value, once: it is gone afterwards (and after its TTL)."""

    # -- rate limits
    @abc.abstractmethod
    async def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        """Token bucket: 0.0 if allowed, else seconds until a token is free."""

    # -- timers (ring timeouts): each fires once, on whichever node claims it
    @abc.abstractmethod
    async def schedule(self, timer: str, at: float) -> None:
        """Keep ``timer`` due at wall-clock ``at``."""

    @abc.abstractmethod
    async def claim(self, timer: str, at: float | None = None) -> bool:
        """Take the timer away: True for the one caller that got it (it fires the timer).

        With ``at``: only if it is still due then (not scheduled again since)."""

    @abc.abstractmethod
    async def overdue(self, before: float, limit: int = 100) -> list[str]:
        """Claim and return timers due before ``before`` (their node did not fire them)."""

    async def reap_dead_nodes(self, offline_grace_s: float) -> int:
        """Take the devices of nodes that died offline, each with an offline timer; how many."""
        return 0

    # -- housekeeping
    async def start(self) -> None:  # noqa: B027 - optional
        """Connect (a shared store), before the first stream opens."""

    async def purge(self, now: float) -> None:  # noqa: B027 - optional
        """Drop expired state (stores with TTLs need not do anything)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class MemoryStore(LocalStreams, Store):
    """All state in this process: the single-node default, lost on restart."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = secrets.token_hex(4)
        self._calls: dict[str, CallRecord] = {}
        self._ringing: dict[str, set[str]] = collections.defaultdict(set)
        self._connected: dict[str, str] = {}
        self._logs: dict[str, collections.deque[StoredEvent]] = {}
        self._log_bytes: dict[str, int] = {}
        self._log_touched: dict[str, float] = {}
        #: Users who have had a device online: only their events are retained.
        self._known: set[str] = set()
        self._seq = 0
        self._devices: dict[str, dict[str, str]] = collections.defaultdict(dict)
        #: key -> (tokens, when counted, when it is full again)
        self._buckets: dict[str, tuple[float, float, float]] = {}
        self._tickets: dict[str, tuple[bytes, float]] = {}
        self._timers: dict[str, float] = {}
        self._timer_heap: list[tuple[float, str]] = []

    # -- calls
    async def create_call(self, call: CallRecord) -> None:
        self._calls[call.call_id] = call
        self._index(call, None)

    async def get_call(self, call_id: str) -> CallRecord | None:
        call = self._calls.get(call_id)
        return msgspec.structs.replace(call) if call is not None else None

    async def update_call(
        self, call_id: str, expect: CallState, changes: dict[str, Any]
    ) -> tuple[CallRecord | None, bool]:
        call = self._calls.get(call_id)
        if call is None:
            return None, False
        if call.state != expect:
            return msgspec.structs.replace(call), False
        before = call.state
        for name, value in changes.items():
            setattr(call, name, value)
        self._index(call, before)
        return msgspec.structs.replace(call), True

    def _index(self, call: CallRecord, before: CallState | None) -> None:
        if before == call.state:
            return
        if before == CallState.RINGING:
            self._ringing[call.callee_key].discard(call.call_id)
            if not self._ringing[call.callee_key]:
                del self._ringing[call.callee_key]
        if before == CallState.CONNECTED:
            for key in (call.caller_key, call.callee_key):
                if self._connected.get(key) == call.call_id:
                    del self._connected[key]
        if call.state == CallState.RINGING:
            self._ringing[call.callee_key].add(call.call_id)
        elif call.state == CallState.CONNECTED:
            self._connected[call.caller_key] = call.call_id
            self._connected[call.callee_key] = call.call_id

    async def ringing_calls_for(self, callee_key: str) -> list[CallRecord]:
        ids = self._ringing.get(callee_key, ())
        return sorted(
            (msgspec.structs.replace(self._calls[i]) for i in ids), key=lambda c: c.created_at
        )

    async def connected_call_of(self, user_key: str) -> str | None:
        return self._connected.get(user_key)

    async def count_active_calls(self) -> int:
        return sum(len(v) for v in self._ringing.values()) + len(self._connected) // 2

    # -- events
    async def publish(
        self,
        user_key: str,
        name: str,
        data: bytes,
        *,
        only_device: str | None = None,
        except_device: str | None = None,
    ) -> str:
        self._seq += 1
        event = StoredEvent(
            f"{self.epoch}-{self._seq}", name, data, only_device, except_device
        )
        if user_key in self._known:
            self._retain(user_key, event)
        for sub in self._subs.get(user_key, ()):
            if event.for_device(sub.device):
                sub.offer(event)
        return event.id

    def _retain(self, user_key: str, event: StoredEvent) -> None:
        log = self._logs.get(user_key)
        if log is None:
            log = self._logs[user_key] = collections.deque()
        log.append(event)
        size = self._log_bytes.get(user_key, 0) + len(event.data)
        while len(log) > 1 and (len(log) > LOG_LENGTH or size > LOG_BYTES):
            size -= len(log.popleft().data)
        self._log_bytes[user_key] = size
        self._log_touched[user_key] = time.monotonic()

    async def replay(self, user_key: str, last_id: str) -> list[StoredEvent]:
        log = self._logs.get(user_key)
        if not log:
            return []
        return [e for e in log if self.is_after(e.id, last_id)]

    async def cursor(self, user_key: str) -> str:
        return f"{self.epoch}-{self._seq}"

    def is_after(self, event_id: str, last_id: str | None) -> bool:
        if not last_id:
            return True
        epoch, _, seq = last_id.partition("-")
        if epoch != self.epoch or not seq.isdigit():
            return True
        return int(event_id.partition("-")[2]) > int(seq)

    # -- presence
    async def register_device(self, user_key: str, device: str, stream: str, cap: int) -> int | None:
        devices = self._devices[user_key]
        if device not in devices and len(devices) >= cap:
            if not devices:
                del self._devices[user_key]
            return None
        devices[device] = stream
        self._known.add(user_key)
        return len(devices)

    async def unregister_device(self, user_key: str, device: str, stream: str) -> None:
        devices = self._devices.get(user_key)
        if devices is not None and devices.get(device) == stream:
            del devices[device]
            if not devices:
                del self._devices[user_key]

    async def devices_online(self, user_key: str) -> set[str]:
        return set(self._devices.get(user_key, ()))

    # -- stream tickets
    async def put_ticket(self, ticket: str, value: bytes, ttl_s: float) -> None:
        self._tickets[ticket] = (value, time.monotonic() + ttl_s)

    async def take_ticket(self, ticket: str) -> bytes | None:
        found = self._tickets.pop(ticket, None)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    # -- rate limits
    async def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        now = time.monotonic()
        tokens, last, _ = self._buckets.get(key, (float(burst), now, now))
        tokens = min(float(burst), tokens + (now - last) * rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate_per_s
        self._buckets[key] = (tokens, now, now + (burst - tokens) / rate_per_s)
        return wait

    # -- timers
    async def schedule(self, timer: str, at: float) -> None:
        self._timers[timer] = at
        heapq.heappush(self._timer_heap, (at, timer))

    async def claim(self, timer: str, at: float | None = None) -> bool:
        if at is not None and self._timers.get(timer) != at:
            return False
        return self._timers.pop(timer, None) is not None

    async def overdue(self, before: float, limit: int = 100) -> list[str]:
        due: list[str] = []
        heap = self._timer_heap
        while heap and heap[0][0] < before and len(due) < limit:
            at, timer = heapq.heappop(heap)
            if self._timers.get(timer) == at:  # not claimed, not scheduled again since
                del self._timers[timer]
                due.append(timer)
        return due

    # -- housekeeping
    async def purge(self, now: float) -> None:
        for call_id in [
            c.call_id
            for c in self._calls.values()
            if c.state == CallState.ENDED and (c.ended_at or 0) < now - ENDED_CALL_RETENTION_S
        ]:
            del self._calls[call_id]
        mono = time.monotonic()
        for key in [
            k for k, t in self._log_touched.items() if t < mono - LOG_IDLE_S and k not in self._subs
        ]:
            del self._logs[key]
            del self._log_touched[key]
            self._log_bytes.pop(key, None)
        self._tickets = {k: v for k, v in self._tickets.items() if v[1] >= mono}
        # a full bucket is the same as no bucket: forget it as soon as it would be full again
        self._buckets = {k: v for k, v in self._buckets.items() if mono < v[2]}


class StoreConfigError(Exception):
    """A ``--store`` value that names no store we have."""


STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(url: str | None) -> Store:
    """``memory`` (or nothing): this process's own; ``redis://HOST:PORT/DB``: shared by nodes."""
    if not url or url == "memory":
        return MemoryStore()
    if not url.startswith(STORE_SCHEMES):
        raise StoreConfigError(f"--store {url!r}: expected memory or redis://HOST:PORT/DB "
                               "(rediss:// for TLS, unix:///path/redis.sock)")
    from callctl.server.store_redis import RedisStore

    try:
        return RedisStore(url)
    except ValueError as exc:
        raise StoreConfigError(f"--store {url!r}: {exc}") from None


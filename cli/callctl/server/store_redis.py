"""The Store on Redis: several server nodes share calls, event logs and presence.

What each key holds (``P`` is the key prefix, ``callctl:`` by default; the
table in docs/SCALING.md says the same with expiries):

- ``P epoch`` – this data set's epoch, part of every event id.  A Redis that
  lost its data gets a new one, and clients replay what is retained.
- ``P call:ID`` – a hash, one JSON value per field of the call record.
  Transitions are Lua scripts: compare-and-set on the state, the ringing and
  connected indexes and ``P active`` changed in the same step.
- ``P ringing:SVC/USER`` (sorted set, by creation), ``P connected:SVC/USER``
  (the user's connected call), ``P active`` (calls ringing or connected).
- ``P log:SVC/USER`` – the user's events (a Redis stream, bounded in events
  and bytes; ``P logbytes:SVC/USER`` counts its bytes), kept only for users
  who have had a device online (``P known:SVC/USER``).
- ``P dev:SVC/USER`` – the user's devices online: device → ``NODE|STREAM``.
  A device counts only while its node's ``P node:NODE`` key lives (each node
  renews it every second; it expires ``NODE_TTL_S`` after a node dies).
- ``P ticket:T``, ``P bucket:KEY`` – stream tickets and rate-limit buckets.

Live delivery: appending to a log and fanning the event out are one script,
which publishes it on ``P to:NODE`` for each other node holding a device of
the user (one channel per node, whatever its number of streams).  Each node
subscribes to its own channel and offers what arrives to its local streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from callctl.server.redis_batch import BatchingRedis
from callctl.server.store import (
    ENDED_CALL_RETENTION_S,
    LOG_BYTES,
    LOG_IDLE_S,
    LOG_LENGTH,
    CallRecord,
    LocalStreams,
    Opening,
    Store,
    StoredEvent,
)
from callctl.signaling.protocol import CallState

log = logging.getLogger(__name__)

#: Connections each node keeps to Redis at most, and how long a request waits for a free one.
MAX_CONNECTIONS = 64
POOL_WAIT_S = 5.0
#: A node's liveness key lives this long after its last renewal (renewed every second).
NODE_TTL_S = 5.0
#: A call record expires this long after its last change, whatever its state (a safety net:
#: an ended call expires ENDED_CALL_RETENTION_S after it ended).
CALL_TTL_S = 86400
#: A user stays "known" (events retained) this long after a device of theirs was last online.
KNOWN_TTL_S = 7 * 86400
#: A user's presence hash outlives its last registration by this much (dead nodes' leftovers).
PRESENCE_TTL_S = 86400

_RINGING = msgspec.json.encode(CallState.RINGING.value)
_CONNECTED = msgspec.json.encode(CallState.CONNECTED.value)
_ENDED = msgspec.json.encode(CallState.ENDED.value)

# The ringing/connected/active indexes follow a call from state `old` to `new`.
# `key` is the call's hash; ARGV[1] is the key prefix.
_INDEX = """
local function f(key, name)
  local v = redis.call('HGET', key, name)
  if not v then return nil end
  return cjson.decode(v)
end
local function reindex(prefix, key, old, new, ended_ttl)
  if old == new then return end
  local id = f(key, 'call_id')
  local svc = f(key, 'service')
  local caller = prefix .. 'connected:' .. svc .. '/' .. f(key, 'caller')
  local callee_user = svc .. '/' .. f(key, 'callee')
  local callee = prefix .. 'connected:' .. callee_user
  local ringing = prefix .. 'ringing:' .. callee_user
  local created = redis.call('HGET', key, 'created_at')
  if old == '"ringing"' then redis.call('ZREM', ringing, id) end
  if old == '"connected"' then
    if redis.call('GET', caller) == id then redis.call('DEL', caller) end
    if redis.call('GET', callee) == id then redis.call('DEL', callee) end
  end
  if new == '"ringing"' then
    redis.call('ZADD', ringing, created, id)
    redis.call('ZADD', prefix .. 'active', created, id)
  elseif new == '"connected"' then
    redis.call('SET', caller, id)
    redis.call('SET', callee, id)
    redis.call('ZADD', prefix .. 'active', created, id)
  else
    redis.call('ZREM', prefix .. 'active', id)
  end
  if new == '"ended"' then
    local ended_at = f(key, 'ended_at')
    if type(ended_at) == 'number' then
      redis.call('EXPIREAT', key, math.floor(ended_at + ended_ttl) + 1)
    else
      redis.call('EXPIRE', key, ended_ttl)
    end
  end
end
"""

# KEYS[1] call hash; ARGV: prefix, ended ttl, call ttl, field, value, ...
_CREATE = _INDEX + """
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
reindex(ARGV[1], KEYS[1], false, redis.call('HGET', KEYS[1], 'state'), tonumber(ARGV[2]))
return 1
"""

# KEYS[1] call hash; ARGV: prefix, ended ttl, call ttl, expected state, field, value, ...
# -> {0} unknown, {1, fields} not applied, {2, fields} applied
_UPDATE = _INDEX + """
local old = redis.call('HGET', KEYS[1], 'state')
if not old then return {0} end
if old ~= ARGV[4] then return {1, redis.call('HGETALL', KEYS[1])} end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
reindex(ARGV[1], KEYS[1], old, redis.call('HGET', KEYS[1], 'state'), tonumber(ARGV[2]))
return {2, fields}
"""

_NODE_OF = """
local function node_of(v) return string.match(v, '^([^|]*)|') end
"""

# KEYS: known, log, logbytes, dev; ARGV: name, data, only, except, this node, channel prefix,
# log length, log bytes, log idle s, message tail -> the event's stream id
_PUBLISH = _NODE_OF + """
local id
if redis.call('EXISTS', KEYS[1]) == 1 then
  local fields = {'n', ARGV[1], 'd', ARGV[2], 'o', ARGV[3], 'x', ARGV[4]}
  id = redis.call('XADD', KEYS[2], '*', unpack(fields))
  local size = redis.call('INCRBY', KEYS[3], #ARGV[2])
  local length = redis.call('XLEN', KEYS[2])
  while length > 1 and (length > tonumber(ARGV[7]) or size > tonumber(ARGV[8])) do
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    local entry = oldest[2]
    for i = 1, #entry, 2 do
      if entry[i] == 'd' then size = size - #entry[i + 1] end
    end
    redis.call('XDEL', KEYS[2], oldest[1])
    length = length - 1
  end
  redis.call('SET', KEYS[3], size, 'EX', ARGV[9])
  redis.call('EXPIRE', KEYS[2], ARGV[9])
else
  local t = redis.call('TIME')
  id = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) .. '-0'
end
local seen = {}
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do
  local node = node_of(v)
  if node and node ~= ARGV[5] and not seen[node] then
    seen[node] = true
    redis.call('PUBLISH', ARGV[6] .. node, id .. '|' .. ARGV[10])
  end
end
return id
"""

# Devices whose node is gone do not count (the reaper removes them, and starts their grace).
_LIVE = _NODE_OF + """
local function live(prefix, key)
  local out = {}
  local cur = redis.call('HGETALL', key)
  for i = 1, #cur, 2 do
    local node = node_of(cur[i + 1])
    if node and redis.call('EXISTS', prefix .. 'node:' .. node) == 1 then
      out[cur[i]] = cur[i + 1]
    end
  end
  return out
end
"""

# KEYS: dev, known; ARGV: prefix, device, NODE|STREAM, cap, known ttl, presence ttl, user key,
# channel prefix -> {devices online, the NODE|STREAM it displaced or ''}, or -1 over the cap
_REGISTER_FN = _LIVE + """
local function register()
  local devices = live(ARGV[1], KEYS[1])
  local count = 0
  for _ in pairs(devices) do count = count + 1 end
  local old = devices[ARGV[2]]
  if not old and count >= tonumber(ARGV[4]) then return -1 end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('SADD', ARGV[1] .. 'nodedev:' .. node_of(ARGV[3]), ARGV[7] .. '|' .. ARGV[2])
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[5])
  -- the stream it replaces, if on another node: told once this one has started (stream_started)
  local moved = ''
  if old and old ~= ARGV[3] and node_of(old) ~= node_of(ARGV[3]) then moved = old end
  if old then return {count, moved} end
  return {count + 1, moved}
end
"""
_REGISTER = _REGISTER_FN + "return register()\n"

# A stream opening, in one round trip: KEYS as _REGISTER's, then log, ringing; ARGV as _REGISTER's,
# then where the replay starts ('': none, '-': all of it, '(ID': after ID) -> -1 over the cap, or
# {devices online, displaced, the log's last id or '', the replayed entries, {call id, its
# fields} of each call ringing the user}
_OPEN = _REGISTER_FN + """
local got = register()
if got == -1 then return -1 end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local replay = {}
if ARGV[9] ~= '' then replay = redis.call('XRANGE', KEYS[3], ARGV[9], '+') end
local ringing = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  table.insert(ringing, {id, redis.call('HGETALL', ARGV[1] .. 'call:' .. id)})
end
return {got[1], got[2], last[1] and last[1][1] or '', replay, ringing}
"""

# KEYS: dev, this node's devices; ARGV: device, NODE|STREAM, user key, the entry to put back
# ('' : none; a stream that never started gives the device back to the one it displaced)
_UNREGISTER = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  else redis.call('HDEL', KEYS[1], ARGV[1]) end
end
redis.call('SREM', KEYS[2], ARGV[3] .. '|' .. ARGV[1])
return 1
"""

# KEYS: dev; ARGV: prefix -> device names
_ONLINE = _LIVE + """
local names = {}
for name in pairs(live(ARGV[1], KEYS[1])) do table.insert(names, name) end
return names
"""

# KEYS: bucket; ARGV: rate per s, burst -> seconds to wait (as a string: Lua numbers become integers)
_TAKE_TOKEN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens), 'l', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


# KEYS: timers; ARGV: before, limit -> the timers taken
_OVERDUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


# KEYS: node, epoch, nodes; ARGV: ttl ms, a new epoch, node -> {node key existed?, the epoch}
_RENEW = """
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'NX')
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], t[1], ARGV[3])
return {had, redis.call('GET', KEYS[2])}
"""

# KEYS: timers; ARGV: timer, due time (as scheduled) -> 1 if taken
_CLAIM_AT = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at and tonumber(at) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: nodes, timers; ARGV: prefix, node ttl s, offline grace s -> devices taken offline.
# A node whose liveness key is gone and that renewed nothing for a node ttl is dead: one
# script, so exactly one node reaps it.
_REAP = _NODE_OF + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local gone = 0
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    redis.call('ZREM', KEYS[1], node)
    local held = ARGV[1] .. 'nodedev:' .. node
    for _, member in ipairs(redis.call('SMEMBERS', held)) do
      local user, device = string.match(member, '^(.*)|([^|]*)$')
      local dev = ARGV[1] .. 'dev:' .. user
      local v = redis.call('HGET', dev, device)
      if v and node_of(v) == node then
        redis.call('HDEL', dev, device)
        redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), 'offline:' .. member)
        gone = gone + 1
      end
    end
    redis.call('DEL', held)
  end
end
return gone
"""


def _event_message(user_key: str, name: str, data: bytes, only: str | None,
                   except_: str | None) -> bytes:
    return msgspec.msgpack.encode((user_key, name, data, only, except_))


class RedisStore(LocalStreams, Store):
    """State in Redis, shared by every node that uses the same URL and prefix."""

    unavailable = (RedisError, OSError)

    def __init__(self, url: str, *, prefix: str = "callctl:", node: str | None = None) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.node = node or secrets.token_hex(4)
        self.epoch = ""
        # Any: redis-py types every reply as bytes | str (decode_responses); ours are bytes
        # a blocking pool: a burst of requests waits for a connection instead of failing
        # (redis-py's default pool raises at its 100th connection in use)
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, decode_responses=False,
            socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10)
        # the commands of concurrent requests go out together (redis_batch.py)
        self._redis: Any = BatchingRedis(connection_pool=pool)
        self._scripts = {name: self._redis.register_script(text) for name, text in (
            ("create", _CREATE), ("update", _UPDATE), ("publish", _PUBLISH),
            ("register", _REGISTER), ("open", _OPEN), ("unregister", _UNREGISTER), ("online", _ONLINE),
            ("take_token", _TAKE_TOKEN), ("overdue", _OVERDUE), ("renew", _RENEW),
            ("claim_at", _CLAIM_AT), ("reap", _REAP))}
        #: The newest event offered here to each user with streams on this node.
        self._last_seen: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        #: The channel is listened to (set once subscribed, cleared while Redis is away).
        self.listening = asyncio.Event()
        #: Redis answered the last node-liveness renewal.
        self._healthy = False
        #: (user key, device, stream) of a stream not yet started -> the NODE|STREAM elsewhere
        #: it displaced (told to end once this one starts; put back if it never does).
        self._displaced: dict[tuple[str, str, str], str] = {}
        #: This node's devices online: (user key, device) -> stream (registered again after an
        #: outage: a Redis that lost its data has no presence left).
        self._registered: dict[tuple[str, str], str] = {}

    def _k(self, *parts: str) -> str:
        return self.prefix + "".join(parts)

    # -- lifecycle
    async def start(self) -> None:
        """Read (or make) the epoch, announce this node, listen to its channel."""
        if self._started:
            return
        self._started = True
        await self._renew()
        self._tasks = [asyncio.create_task(self._keep_alive(), name="redis-node-alive"),
                       asyncio.create_task(self._listen(), name="redis-node-listen")]
        await self.listening.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._started:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(self._k("node:", self.node))
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def _renew(self) -> None:
        """Renew this node's key; a Redis that lost it (and the epoch) lost our presence too."""
        had, epoch = await self._scripts["renew"](
            keys=[self._k("node:", self.node), self._k("epoch"), self._k("nodes")],
            args=[int(NODE_TTL_S * 1000), secrets.token_hex(4), self.node])
        self._healthy = True
        if epoch.decode() != self.epoch or not had:
            await self._recover(epoch.decode())

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._renew()
            except self.unavailable as exc:
                if self._healthy:
                    log.warning("redis unreachable: %s", exc)
                self._healthy = False

    async def _recover(self, epoch: str) -> None:
        """Redis forgot this node (restarted, or this node was away too long): presence again,
        and the new epoch if its data is gone (clients then replay what is retained)."""
        if not self.epoch:  # this node's start
            self.epoch = epoch
            return
        if epoch != self.epoch:
            log.warning("redis lost its data (epoch %s -> %s)", self.epoch, epoch)
            self.epoch = epoch
        for (user_key, device), stream in list(self._registered.items()):
            await self._scripts["register"](
                keys=[self._k("dev:", user_key), self._k("known:", user_key)],
                args=[self.prefix, device, f"{self.node}|{stream}", 1_000_000, KNOWN_TTL_S,
                      PRESENCE_TTL_S, user_key, self._k("to:")])
        self.recoveries += 1
        if self._registered:
            log.warning("redis had forgotten this node: devices online here registered again: %d",
                        len(self._registered))

    async def _listen(self) -> None:
        channel = self._k("to:", self.node)
        backoff, lost = 0.2, False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                if lost:  # what was published meanwhile came to nobody here: from the logs
                    await self._catch_up()
                self.listening.set()
                backoff, lost = 0.2, False
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(message["data"])
            except self.unavailable as exc:
                lost = True
                self.listening.clear()
                log.warning("redis channel lost (%s); again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _deliver(self, raw: bytes) -> None:
        head, _, tail = raw.partition(b"|")
        if head == b"!replaced":
            user_key, device, _, stream = tail.decode().split("|", 3)
            if self._registered.get((user_key, device)) != stream:
                return  # that stream is gone here already (a newer one may have come back)
            for sub in list(self._subs.get(user_key, ())):
                if sub.device == device:
                    sub.close("replaced")
            return
        try:
            user_key, name, data, only, except_ = msgspec.msgpack.decode(tail)
        except (msgspec.DecodeError, ValueError, TypeError):
            log.warning("a malformed message on this node's channel was dropped")
            return
        self._offer(user_key, StoredEvent(f"{self.epoch}-{head.decode()}", name, data, only, except_))

    def _offer(self, user_key: str, event: StoredEvent) -> None:
        subs = self._subs.get(user_key)
        if not subs:
            return
        self._last_seen[user_key] = event.id
        for sub in list(subs):
            if event.for_device(sub.device):
                sub.offer(event)

    async def _catch_up(self) -> None:
        """Offer each local user the events logged since the last one this node saw.

        Streams drop what they already sent (ids only go up), so a doubled event is harmless."""
        for user_key in list(self._subs):
            last = self._last_seen.get(user_key)
            if last is None:
                continue
            for event in await self.replay(user_key, last):
                self._offer(user_key, event)

    # -- calls
    @staticmethod
    def _fields(values: dict[str, Any]) -> list[bytes | str]:
        out: list[bytes | str] = []
        for name, value in values.items():
            out += [name, msgspec.json.encode(value)]
        return out

    @staticmethod
    def _record(flat: list[bytes]) -> CallRecord:
        raw = {flat[i].decode(): msgspec.json.decode(flat[i + 1]) for i in range(0, len(flat), 2)}
        return msgspec.convert(raw, CallRecord)

    async def create_call(self, call: CallRecord) -> None:
        fields = self._fields(msgspec.structs.asdict(call))
        await self._scripts["create"](
            keys=[self._k("call:", call.call_id)],
            args=[self.prefix, ENDED_CALL_RETENTION_S, CALL_TTL_S, *fields])

    async def get_call(self, call_id: str) -> CallRecord | None:
        flat = await self._redis.hgetall(self._k("call:", call_id))
        if not flat:
            return None
        return self._record([x for kv in flat.items() for x in kv])

    async def call_created_at(self, call_id: str) -> float | None:
        raw = await self._redis.hget(self._k("call:", call_id), "created_at")
        return float(raw) if raw is not None else None

    async def update_call(
        self, call_id: str, expect: CallState, changes: dict[str, Any]
    ) -> tuple[CallRecord | None, bool]:
        result = await self._scripts["update"](
            keys=[self._k("call:", call_id)],
            args=[self.prefix, ENDED_CALL_RETENTION_S, CALL_TTL_S,
                  msgspec.json.encode(expect.value), *self._fields(changes)])
        if result[0] == 0:
            return None, False
        return self._record(result[1]), result[0] == 2

    async def ringing_calls_for(self, callee_key: str) -> list[CallRecord]:
        ids = await self._redis.zrange(self._k("ringing:", callee_key), 0, -1)
        calls = []
        for call_id in ids:
            call = await self.get_call(call_id.decode())
            if call is not None and call.state == CallState.RINGING:
                calls.append(call)
        return sorted(calls, key=lambda c: c.created_at)

    async def connected_call_of(self, user_key: str) -> str | None:
        value = await self._redis.get(self._k("connected:", user_key))
        return value.decode() if value is not None else None

    async def count_active_calls(self) -> int:
        return int(await self._redis.zcard(self._k("active")))

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
        raw = await self._scripts["publish"](
            keys=[self._k("known:", user_key), self._k("log:", user_key),
                  self._k("logbytes:", user_key), self._k("dev:", user_key)],
            args=[name, data, only_device or "", except_device or "", self.node, self._k("to:"),
                  LOG_LENGTH, LOG_BYTES, int(LOG_IDLE_S),
                  _event_message(user_key, name, data, only_device, except_device)])
        event = StoredEvent(f"{self.epoch}-{raw.decode()}", name, data, only_device, except_device)
        self._offer(user_key, event)
        return event.id

    def _stream_id(self, event_id: str | None) -> str | None:
        """The Redis stream id inside one of our event ids, if it is of this epoch."""
        if not event_id:
            return None
        epoch, _, rest = event_id.partition("-")
        ms, _, seq = rest.partition("-")
        if epoch != self.epoch or not (ms + seq).isascii() or not ms.isdigit() or not seq.isdigit():
            return None
        return rest

    def _replay_start(self, last_id: str) -> str:
        """Where XRANGE starts for a replay after ``last_id``: after it, or (another epoch's
        id) at the start of what is retained."""
        after = self._stream_id(last_id)
        return f"({after}" if after else "-"

    def _event(self, entry_id: bytes, fields: dict[bytes, bytes]) -> StoredEvent:
        return StoredEvent(
            f"{self.epoch}-{entry_id.decode()}", fields[b"n"].decode(), fields[b"d"],
            fields[b"o"].decode() or None, fields[b"x"].decode() or None)

    async def replay(self, user_key: str, last_id: str) -> list[StoredEvent]:
        entries = await self._redis.xrange(self._k("log:", user_key), self._replay_start(last_id), "+")
        return [self._event(entry_id, fields) for entry_id, fields in entries]

    def _cursor(self, user_key: str, last_entry: bytes | None) -> str:
        cursor = f"{self.epoch}-{last_entry.decode()}" if last_entry else f"{self.epoch}-0-0"
        if user_key in self._subs:  # a stream opens here: catching up starts from its cursor
            self._last_seen.setdefault(user_key, cursor)
        return cursor

    async def cursor(self, user_key: str) -> str:
        last = await self._redis.xrevrange(self._k("log:", user_key), "+", "-", count=1)
        return self._cursor(user_key, last[0][0] if last else None)

    def is_after(self, event_id: str, last_id: str | None) -> bool:
        after = self._stream_id(last_id)
        if after is None:
            return True
        mine = self._stream_id(event_id)
        if mine is None:
            return True
        a_ms, _, a_seq = after.partition("-")
        m_ms, _, m_seq = mine.partition("-")
        return (int(m_ms), int(m_seq)) > (int(a_ms), int(a_seq))

    def _no_streams(self, user_key: str) -> None:
        self._last_seen.pop(user_key, None)

    # -- presence
    async def register_device(self, user_key: str, device: str, stream: str, cap: int) -> int | None:
        result = await self._scripts["register"](
            keys=[self._k("dev:", user_key), self._k("known:", user_key)],
            args=[self.prefix, device, f"{self.node}|{stream}", cap, KNOWN_TTL_S, PRESENCE_TTL_S,
                  user_key, self._k("to:")])
        if not isinstance(result, list):
            return None  # over the cap
        self._registered_here(user_key, device, stream, result[1])
        return int(result[0])

    def _registered_here(self, user_key: str, device: str, stream: str, moved: bytes) -> None:
        """A register script's answer: the device is this node's, and the stream it displaced
        elsewhere (if any) is told once this one has started."""
        self._registered[(user_key, device)] = stream
        if moved:
            self._displaced[(user_key, device, stream)] = moved.decode()

    async def open_device(self, user_key: str, device: str, stream: str, cap: int,
                          last_id: str | None) -> Opening | None:
        start = self._replay_start(last_id) if last_id else ""
        result = await self._scripts["open"](
            keys=[self._k("dev:", user_key), self._k("known:", user_key), self._k("log:", user_key),
                  self._k("ringing:", user_key)],
            args=[self.prefix, device, f"{self.node}|{stream}", cap, KNOWN_TTL_S, PRESENCE_TTL_S,
                  user_key, self._k("to:"), start])
        if not isinstance(result, list):
            return None  # over the cap
        online, moved, last, entries, ringing = result
        self._registered_here(user_key, device, stream, moved)
        cursor = self._cursor(user_key, last or None)
        backlog = [self._event(entry_id, dict(zip(flat[::2], flat[1::2]))) for entry_id, flat in entries]
        calls = [self._record(flat) for _, flat in ringing if flat]
        return Opening(int(online), cursor, backlog,
                       sorted((c for c in calls if c.state == CallState.RINGING), key=lambda c: c.created_at))

    async def stream_started(self, user_key: str, device: str, stream: str) -> None:
        moved = self._displaced.pop((user_key, device, stream), None)
        if moved is not None:  # the device moved to this node: its stream there is replaced
            node = moved.partition("|")[0]
            await self._redis.publish(self._k("to:", node),
                                      f"!replaced|{user_key}|{device}|{moved}".encode())

    async def unregister_device(self, user_key: str, device: str, stream: str) -> None:
        if self._registered.get((user_key, device)) == stream:
            del self._registered[(user_key, device)]
        displaced = self._displaced.pop((user_key, device, stream), "")
        await self._scripts["unregister"](
            keys=[self._k("dev:", user_key), self._k("nodedev:", self.node)],
            args=[device, f"{self.node}|{stream}", user_key, displaced])

    async def devices_online(self, user_key: str) -> set[str]:
        names = await self._scripts["online"](keys=[self._k("dev:", user_key)], args=[self.prefix])
        return {n.decode() for n in names}

    # -- stream tickets
    async def put_ticket(self, ticket: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(self._k("ticket:", ticket), value, px=max(1, int(ttl_s * 1000)))

    async def take_ticket(self, ticket: str) -> bytes | None:
        value: bytes | None = await self._redis.getdel(self._k("ticket:", ticket))
        return value

    # -- rate limits
    async def take_token(self, key: str, rate_per_s: float, burst: int) -> float:
        wait = await self._scripts["take_token"](keys=[self._k("bucket:", key)],
                                                 args=[rate_per_s, burst])
        return float(wait)

    # -- timers: one sorted set, by due time; whoever removes an entry fires it
    async def schedule(self, timer: str, at: float) -> None:
        await self._redis.zadd(self._k("timers"), {timer: at})

    async def claim(self, timer: str, at: float | None = None) -> bool:
        if at is None:
            return bool(await self._redis.zrem(self._k("timers"), timer))
        return bool(await self._scripts["claim_at"](keys=[self._k("timers")], args=[timer, repr(at)]))

    async def reap_dead_nodes(self, offline_grace_s: float) -> int:
        gone = await self._scripts["reap"](
            keys=[self._k("nodes"), self._k("timers")],
            args=[self.prefix, NODE_TTL_S, offline_grace_s])
        return int(gone)

    async def overdue(self, before: float, limit: int = 100) -> list[str]:
        due = await self._scripts["overdue"](keys=[self._k("timers")], args=[before, limit])
        return [t.decode() for t in due]

    # -- housekeeping: every key has its expiry
    async def purge(self, now: float) -> None:
        return None

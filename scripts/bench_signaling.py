#!/usr/bin/env python3
"""Load benchmark for the callctl signaling server (``callctl server``).

Starts one server process on 127.0.0.1 (own temp dir and secret), then, from
this process acting as the load generator:

1. opens N idle authenticated event streams (``GET /v1/events``) as N distinct
   users, each waiting for its ``registered`` event, and measures the server's
   RSS before and after (``/proc/PID/status`` VmRSS);
2. drives call set-ups at a fixed rate (open loop) from a few dozen caller
   identities over keep-alive HTTP/1.1 connections, to callees among the users
   holding streams, and measures ring delivery latency: from writing
   ``POST /v1/calls`` to the callee's stream receiving the matching
   ``call.incoming`` (matched by ``call_id``).  Each call is hung up afterwards.

The idle streams use bare asyncio transports/protocols with a small chunked +
SSE parser (no task and no HTTP library per connection) so that the generator
stays light; it still shares the machine's cores with the server, so the
latencies include the generator's own scheduling delay (its event-loop lag is
reported alongside).  Traffic goes to 127.0.0.1 only.

With ``--nodes N`` (N >= 2) it starts a private ``redis-server`` and N server
nodes on it (``--store redis://``, one signing secret), instead:

1. the idle streams go round-robin over the nodes; each node's RSS per stream,
   and Redis's (its VmRSS and ``INFO memory`` used_memory) per stream;
2. the call set-ups always have the caller on another node than the callee's
   stream, so every ring crosses Redis (the callers are spread over the nodes);
3. with ``--kill-node``, a second run of set-ups at the same rate during which
   one node is killed (SIGKILL) half way: its streams come back on the other
   nodes with their ``Last-Event-ID`` after the client's backoff (as behind a
   load balancer), its callers move too.  Reported: rings lost of calls whose
   POST succeeded (a ring may wait for its device to come back: lost only
   after ``RING_LOST_AFTER_KILL_S``), and how soon after the kill the node's
   devices are reachable again: each device's new ``registered``, and probe
   calls placed right after the kill to a sample of them (their ring time).

Exit status: 0 no target missed, 1 a target missed, 2 the benchmark could not
run (error or overall timeout), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis as redis_py

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "cli"))  # run from a checkout without installing too

from callctl.harness import machine, procfs  # noqa: E402
from callctl.harness.bench import (  # noqa: E402
    CANNOT_RUN,
    INTERRUPTED,
    MET,
    MISSED,
    BenchError,
    cleaning_up,
    keep_or_remove,
    log,
    py_spy,
    stop_on_signals,
)
from callctl.harness.child import ChildError  # noqa: E402
from callctl.harness.looplag import LoopLag  # noqa: E402
from callctl.harness.redis import RedisMissing, RedisServer  # noqa: E402
from callctl.harness.server import ServerError, ServerProcess  # noqa: E402
from callctl.harness.stats import summary  # noqa: E402
from callctl.signaling.auth import issue_token, read_secret  # noqa: E402

HOST = "127.0.0.1"  # loopback only, always
SERVICE = "default"
RING_LOST_AFTER_S = 5.0
REQUEST_TIMEOUT_S = 10.0
#: What a request on a keep-alive connection can fail with (counted, not fatal).
HTTP_FAILURES = (TimeoutError, OSError, asyncio.IncompleteReadError, ConnectionError, ValueError)

# targets
TARGET_STREAMS = 5000
TARGET_KIB_PER_STREAM = 40.0
TARGET_P99_MS = 50.0
TARGET_RATE = 100.0
# targets with --nodes N (several nodes on one Redis)
TARGET_STREAMS_PER_NODE = 5000  # 15,000 over 3 nodes
TARGET_NODES_RATE = 200.0
TARGET_REACHABLE_S = 5.0

#: With --kill-node, a call waits this long for its ring (the server's ring timeout: the call
#: is over then), which may wait for its device to come back on another node; a ring that
#: comes even later, before the bench ends, is late, not lost.  Any ring later than
#: RING_LOST_AFTER_S is counted as late.
RING_LOST_AFTER_KILL_S = 60.0
#: The event stream's reconnect backoff and timeouts, as callctl's client has them
#: (signaling/client.py: min(MAX_BACKOFF_S, 0.1 * 2**attempt) * uniform(0.8, 1.2)).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 4.0
RECONNECT_TIMEOUT_S = 10.0  # connect, then the ``registered`` event (FIRST_EVENT_TIMEOUT_S)


# ----------------------------------------------------------------- /proc bits


def rss_kib(pid: int) -> int:
    rss = procfs.memory_kib(pid).get("VmRSS")
    if rss is None:
        raise BenchError(f"server pid {pid} is gone (no VmRSS)")
    return rss


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------- server


def server_args(args: argparse.Namespace) -> list[str]:
    # enough new calls per caller and minute for the requested rate, twice over
    per_caller_min = max(30.0, math.ceil(2 * args.rate * 60.0 / args.callers))
    return ["--host", HOST, "--log-level", "warning", "--heartbeat", str(args.heartbeat),
            "--calls-per-minute", str(per_caller_min)]


def pin_to_cpu0(pid: int) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():  # every thread it has so far
        os.sched_setaffinity(int(task.name), {0})


def start_server(tmp: Path, args: argparse.Namespace) -> ServerProcess:
    """The server under load; it inherits our open-file limit, raised for the streams."""
    server = ServerProcess(tmp, server_args(args))
    try:
        server.start()
    except ServerError as exc:
        raise BenchError(str(exc)) from None
    if args.pin:
        pin_to_cpu0(server.pid)
    log(f"server: {' '.join(server.proc.argv[1:]) if server.proc else ''} (pid {server.pid})")
    return server


def start_redis(tmp: Path, args: argparse.Namespace) -> RedisServer:
    """A private redis-server (no persistence) for --nodes; it inherits our open-file limit."""
    try:
        redis = RedisServer(tmp / "redis").start()
    except (RedisMissing, ChildError) as exc:
        raise BenchError(f"redis-server: {exc}") from None
    assert redis.proc is not None
    if args.pin:
        pin_to_cpu0(redis.proc.pid)
    log(f"redis: {redis.url} (pid {redis.proc.pid})")
    return redis


def start_nodes(tmp: Path, args: argparse.Namespace, redis: RedisServer,
                nodes: list[ServerProcess]) -> None:
    """``args.nodes`` servers on one Redis with one signing secret (the first node's), each
    added to ``nodes`` once it runs (the caller stops them whatever happens)."""
    for i in range(args.nodes):
        workdir = tmp / f"node{i + 1}"
        workdir.mkdir()
        node = ServerProcess(workdir, [*server_args(args), "--store", redis.url])
        if nodes:  # one fleet, one secret
            shutil.copy(nodes[0].secret_file, node.secret_file)
        try:
            node.start()
        except ServerError as exc:
            raise BenchError(f"node {i + 1}: {exc}") from None
        nodes.append(node)
        if args.pin:
            pin_to_cpu0(node.pid)
        log(f"node {i + 1}: {node.url} (pid {node.pid})")


def redis_memory(redis: RedisServer) -> dict[str, int]:
    """redis-server's VmRSS (KiB); ``INFO memory`` used_memory and used_memory_dataset (bytes:
    all of it, and the keys' share); its number of keys and of client connections."""
    assert redis.proc is not None
    client = redis_py.Redis(host=HOST, port=redis.port, socket_timeout=5)
    try:
        info = client.info("memory")
        clients = client.info("clients")
        keys = int(client.dbsize())
    except redis_py.RedisError as exc:
        raise BenchError(f"redis INFO: {exc}") from None
    finally:
        client.close()
    return {"rss_kib": rss_kib(redis.proc.pid), "used_memory": int(info["used_memory"]),
            "used_memory_dataset": int(info.get("used_memory_dataset", 0)), "keys": keys,
            "clients": int(clients.get("connected_clients", 0))}


def redis_commands(redis: RedisServer) -> Counter[str]:
    """How many times Redis has run each command (``INFO commandstats``)."""
    client = redis_py.Redis(host=HOST, port=redis.port, socket_timeout=5)
    try:
        info = client.info("commandstats")
    except redis_py.RedisError as exc:
        raise BenchError(f"redis INFO: {exc}") from None
    finally:
        client.close()
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()
                    if isinstance(v, dict) and "calls" in v})


def redis_version(redis: RedisServer) -> str:
    client = redis_py.Redis(host=HOST, port=redis.port, socket_timeout=5)
    try:
        return str(client.info("server").get("redis_version", "?"))
    except redis_py.RedisError:
        return "?"
    finally:
        client.close()


# ------------------------------------------------------------- idle streams


class _CallId(msgspec.Struct):
    call_id: str


_call_id = msgspec.json.Decoder(_CallId)


class EventStream(asyncio.Protocol):
    """One idle ``GET /v1/events`` connection: HTTP/1.1 chunked + SSE, by hand."""

    __slots__ = (
        "bench",
        "user",
        "request",
        "transport",
        "buf",
        "sse",
        "head_done",
        "left",
        "need_crlf",
        "registered",
        "open",
        "error",
    )

    def __init__(self, bench: Bench, user: str, request: bytes) -> None:
        self.bench = bench
        self.user = user
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sse = bytearray()
        self.head_done = False
        self.left = 0  # bytes left in the current chunk
        self.need_crlf = False
        self.registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.open = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.open = False
            self.bench.streams_dropped += 1
        if not self.registered.done():
            self.registered.set_exception(
                ConnectionError(self.error or f"connection lost before registered: {exc!r}")
            )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()  # before any parsing: when the bytes reached us
        buf = self.buf
        buf += data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            status = head.split(b" ", 2)[1] if b" " in head else b"?"
            if status != b"200" or b"transfer-encoding: chunked" not in head.lower():
                self.error = f"HTTP {status.decode(errors='replace')}: {bytes(buf[:200])!r}"
                assert self.transport is not None
                self.transport.close()
                return
            self.head_done = True
        sse = self.sse
        while buf:  # de-chunk
            if self.need_crlf:
                if len(buf) < 2:
                    break
                del buf[:2]
                self.need_crlf = False
            elif self.left == 0:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    break
                size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
                del buf[: eol + 2]
                if size == 0:  # end of the response: the server closed the stream
                    break
                self.left = size
            else:
                n = min(self.left, len(buf))
                sse += buf[:n]
                del buf[:n]
                self.left -= n
                if self.left == 0:
                    self.need_crlf = True
        while True:  # SSE events end with a blank line
            end = sse.find(b"\n\n")
            if end < 0:
                break
            block = bytes(sse[:end])
            del sse[: end + 2]
            self._event(block, now)

    def _event(self, block: bytes, now: float) -> None:
        bench = self.bench
        if block.startswith(b":"):
            bench.heartbeats += 1
            bench.hb_times.append(now)
            return
        name = b""
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if name == b"call.incoming":
            bench.ring_arrived(_call_id.decode(data).call_id, self.user, now)
        elif name == b"registered":
            if not self.registered.done():
                self.open = True
                self.registered.set_result(None)
        elif name == b"call.ended":
            bench.ended_events += 1
        elif name == b"stream.closing":
            bench.closing_reasons[data.decode(errors="replace")] += 1
        else:
            bench.other_events[name.decode(errors="replace")] += 1


class _Cursor(msgspec.Struct):
    cursor: str | None = None


_cursor = msgspec.json.Decoder(_Cursor)


def stream_request(token: str, last_id: str | None = None) -> bytes:
    resume = b"Last-Event-ID: %s\r\n" % last_id.encode() if last_id else b""
    return (
        b"GET /v1/events?device=bench HTTP/1.1\r\nHost: %s\r\n"
        b"Authorization: Bearer %s\r\nAccept: text/event-stream\r\n%s\r\n"
        % (HOST.encode(), token.encode(), resume)
    )


class NodeStream(EventStream):
    """An event stream to one node of several (--nodes).

    It keeps the last event id it got (the ``registered`` cursor until an event
    comes, as callctl's client does), and tells the bench when it is lost, so
    that it can come back on another node with that id.
    """

    __slots__ = ("node", "last_id", "registered_at")

    def __init__(self, bench: Bench, user: str, request: bytes, node: int,
                 last_id: str | None = None) -> None:
        super().__init__(bench, user, request)
        self.node = node
        self.last_id = last_id
        self.registered_at = 0.0

    def _event(self, block: bytes, now: float) -> None:
        if not block.startswith(b":"):
            for line in block.split(b"\n"):
                if line.startswith(b"id: "):
                    self.last_id = line[4:].decode()
                elif line.startswith(b"data: ") and b"\nevent: registered\n" in b"\n" + block:
                    self.registered_at = now
                    if self.last_id is None:
                        self.last_id = _cursor.decode(line[6:]).cursor
        super()._event(block, now)

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.open
        super().connection_lost(exc)
        if was_open:
            self.bench.stream_lost(self)


# --------------------------------------------------------- keep-alive client


class HttpConn:
    """One HTTP/1.1 keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> HttpConn:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = None
        keep = True
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                keep = False
        if length is None:
            raise ConnectionError("response without content-length")
        body = await self.reader.readexactly(length)
        if not keep:
            self.close()
        return status, body


class Caller:
    """A caller identity with a small LIFO pool of keep-alive connections."""

    def __init__(self, name: str, token: str, port: int, max_conns: int, node: int = 0) -> None:
        self.name = name
        self.port = port
        self.node = node  # with --nodes: the index of the node it talks to
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.idle: list[HttpConn] = []
        self.count = 0
        self.max_conns = max_conns
        self.freed = asyncio.Condition()
        self.all: set[HttpConn] = set()

    async def _acquire(self) -> HttpConn:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.usable:
                    return conn
                self._drop(conn)
            if self.count < self.max_conns:
                self.count += 1
                try:
                    conn = await HttpConn.open(self.port)
                except BaseException:
                    self.count -= 1
                    raise
                self.all.add(conn)
                return conn
            async with self.freed:
                await self.freed.wait()

    def _drop(self, conn: HttpConn) -> None:
        conn.close()
        self.all.discard(conn)
        self.count -= 1

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, float]:
        """POST; (status, body, perf_counter when the request was written)."""
        conn = await self._acquire()
        ok = False
        try:
            raw = (
                b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s"
                % (path.encode(), HOST.encode(), self.auth, len(body), body)
            )
            sent = time.perf_counter()
            status, rbody = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
            ok = conn.usable
            return status, rbody, sent
        finally:
            if ok:
                self.idle.append(conn)
            else:
                self._drop(conn)
            async with self.freed:
                self.freed.notify()

    def retarget(self, node: int, port: int) -> None:
        """From now on to another node (its node died); idle connections are dropped."""
        self.node, self.port = node, port
        while self.idle:
            self._drop(self.idle.pop())

    def close(self) -> None:
        for conn in list(self.all):
            conn.close()
        self.all.clear()
        self.idle.clear()


# ------------------------------------------------------------------ benchmark


@dataclass
class CallStats:
    """What one run of call set-ups measured."""

    t0: float = 0.0
    attempted: int = 0
    succeeded: int = 0
    lost: int = 0
    #: Rings that came, but later than RING_LOST_AFTER_S (only with a longer ``lost_after``).
    late: int = 0
    wrong_callee: int = 0
    #: --nodes: calls whose caller had to be on the callee's node (one node left).
    same_node: int = 0
    ring_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    slow: list[tuple[float, float]] = field(default_factory=list)  # (send offset s, ring ms)
    http_failures: Counter[str] = field(default_factory=Counter)
    hangup_failures: Counter[str] = field(default_factory=Counter)
    sched_late_ms: list[float] = field(default_factory=list)
    lag: LoopLag = field(default_factory=lambda: LoopLag(0.01))
    #: --nodes: what is known of each lost ring (for the JSON).
    lost_calls: list[dict[str, Any]] = field(default_factory=list)
    #: --kill-node: rings that came after their call stopped waiting: seconds after the POST.
    after_window_s: list[float] = field(default_factory=list)
    #: --nodes: (send offset s, ring ms or None if lost) of every call whose POST succeeded.
    samples: list[tuple[float, float | None]] = field(default_factory=list)


@dataclass
class Bench:
    args: argparse.Namespace
    server: ServerProcess
    secret: bytes
    streams: list[EventStream] = field(default_factory=list)
    callers: list[Caller] = field(default_factory=list)
    # ring matching
    rings: dict[str, tuple[float, str]] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[tuple[float, str]]] = field(default_factory=dict)
    # counters
    heartbeats: int = 0
    hb_times: list[float] = field(default_factory=list)
    ended_events: int = 0
    streams_dropped: int = 0
    closing_reasons: Counter[str] = field(default_factory=Counter)
    other_events: Counter[str] = field(default_factory=Counter)
    stream_failures: Counter[str] = field(default_factory=Counter)
    calls: CallStats = field(default_factory=CallStats)
    # --nodes: every node (``server`` is the first), those still running, where each user is
    nodes: list[ServerProcess] = field(default_factory=list)
    redis: RedisServer | None = None
    live: list[int] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    current: dict[str, NodeStream] = field(default_factory=dict)
    callers_on: dict[int, list[Caller]] = field(default_factory=dict)
    picks: Counter[int] = field(default_factory=Counter)
    rr: int = 0  # the "load balancer"'s round-robin over the nodes still running
    finished: set[str] = field(default_factory=set)  # calls whose ring came
    duplicate_rings: int = 0
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    # --kill-node
    failover: bool = False  # lost streams come back on another node
    closing: bool = False
    reconnecting: set[asyncio.Task[None]] = field(default_factory=set)
    victim: int | None = None
    kill_t: float = 0.0
    victim_users: list[str] = field(default_factory=list)
    #: The killed node's users: seconds from the kill until registered on another node.
    back_s: dict[str, float] = field(default_factory=dict)
    others_back_s: list[float] = field(default_factory=list)  # other streams lost meanwhile
    reconnect_failures: Counter[str] = field(default_factory=Counter)
    probes: CallStats = field(default_factory=CallStats)
    #: Probe calls placed right after the kill: seconds from the kill until each one rang.
    reachable_s: list[float] = field(default_factory=list)

    @property
    def multi(self) -> bool:
        return len(self.nodes) > 1

    def ring_arrived(self, call_id: str, user: str, now: float) -> None:
        waiter = self.waiters.pop(call_id, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result((now, user))
        elif self.multi and call_id in self.finished:
            self.duplicate_rings += 1
            if len(self.duplicates) < 200:
                s = self.current.get(user)
                self.duplicates.append({
                    "call_id": call_id, "user": user, "node": None if s is None else s.node + 1,
                    "after_kill_s": round(now - self.kill_t, 3) if self.kill_t else None,
                    "stream_back_s": self.back_s.get(user),
                })
        else:
            self.rings[call_id] = (now, user)

    # -- phase 1: idle streams
    async def open_streams(self) -> dict[str, float]:
        args = self.args
        loop = asyncio.get_running_loop()
        nodes = self.nodes or [self.server]
        users = [f"u{i:05d}" for i in range(args.streams)]
        t = time.perf_counter()
        tokens = [issue_token(self.secret, u, SERVICE, 3600) for u in users]
        log(f"minted {len(tokens)} tokens in {time.perf_counter() - t:.2f} s")
        if self.multi:
            self.tokens = dict(zip(users, tokens, strict=True))
        sem = asyncio.Semaphore(args.connect_concurrency)

        async def one(i: int, user: str, token: str) -> None:
            request = stream_request(token)
            node = i % len(nodes)  # round-robin over the nodes
            async with sem:
                for attempt in range(3):
                    proto = (NodeStream(self, user, request, node) if self.multi
                             else EventStream(self, user, request))

                    def factory(p: EventStream = proto) -> EventStream:
                        return p

                    try:
                        await asyncio.wait_for(
                            loop.create_connection(factory, HOST, nodes[node].port), 30
                        )
                        await asyncio.wait_for(proto.registered, 30)
                    except (TimeoutError, OSError, ConnectionError) as exc:
                        if proto.transport is not None:
                            proto.transport.abort()
                        if not proto.registered.done():
                            proto.registered.cancel()
                        self.stream_failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                        if attempt < 2:
                            await asyncio.sleep(0.2)
                            continue
                        return
                    self.streams.append(proto)
                    if isinstance(proto, NodeStream):
                        self.current[user] = proto
                    return

        t0 = time.perf_counter()
        await asyncio.gather(
            *(one(i, u, tok) for i, (u, tok) in enumerate(zip(users, tokens, strict=True)))
        )
        took = time.perf_counter() - t0
        return {"open_s": took, "open_per_s": len(self.streams) / took if took > 0 else 0.0}

    # -- phase 2: calls
    async def one_call(self, caller: Caller, callee: str, sdp: str, stats: CallStats | None = None,
                       lost_after: float = RING_LOST_AFTER_S) -> float | None:
        """Create, wait for the ring at the callee, hang up; when the ring came (or None)."""
        stats = self.calls if stats is None else stats
        stats.attempted += 1
        home = self.where(callee) if self.multi else None
        body = msgspec.json.encode({"to": callee, "sdp": sdp})
        try:
            status, rbody, sent = await caller.post("/v1/calls", body)
        except HTTP_FAILURES as exc:
            stats.http_failures[f"create: {type(exc).__name__}"] += 1
            return None
        answered = time.perf_counter()
        if status != 201:
            stats.http_failures[f"create: HTTP {status}"] += 1
            return None
        stats.succeeded += 1
        stats.post_ms.append((answered - sent) * 1000)
        call_id = _call_id.decode(rbody).call_id
        got = self.rings.pop(call_id, None)
        if got is None:
            fut: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
            self.waiters[call_id] = fut
            try:
                remaining = sent + lost_after - time.perf_counter()
                got = await asyncio.wait_for(fut, max(0.0, remaining))
            except TimeoutError:
                got = None
            finally:
                self.waiters.pop(call_id, None)
        if got is None or got[0] - sent > lost_after:
            stats.lost += 1
            got = None
            if self.multi:
                stats.samples.append((sent - stats.t0, None))
                stats.lost_calls.append({
                    "call_id": call_id, "callee": callee, "caller": caller.name,
                    "sent": sent, "sent_at_s": round(sent - stats.t0, 3),
                    "after_kill_s": round(sent - self.kill_t, 3) if self.kill_t else None,
                    "callee_node": None if home is None else home + 1,
                    "caller_node": caller.node + 1,
                })
        else:
            if self.multi:
                self.finished.add(call_id)
                stats.samples.append((sent - stats.t0, (got[0] - sent) * 1000))
            stats.ring_ms.append((got[0] - sent) * 1000)
            if got[0] - sent > RING_LOST_AFTER_S:
                stats.late += 1
            if (got[0] - sent) * 1000 > TARGET_P99_MS:
                stats.slow.append((sent - stats.t0, (got[0] - sent) * 1000))
            if got[1] != callee:
                stats.wrong_callee += 1
        try:
            status, _, _ = await caller.post(f"/v1/calls/{call_id}/hangup", b"{}")
            if status != 200:
                stats.hangup_failures[f"HTTP {status}"] += 1
        except HTTP_FAILURES as exc:
            stats.hangup_failures[type(exc).__name__] += 1
        return None if got is None else got[0]

    async def drive_calls(self) -> dict[str, Any]:
        args = self.args
        stats = self.calls
        self.callers = [
            Caller(
                f"caller{i:03d}",
                issue_token(self.secret, f"caller{i:03d}", SERVICE, 3600),
                self.server.port,
                args.conns_per_caller,
            )
            for i in range(args.callers)
        ]
        callees = [s.user for s in self.streams if s.open]
        if not callees:
            raise BenchError("no open streams to call")
        random.Random(args.seed).shuffle(callees)
        sdp = make_sdp(args.sdp_bytes)
        n_calls = max(1, int(round(args.rate * args.duration)))
        monitor = asyncio.create_task(stats.lag.run())
        tasks: set[asyncio.Task[float | None]] = set()
        pid = self.server.pid
        spy = start_py_spy(args, pid) if args.py_spy else None
        cpu0, gen0, mach0 = procfs.cpu_seconds(pid), os.times(), procfs.machine_ticks()
        t0 = stats.t0 = time.perf_counter()
        for k in range(n_calls):
            target = t0 + k / args.rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            stats.sched_late_ms.append(max(0.0, (time.perf_counter() - target) * 1000))
            task = asyncio.create_task(
                self.one_call(self.callers[k % len(self.callers)], callees[k % len(callees)], sdp)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_s = time.perf_counter() - t0
        if tasks:
            await asyncio.wait(set(tasks), timeout=RING_LOST_AFTER_S + 2 * REQUEST_TIMEOUT_S)
        wall = time.perf_counter() - t0
        cpu1, gen1, mach1 = procfs.cpu_seconds(pid), os.times(), procfs.machine_ticks()
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        for task in list(tasks):
            task.cancel()
        if spy is not None:
            await asyncio.to_thread(finish_py_spy, spy, args.py_spy)
        server_cpu = (cpu1 - cpu0) / wall * 100
        gen_cpu = ((gen1.user - gen0.user) + (gen1.system - gen0.system)) / wall * 100
        busy = procfs.machine_busy_pct(mach0, mach1)
        return {
            "hb_bursts": bursts(self.hb_times, t0, t0 + wall, min(1.0, args.heartbeat / 3)),
            "calls_s": wall,
            "send_s": send_s,
            # calls sent per second over the sending window (n-1 gaps between n sends)
            "achieved_rate": (n_calls - 1) / send_s if send_s > 0 and n_calls > 1 else 0.0,
            "server_cpu_pct": server_cpu,
            "generator_cpu_pct": gen_cpu,
            "machine_cpu_pct": busy,
        }

    # -- --nodes: calls across nodes, a node killed
    def where(self, user: str) -> int | None:
        """The node ``user``'s stream is on now; None while it has none on a running node."""
        s = self.current.get(user)
        return s.node if s is not None and s.open and s.node in self.live else None

    def make_callers(self) -> None:
        """The callers, spread round-robin over the nodes (each one talks to its node only)."""
        args, n = self.args, len(self.nodes)
        self.callers = [
            Caller(f"caller{i:03d}", issue_token(self.secret, f"caller{i:03d}", SERVICE, 3600),
                   self.nodes[i % n].port, args.conns_per_caller, node=i % n)
            for i in range(args.callers)
        ]
        self.group_callers()

    def group_callers(self) -> None:
        self.callers_on = {n: [c for c in self.callers if c.node == n] for n in self.live}

    def pick_caller(self, callee: str, stats: CallStats) -> Caller:
        """A caller on another node than the callee's stream: the least used such node, and
        its callers in turn (so every node and caller gets its share)."""
        home = self.where(callee)
        nodes = [n for n in self.live if n != home]
        if not nodes:  # one node left (--nodes 2 --kill-node)
            nodes = list(self.live)
            stats.same_node += 1
        node = min(nodes, key=lambda n: self.picks[n])
        self.picks[node] += 1
        group = self.callers_on[node]
        return group[self.picks[node] % len(group)]

    async def drive_across(self, stats: CallStats, callees: list[str], offset: int,
                           kill: bool = False) -> dict[str, Any]:
        """Set-ups at --rate for --duration, the caller on another node than the callee;
        with ``kill``, the last node still running is killed half way."""
        args = self.args
        assert self.redis is not None and self.redis.proc is not None
        sdp = make_sdp(args.sdp_bytes)
        n_calls = max(1, int(round(args.rate * args.duration)))
        kill_at = n_calls // 2 if kill else -1
        lost_after = RING_LOST_AFTER_KILL_S if kill else RING_LOST_AFTER_S
        monitor = asyncio.create_task(stats.lag.run())
        tasks: set[asyncio.Task[Any]] = set()
        probes: list[asyncio.Task[None]] = []
        pids = {f"node{i + 1}": self.nodes[i].pid for i in self.live}
        pids["redis"] = self.redis.proc.pid
        # with --kill-node, the run with the kill: node 1 is one of those its devices come back to
        spy = start_py_spy(args, self.nodes[0].pid) if args.py_spy and kill == args.kill_node else None
        cmds0 = redis_commands(self.redis)
        cpu0, gen0, mach0 = cpu_of(pids), os.times(), procfs.machine_ticks()
        t0 = stats.t0 = time.perf_counter()
        for k in range(n_calls):
            target = t0 + k / args.rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            stats.sched_late_ms.append(max(0.0, (time.perf_counter() - target) * 1000))
            if k == kill_at:
                probes = self.kill_node(sdp)
            callee = callees[(offset + k) % len(callees)]
            task = asyncio.create_task(
                self.one_call(self.pick_caller(callee, stats), callee, sdp, stats, lost_after)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_s = time.perf_counter() - t0
        pending = set(tasks) | set(probes)
        if pending:
            await asyncio.wait(pending, timeout=lost_after + 2 * REQUEST_TIMEOUT_S)
        wall = time.perf_counter() - t0
        cpu1, gen1, mach1 = cpu_of(pids), os.times(), procfs.machine_ticks()
        cmds = redis_commands(self.redis)
        cmds.subtract(cmds0)
        if kill:  # every device of the killed node back (or given up on)
            deadline = time.perf_counter() + RING_LOST_AFTER_KILL_S
            while len(self.back_s) < len(self.victim_users) and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # what they replay
            for calls in (stats, self.probes):
                self.reconcile(calls)
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        for task in pending:
            task.cancel()
        if spy is not None:
            await asyncio.to_thread(finish_py_spy, spy, args.py_spy)
        cpu: dict[str, float | None] = {}
        for name in pids:
            before, after = cpu0[name], cpu1[name]
            cpu[name] = None if before is None or after is None else (after - before) / wall * 100
        gen_cpu = ((gen1.user - gen0.user) + (gen1.system - gen0.system)) / wall * 100
        return {
            "calls_s": wall,
            "send_s": send_s,
            "achieved_rate": (n_calls - 1) / send_s if send_s > 0 and n_calls > 1 else 0.0,
            "cpu_pct": cpu,
            "generator_cpu_pct": gen_cpu,
            "machine_cpu_pct": procfs.machine_busy_pct(mach0, mach1),
            "hb_bursts": bursts(self.hb_times, t0, t0 + wall, min(1.0, self.args.heartbeat / 3)),
            # Redis commands (a Lua script is one EVALSHA) per call set-up, hang-up included;
            # the nodes' own (liveness, timers) and the heartbeats are in it too
            "redis_commands_per_call": {
                name: round(c / max(1, stats.attempted), 2) for name, c in cmds.most_common()
                if c > 0
            },
        }

    def reconcile(self, stats: CallStats) -> None:
        """Lost rings that came after all (later than their call waited): late, not lost."""
        still = []
        for lost in stats.lost_calls:
            came = self.rings.pop(lost["call_id"], None)
            if came is None:
                lost["callee_back_s"] = self.back_s.get(lost["callee"])
                still.append(lost)
                continue
            stats.lost -= 1
            stats.late += 1
            stats.after_window_s.append(came[0] - lost["sent"])
        stats.lost_calls = still

    def kill_node(self, sdp: str) -> list[asyncio.Task[None]]:
        """SIGKILL the last node still running; its callers move to the others (its streams
        move as they notice: ``stream_lost``); probe calls to a sample of its devices."""
        args = self.args
        victim = self.live[-1]
        node = self.nodes[victim]
        assert node.proc is not None
        self.victim_users = [u for u, s in self.current.items() if s.node == victim and s.open]
        self.victim = victim
        self.failover = True
        self.kill_t = time.perf_counter()
        node.proc.signal(signal.SIGKILL)
        self.live.remove(victim)
        for i, caller in enumerate(self.callers_on.pop(victim, [])):
            to = self.live[i % len(self.live)]
            caller.retarget(to, self.nodes[to].port)
        self.group_callers()
        log(f"killed node {victim + 1} (pid {node.pid}) with {len(self.victim_users)} streams")
        n = min(args.kill_probes, len(self.victim_users))
        sample = [self.victim_users[i * len(self.victim_users) // n] for i in range(n)] if n else []
        return [asyncio.create_task(self.probe(user, sdp)) for user in sample]

    async def probe(self, user: str, sdp: str) -> None:
        rang = await self.one_call(self.pick_caller(user, self.probes), user, sdp, self.probes,
                                   RING_LOST_AFTER_KILL_S)
        if rang is not None:
            self.reachable_s.append(rang - self.kill_t)

    def stream_lost(self, stream: NodeStream) -> None:
        """A stream ended: once a node was killed, it comes back on another node."""
        if not self.failover or self.closing or self.current.get(stream.user) is not stream:
            return
        task = asyncio.get_running_loop().create_task(self.reconnect(stream))
        self.reconnecting.add(task)
        task.add_done_callback(self.reconnecting.discard)

    async def reconnect(self, old: NodeStream) -> None:
        """As callctl's client does, with its backoff and its last event id; to the next node
        still running (a load balancer's round-robin)."""
        loop = asyncio.get_running_loop()
        token = self.tokens[old.user]
        attempt = 0
        while not self.closing:
            await asyncio.sleep(
                min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2**attempt) * random.uniform(0.8, 1.2)
            )
            attempt += 1
            node = self.live[self.rr % len(self.live)]
            self.rr += 1
            proto = NodeStream(self, old.user, stream_request(token, old.last_id), node,
                               old.last_id)

            def factory(p: NodeStream = proto) -> NodeStream:
                return p

            try:
                await asyncio.wait_for(
                    loop.create_connection(factory, HOST, self.nodes[node].port),
                    RECONNECT_TIMEOUT_S,
                )
                await asyncio.wait_for(proto.registered, RECONNECT_TIMEOUT_S)
            except (TimeoutError, OSError, ConnectionError) as exc:
                if proto.transport is not None:
                    proto.transport.abort()
                if not proto.registered.done():
                    proto.registered.cancel()
                self.reconnect_failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                continue
            self.current[old.user] = proto
            self.streams.append(proto)
            if old.node == self.victim:
                self.back_s[old.user] = proto.registered_at - self.kill_t
            else:
                self.others_back_s.append(proto.registered_at - self.kill_t)
            return

    def close(self) -> None:
        self.closing = True
        for task in list(self.reconnecting):
            task.cancel()
        for caller in self.callers:
            caller.close()
        for stream in self.streams:
            if stream.transport is not None and not stream.transport.is_closing():
                stream.transport.abort()


def cpu_of(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds of each process; None for one that is gone (the killed node)."""
    out: dict[str, float | None] = {}
    for name, pid in pids.items():
        try:
            out[name] = procfs.cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            out[name] = None
    return out


def start_py_spy(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes]:
    """Sample the server with py-spy for the call phase (it competes for CPU too)."""
    exe = py_spy()
    if exe is None:
        raise BenchError("--py-spy: py-spy not found (pip install py-spy, or set PY_SPY)")
    out = Path(args.py_spy)
    fmt_ = {".txt": "raw", ".json": "speedscope"}.get(out.suffix, "flamegraph")
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "200",
        "--native" if args.py_spy_native else "--nonblocking",
        "--duration",
        str(math.ceil(args.duration + 1)),
        "--format",
        fmt_,
        "-o",
        str(out),
    ]
    log("py-spy: " + " ".join(cmd))
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish_py_spy(proc: subprocess.Popen[bytes], out: str) -> None:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode != 0:
        log(f"py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    else:
        log(f"py-spy profile written to {out}")


def bursts(times: list[float], start: float, end: float, gap: float) -> list[dict[str, float]]:
    """Group heartbeat arrivals in [start, end] into bursts (pauses over ``gap`` s split them)."""
    out: list[dict[str, float]] = []
    for t in sorted(x for x in times if start <= x <= end):
        if out and t - out[-1]["last"] <= gap:
            out[-1]["last"] = t
            out[-1]["count"] += 1
        else:
            out.append({"first": t, "last": t, "count": 1})
    return [
        {
            "at_s": round(b["first"] - start, 3),
            "spread_ms": round((b["last"] - b["first"]) * 1000, 1),
            "count": b["count"],
        }
        for b in out
    ]


def make_sdp(size: int) -> str:
    """A plausible audio offer, padded with candidate lines to about ``size`` bytes."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:Gx3k",
        "a=ice-pwd:7LzWm5oX0c6y2Kk8r1b9QvTq",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
    ]
    n = 0
    while sum(len(x) + 2 for x in lines) < size:
        n += 1
        lines.append(
            f"a=candidate:{n} 1 udp {2122260223 - n} 192.168.1.{n % 250 + 1} {50000 + n} typ host"
        )
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------- report


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _check(ok: bool | None, target: str, value: object) -> dict:
    return {
        "result": "n/a" if ok is None else ("PASS" if ok else "MISS"),
        "target": target,
        "value": value,
    }


def evaluate(r: dict) -> dict[str, dict]:
    check = _check
    p99 = r["ring_ms"]["p99"]
    return {
        "streams": check(
            r["streams_held"] >= TARGET_STREAMS, f">= {TARGET_STREAMS}", r["streams_held"]
        ),
        "rss_per_stream": check(
            None if r["kib_per_stream"] is None else r["kib_per_stream"] <= TARGET_KIB_PER_STREAM,
            f"<= {TARGET_KIB_PER_STREAM:g} KiB",
            r["kib_per_stream"],
        ),
        "ring_p99": check(
            None if p99 is None or r["rate"] < TARGET_RATE else p99 <= TARGET_P99_MS,
            f"<= {TARGET_P99_MS:g} ms at >= {TARGET_RATE:g} calls/s",
            p99,
        ),
        "lost_rings": check(r["succeeded"] > 0 and r["lost_rings"] == 0, "0", r["lost_rings"]),
    }


def print_report(r: dict) -> None:
    rm, pm, lg = r["ring_ms"], r["post_ms"], r["generator_lag_ms"]
    out = [
        f"callctl signaling benchmark  ({r['machine']['cpus']} CPUs, {r['machine']['cpu_model']}, "
        f"Python {r['machine']['python']})",
        f"  server: pid {r['server_pid']}, heartbeat {r['heartbeat_s']:g} s; "
        f"generator and server share the machine{' (pinned to CPU1 / CPU0)' if r['pinned'] else ''}",
        "",
        "Idle event streams",
        f"  streams held          {r['streams_held']} / {r['streams_requested']}"
        f"  (opened in {r['open_s']:.1f} s, {r['open_per_s']:.0f}/s; failures {r['stream_failures']})",
        f"  server RSS before     {r['rss_before_kib'] / 1024:.1f} MiB",
        f"  server RSS after      {r['rss_after_kib'] / 1024:.1f} MiB",
        f"  RSS per stream        {fmt(r['kib_per_stream'])} KiB",
        "",
        f"Call set-ups  (target {r['rate']:g}/s for {r['duration']:g} s, {r['callers']} callers, "
        f"SDP {r['sdp_bytes']} B)",
        f"  attempted / succeeded {r['attempted']} / {r['succeeded']}",
        f"  achieved rate         {r['achieved_rate']:.1f} calls/s",
        f"  ring latency ms       p50 {fmt(rm['p50'])}  p90 {fmt(rm['p90'])}  "
        f"p99 {fmt(rm['p99'])}  max {fmt(rm['max'])}",
        f"  POST /v1/calls ms     p50 {fmt(pm['p50'])}  p99 {fmt(pm['p99'])}  max {fmt(pm['max'])}",
        f"  rings over {TARGET_P99_MS:g} ms       {r['rings_over_target']}"
        + (
            f"  (sent between +{r['slow_rings'][0]['sent_at_s']:.2f} s and "
            f"+{r['slow_rings'][-1]['sent_at_s']:.2f} s of the call phase)"
            if r["slow_rings"]
            else ""
        ),
        f"  lost rings (>5 s)     {r['lost_rings']}   wrong callee {r['wrong_callee']}",
        f"  HTTP failures         {r['http_failures']}  (create {r['http_failure_kinds']}, "
        f"hangup {r['hangup_failure_kinds']})",
        f"  server CPU            {r['server_cpu_pct']:.0f} % of one core during the call phase",
        f"  generator CPU         {r['generator_cpu_pct']:.0f} % of one core; "
        f"machine busy {r['machine_cpu_pct']:.0f} % of one core "
        f"(of {r['machine']['cpus'] * 100} %)",
        f"  generator loop lag ms p99 {fmt(lg['p99'])}  max {fmt(lg['max'])}",
        "  heartbeat bursts      "
        + (
            ", ".join(
                f"+{b['at_s']:.2f} s: {b['count']} streams over {b['spread_ms']:.0f} ms"
                for b in r["heartbeat_bursts_in_call_phase"]
            )
            or "none in the call phase"
        ),
        f"  server RSS after calls {r['rss_after_calls_kib'] / 1024:.1f} MiB; "
        f"streams dropped {r['streams_dropped']}, heartbeats seen {r['heartbeats']}",
        "",
        "Targets",
    ]
    labels = {
        "streams": "streams held",
        "rss_per_stream": "RSS per stream",
        "ring_p99": "ring latency p99",
        "lost_rings": "lost rings",
    }
    for key, t in r["targets"].items():
        value = t["value"]
        shown = fmt(value) if isinstance(value, float) or value is None else str(value)
        out.append(f"  {t['result']:4}  {labels[key]:18} {shown:>8}   (target {t['target']})")
    print("\n".join(out), flush=True)


def evaluate_nodes(r: dict) -> dict[str, dict]:
    n = r["nodes"]
    want = TARGET_STREAMS_PER_NODE * n
    ring, kib = r["ring"], r["kib_per_stream"]
    p99 = ring["ring_ms"]["p99"]
    out = {
        "streams": _check(
            None if r["streams_requested"] < want else r["streams_held"] >= want,
            f">= {want} on {n} nodes", r["streams_held"],
        ),
        "rss_per_stream": _check(
            None if kib is None else kib <= TARGET_KIB_PER_STREAM,
            f"<= {TARGET_KIB_PER_STREAM:g} KiB on each node", kib,
        ),
        "ring_p99": _check(
            None if p99 is None or r["rate"] < TARGET_NODES_RATE else p99 <= TARGET_P99_MS,
            f"<= {TARGET_P99_MS:g} ms at >= {TARGET_NODES_RATE:g} calls/s across nodes", p99,
        ),
        "lost_rings": _check(
            ring["succeeded"] > 0 and ring["lost_rings"] == 0, "0", ring["lost_rings"]
        ),
    }
    k = r["kill"]
    if k is None:
        out["kill_lost_rings"] = _check(None, "0 (--kill-node)", None)
        out["reachable"] = _check(None, f"<= {TARGET_REACHABLE_S:g} s (--kill-node)", None)
        return out
    out["kill_lost_rings"] = _check(
        k["succeeded"] > 0 and k["lost_rings_total"] == 0, "0", k["lost_rings_total"]
    )
    # every device: its new registration; and the probes' rings (a lost probe: never)
    worst = max((x for x in (k["back_s"]["max"], k["reachable_s"]["max"]) if x is not None),
                default=None)
    all_back = k["devices_back"] == k["devices"]
    out["reachable"] = _check(
        all_back and k["probes_lost"] == 0 and worst is not None and worst <= TARGET_REACHABLE_S,
        f"<= {TARGET_REACHABLE_S:g} s, every device",
        (f"{k['devices_back']}/{k['devices']} back" if not all_back
         else f"{k['probes_lost']} probes never" if k["probes_lost"] else worst),
    )
    return out


def _calls_lines(c: dict, machine_cpus: int) -> list[str]:
    rm, pm, lg = c["ring_ms"], c["post_ms"], c["generator_lag_ms"]
    cpu = ", ".join(
        f"{name.replace('node', 'node ')} {fmt(pct, '.0f')}" for name, pct in c["cpu_pct"].items()
    )
    return [
        f"  attempted / succeeded {c['attempted']} / {c['succeeded']}",
        f"  achieved rate         {c['achieved_rate']:.1f} calls/s; the POSTs written within "
        f"+{c['posts_written_s']:.1f} s (each waits for a free connection of its caller, "
        f"latencies start then)",
        f"  ring latency ms       p50 {fmt(rm['p50'])}  p90 {fmt(rm['p90'])}  "
        f"p99 {fmt(rm['p99'])}  max {fmt(rm['max'])}",
        f"  POST /v1/calls ms     p50 {fmt(pm['p50'])}  p99 {fmt(pm['p99'])}  max {fmt(pm['max'])}",
        f"  rings over {TARGET_P99_MS:g} ms       {c['rings_over_target']}"
        + (
            f"  (sent between +{c['slow_sent_s'][0]:.2f} s and +{c['slow_sent_s'][1]:.2f} s "
            f"of the run)"
            if c["slow_sent_s"]
            else ""
        ),
        f"  HTTP failures         {c['http_failures']}  (create {c['http_failure_kinds']}, "
        f"hangup {c['hangup_failure_kinds']})",
        f"  CPU, % of one core    {cpu}, generator {c['generator_cpu_pct']:.0f}; "
        f"machine busy {c['machine_cpu_pct']:.0f} % (of {machine_cpus * 100} %)",
        f"  generator loop lag ms p99 {fmt(lg['p99'])}  max {fmt(lg['max'])}",
        f"  Redis commands / call {sum(c['redis_commands_per_call'].values()):.1f}, in scripts too  ("
        + ", ".join(f"{k} {v:g}" for k, v in sorted(c["redis_commands_per_call"].items(),
                                                     key=lambda kv: -kv[1])[:6])
        + ")",
    ]


def print_nodes_report(r: dict) -> None:
    n, m = r["nodes"], r["machine"]
    ring, rb, ra, rc = r["ring"], r["redis_before"], r["redis_after"], r["redis_after_calls"]
    out = [
        f"callctl signaling benchmark, {n} nodes on one Redis  ({m['cpus']} CPUs, "
        f"{m['cpu_model']}, Python {m['python']}, load {m['loadavg']})",
        f"  nodes: pids {', '.join(map(str, r['node_pids']))} (--store {r['store']}); "
        f"redis-server {r['redis_version']} pid {r['redis_pid']}; heartbeat {r['heartbeat_s']:g} s",
        f"  generator, nodes and Redis share the machine"
        f"{' (nodes and Redis pinned to CPU0, generator to CPU1)' if r['pinned'] else ''}; "
        f"generator open-file limit {r['nofile']}",
        "",
        "Idle event streams  (round-robin over the nodes)",
        f"  streams held          {r['streams_held']} / {r['streams_requested']}"
        f"  (opened in {r['open_s']:.1f} s, {r['open_per_s']:.0f}/s; failures {r['stream_failures']}"
        + (f": {r['stream_failure_kinds']}" if r["stream_failures"] else "")
        + ")",
    ]
    for x in r["node_rss"]:
        out.append(
            f"  node {x['node']:<17} {x['streams']} streams, RSS {x['before_kib'] / 1024:.1f} → "
            f"{x['after_kib'] / 1024:.1f} MiB: {fmt(x['kib_per_stream'])} KiB per stream"
        )
    out += [
        f"  redis VmRSS           {rb['rss_kib'] / 1024:.1f} → {ra['rss_kib'] / 1024:.1f} MiB: "
        f"{fmt(r['redis_rss_kib_per_stream'], '.2f')} KiB per stream",
        f"  redis used_memory     {rb['used_memory'] / 2**20:.1f} → {ra['used_memory'] / 2**20:.1f} MiB: "
        f"{fmt(r['redis_used_kib_per_stream'], '.2f')} KiB per stream "
        f"(dataset {fmt(r['redis_dataset_kib_per_stream'], '.2f')}); "
        f"{fmt(r['redis_keys_per_stream'], '.1f')} keys per stream, {ra['clients']} clients",
        "",
        f"Call set-ups across nodes  (target {r['rate']:g}/s for {r['duration']:g} s, "
        f"{r['callers']} callers over {n} nodes, SDP {r['sdp_bytes']} B; the caller's node is "
        f"never the callee's)",
        *_calls_lines(ring, m["cpus"]),
        f"  lost rings (>{RING_LOST_AFTER_S:g} s)     {ring['lost_rings']}   wrong callee "
        f"{ring['wrong_callee']}",
        "  RSS after calls       "
        + ", ".join(f"node {x['node']} {x['after_calls_kib'] / 1024:.1f}" for x in r["node_rss"])
        + f", redis {rc['rss_kib'] / 1024:.1f} MiB (used_memory {rc['used_memory'] / 2**20:.1f} MiB)",
        f"  streams dropped {r['streams_dropped']}, heartbeats seen {r['heartbeats']}, "
        f"duplicate rings {r['duplicate_rings']}, rings of failed POSTs {r['unmatched_rings']}",
    ]
    k = r["kill"]
    if k is not None:
        back, reach = k["back_s"], k["reachable_s"]
        after = ", ".join("killed" if i + 1 == k["node"] else str(c)
                          for i, c in enumerate(k["held_per_node_after"]))
        out += [
            "",
            f"Node killed  (SIGKILL node {k['node']}, pid {k['pid']}, at +{k['at_s']:.2f} s of a "
            f"second {r['duration']:g} s run at {r['rate']:g}/s)",
            f"  its devices           {k['devices']}; back on another node {k['devices_back']} "
            f"(failed reconnects {k['reconnect_failures']}"
            + (f": {k['reconnect_failure_kinds']}" if k["reconnect_failures"] else "")
            + ")",
            f"  back online s         p50 {fmt(back['p50'], '.2f')}  p99 {fmt(back['p99'], '.2f')}  "
            f"max {fmt(back['max'], '.2f')}  (kill → registered on another node, Last-Event-ID)",
            f"  reachable s           p50 {fmt(reach['p50'], '.2f')}  max {fmt(reach['max'], '.2f')}"
            f"  (kill → ring of {k['probes']} probe calls placed right after the kill; "
            f"{k['probes_succeeded']} POSTs ok)",
            *_calls_lines(k, m["cpus"]),
            f"  rings lost            {k['lost_rings_total']}  (never came, of {k['succeeded']} + "
            f"{k['probes_succeeded']} probe calls whose POST succeeded; later than "
            f"{RING_LOST_AFTER_S:g} s: {k['late_rings'] + k['probes_late']})",
            f"  streams per node after {after}; other streams lost and back "
            f"{k['others_dropped_back']}",
        ]
    out += [
        "",
        "Node logs until then  "
        + "; ".join(f"node {x['node']}: {x['tracebacks']} tracebacks, "
                    f"{x['max_connections_errors']} 'Too many connections', "
                    f"{x['store_unavailable']} 'store unavailable'" for x in r["node_log"]),
        "",
        "Targets",
    ]
    labels = {
        "streams": "streams held",
        "rss_per_stream": "RSS per stream, max",
        "ring_p99": "ring latency p99",
        "lost_rings": "lost rings",
        "kill_lost_rings": "lost rings, node killed",
        "reachable": "reachable again, max s",
    }
    for key, label in labels.items():
        t = r["targets"][key]
        value = t["value"]
        shown = fmt(value) if isinstance(value, float) or value is None else str(value)
        out.append(f"  {t['result']:4}  {label:24} {shown:>8}   (target {t['target']})")
    print("\n".join(out), flush=True)


def stats(values: list[float]) -> dict[str, float | None]:
    return summary(values, (50, 90, 99))


# ----------------------------------------------------------------------- main


async def run(args: argparse.Namespace, server: ServerProcess, holder: list[Bench]) -> dict:
    bench = Bench(args, server, read_secret(server.secret_file))
    holder.append(bench)
    # warm up: one request through the whole stack before the baseline
    conn = await HttpConn.open(server.port)
    try:
        status, _ = await conn.request(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode())
        if status != 200:
            raise BenchError(f"/healthz answered {status}")
    finally:
        conn.close()
    await asyncio.sleep(0.5)
    rss_before = rss_kib(server.pid)
    log(f"server RSS before streams: {rss_before / 1024:.1f} MiB; opening {args.streams} streams")
    opened = await bench.open_streams()
    await asyncio.sleep(1.0)  # let the last sends settle
    rss_after = rss_kib(server.pid)
    held = sum(1 for s in bench.streams if s.open)
    per_stream = (rss_after - rss_before) / held if held else None
    log(
        f"{held} streams held in {opened['open_s']:.1f} s; RSS {rss_after / 1024:.1f} MiB "
        f"({fmt(per_stream)} KiB/stream)"
    )
    log(f"driving {args.rate:g} calls/s for {args.duration:g} s from {args.callers} callers")
    calls = await bench.drive_calls()
    rss_calls = rss_kib(server.pid)
    held_end = sum(1 for s in bench.streams if s.open)
    log(f"calls done: {bench.calls.succeeded}/{bench.calls.attempted}; {held_end} streams still open")
    result = {
        "benchmark": "callctl-signaling",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(REPO),
        "server_pid": server.pid,
        "pinned": args.pin,
        "heartbeat_s": args.heartbeat,
        "streams_requested": args.streams,
        "streams_held": held,
        "streams_held_at_end": held_end,
        "stream_failures": sum(bench.stream_failures.values()),
        "stream_failure_kinds": dict(bench.stream_failures),
        "open_s": opened["open_s"],
        "open_per_s": opened["open_per_s"],
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_after_calls_kib": rss_calls,
        "kib_per_stream": per_stream,
        "rate": args.rate,
        "duration": args.duration,
        "callers": args.callers,
        "sdp_bytes": args.sdp_bytes,
        "attempted": bench.calls.attempted,
        "succeeded": bench.calls.succeeded,
        "achieved_rate": calls["achieved_rate"],
        "ring_ms": stats(bench.calls.ring_ms),
        "post_ms": stats(bench.calls.post_ms),
        "lost_rings": bench.calls.lost,
        "wrong_callee": bench.calls.wrong_callee,
        "http_failures": sum(bench.calls.http_failures.values())
        + sum(bench.calls.hangup_failures.values()),
        "http_failure_kinds": dict(bench.calls.http_failures),
        "hangup_failure_kinds": dict(bench.calls.hangup_failures),
        "server_cpu_pct": calls["server_cpu_pct"],
        "generator_cpu_pct": calls["generator_cpu_pct"],
        "machine_cpu_pct": calls["machine_cpu_pct"],
        "generator_lag_ms": stats(bench.calls.lag.lags_ms),
        "schedule_late_ms": stats(bench.calls.sched_late_ms),
        "streams_dropped": bench.streams_dropped,
        "closing_reasons": dict(bench.closing_reasons),
        "heartbeats": bench.heartbeats,
        "unmatched_rings": len(bench.rings),
        "heartbeat_bursts_in_call_phase": calls["hb_bursts"],
        "rings_over_target": len(bench.calls.slow),
        "slow_rings": [
            {"sent_at_s": round(a, 3), "ring_ms": round(b, 1)} for a, b in bench.calls.slow[:200]
        ],
        "call_ended_events": bench.ended_events,
    }
    result["targets"] = evaluate(result)
    return result


async def healthz(port: int) -> None:
    conn = await HttpConn.open(port)
    try:
        status, _ = await conn.request(b"GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode())
        if status != 200:
            raise BenchError(f"/healthz on port {port} answered {status}")
    finally:
        conn.close()


def calls_result(calls: CallStats, drive: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run of set-ups across nodes (the JSON's ``ring`` and ``kill``)."""
    return {
        "attempted": calls.attempted,
        "succeeded": calls.succeeded,
        "achieved_rate": drive["achieved_rate"],
        # when the last POST that succeeded was written: a POST waits for a free connection of
        # its caller (--conns-per-caller), and its latencies start only then
        "posts_written_s": round(max((a for a, _ in calls.samples), default=0.0), 2),
        "ring_ms": stats(calls.ring_ms),
        "post_ms": stats(calls.post_ms),
        "lost_rings": calls.lost,
        "late_rings": calls.late,
        "wrong_callee": calls.wrong_callee,
        "same_node_calls": calls.same_node,
        "http_failures": sum(calls.http_failures.values()) + sum(calls.hangup_failures.values()),
        "http_failure_kinds": dict(calls.http_failures),
        "hangup_failure_kinds": dict(calls.hangup_failures),
        "cpu_pct": drive["cpu_pct"],
        "generator_cpu_pct": drive["generator_cpu_pct"],
        "machine_cpu_pct": drive["machine_cpu_pct"],
        "generator_lag_ms": stats(calls.lag.lags_ms),
        "schedule_late_ms": stats(calls.sched_late_ms),
        "heartbeat_bursts": drive["hb_bursts"],
        "rings_over_target": len(calls.slow),
        "slow_sent_s": [round(min(a for a, _ in calls.slow), 3),
                        round(max(a for a, _ in calls.slow), 3)] if calls.slow else None,
        "slow_rings": [
            {"sent_at_s": round(a, 3), "ring_ms": round(b, 1)} for a, b in calls.slow[:200]
        ],
        "late_after_window_s": summary(calls.after_window_s, (50,)),
        "lost_calls": [{k: v for k, v in c.items() if k != "sent"} for c in calls.lost_calls[:200]],
        "timeline": timeline(calls.samples),
        "redis_commands_per_call": drive["redis_commands_per_call"],
    }


def timeline(samples: list[tuple[float, float | None]]) -> list[dict[str, Any]]:
    """Per second of sending: calls whose POST succeeded, ring p50/p99/max ms, rings lost."""
    by_s: dict[int, list[float | None]] = {}
    for at, ms in samples:
        by_s.setdefault(int(at), []).append(ms)
    out = []
    for second in sorted(by_s):
        got = [x for x in by_s[second] if x is not None]
        q = summary(got, (50, 99), digits=1)
        out.append({"s": second, "calls": len(by_s[second]), "p50": q["p50"], "p99": q["p99"],
                    "max": q["max"], "lost": len(by_s[second]) - len(got)})
    return out


async def run_nodes(args: argparse.Namespace, nodes: list[ServerProcess], redis: RedisServer,
                    holder: list[Bench]) -> dict:
    """--nodes N: idle streams over N nodes, set-ups across them, a node killed (--kill-node)."""
    bench = Bench(args, nodes[0], read_secret(nodes[0].secret_file), nodes=list(nodes),
                  redis=redis, live=list(range(len(nodes))))
    holder.append(bench)
    n = len(nodes)
    for node in nodes:  # one request through each node's stack before the baseline
        await healthz(node.port)
    await asyncio.sleep(0.5)
    rss_before = [rss_kib(node.pid) for node in nodes]
    redis_before = redis_memory(redis)
    log(f"node RSS before streams: {', '.join(f'{r / 1024:.1f}' for r in rss_before)} MiB; "
        f"redis {redis_before['rss_kib'] / 1024:.1f} MiB; opening {args.streams} streams "
        f"over {n} nodes")
    opened = await bench.open_streams()
    # the generator's own streams live as long as the run: keep them out of its full collections
    # (a pass over 15,000 streams' objects stalls its loop for ~0.5 s, a stall it would measure)
    gc.collect()
    gc.freeze()
    # let the last sends settle, and Redis free the idle connections' query buffers (its
    # clientsCron does after 2 s): used_memory counts them
    await asyncio.sleep(3.0)
    rss_after = [rss_kib(node.pid) for node in nodes]
    redis_after = redis_memory(redis)
    held_on = [sum(1 for s in bench.current.values() if s.open and s.node == i) for i in range(n)]
    held = sum(held_on)
    per_node = [(rss_after[i] - rss_before[i]) / held_on[i] if held_on[i] else None
                for i in range(n)]
    redis_rss_per = (redis_after["rss_kib"] - redis_before["rss_kib"]) / held if held else None
    redis_used_per = ((redis_after["used_memory"] - redis_before["used_memory"]) / 1024 / held
                      if held else None)
    log(f"{held} streams held in {opened['open_s']:.1f} s ({', '.join(map(str, held_on))}); "
        f"KiB/stream {', '.join(fmt(x) for x in per_node)}; redis {fmt(redis_rss_per)} KiB "
        f"RSS, {fmt(redis_used_per)} KiB used_memory per stream")

    callees = [s.user for s in bench.current.values() if s.open]
    if not callees:
        raise BenchError("no open streams to call")
    random.Random(args.seed).shuffle(callees)
    bench.make_callers()
    log(f"driving {args.rate:g} calls/s for {args.duration:g} s from {args.callers} callers, "
        f"caller and callee on different nodes")
    ring = await bench.drive_across(bench.calls, callees, 0)
    rss_calls = [rss_kib(node.pid) for node in nodes]
    redis_calls = redis_memory(redis)
    dropped_in_calls = bench.streams_dropped
    log(f"calls done: {bench.calls.succeeded}/{bench.calls.attempted}, lost {bench.calls.lost}")

    kill: dict[str, Any] | None = None
    if args.kill_node:
        died = CallStats()
        log(f"again {args.rate:g} calls/s for {args.duration:g} s; a node is killed at "
            f"+{args.duration / 2:g} s")
        drive = await bench.drive_across(died, callees, max(1, int(round(args.rate * args.duration))),
                                         kill=True)
        assert bench.victim is not None
        back = list(bench.back_s.values())
        kill = {
            **calls_result(died, drive),
            "node": bench.victim + 1,
            "pid": nodes[bench.victim].pid,
            "at_s": round(bench.kill_t - died.t0, 3),
            "devices": len(bench.victim_users),
            "devices_back": len(back),
            "back_s": summary(back, (50, 99)),
            # how many came back in each half second after the kill
            "back_histogram": [[round(t / 2, 1), c] for t, c in
                               sorted(Counter(int(x * 2) for x in back).items())],
            "probes": bench.probes.attempted,
            "probes_succeeded": bench.probes.succeeded,
            "probes_lost": bench.probes.lost,
            "probes_late": bench.probes.late,
            "probe_http_failure_kinds": dict(bench.probes.http_failures),
            "reachable_s": summary(bench.reachable_s, (50, 99)),
            "probe_ring_ms": stats(bench.probes.ring_ms),
            "lost_rings_total": died.lost + bench.probes.lost,
            "probe_lost_calls": bench.probes.lost_calls[:200],
            "others_dropped_back": len(bench.others_back_s),
            "reconnect_failures": sum(bench.reconnect_failures.values()),
            "reconnect_failure_kinds": dict(bench.reconnect_failures),
            "held_per_node_after": [
                sum(1 for s in bench.current.values() if s.open and s.node == i) for i in range(n)
            ],
            "rss_after_kib": [None if i == bench.victim else rss_kib(node.pid)
                              for i, node in enumerate(nodes)],
        }
        log(f"node killed: {kill['devices_back']}/{kill['devices']} devices back, max "
            f"{fmt(kill['back_s']['max'], '.2f')} s; rings lost {kill['lost_rings_total']}")

    logs = [node.stderr_text() for node in nodes]  # before the streams close at the end
    result: dict[str, Any] = {
        "benchmark": "callctl-signaling-nodes",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(REPO),
        "nodes": n,
        "node_pids": [node.pid for node in nodes],
        "redis_pid": redis.proc.pid if redis.proc is not None else None,
        "redis_version": redis_version(redis),
        "store": redis.url,
        "pinned": args.pin,
        "heartbeat_s": args.heartbeat,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "streams_requested": args.streams,
        "streams_held": held,
        "held_per_node": held_on,
        "stream_failures": sum(bench.stream_failures.values()),
        "stream_failure_kinds": dict(bench.stream_failures),
        "open_s": opened["open_s"],
        "open_per_s": opened["open_per_s"],
        "node_rss": [
            {"node": i + 1, "pid": nodes[i].pid, "streams": held_on[i],
             "before_kib": rss_before[i], "after_kib": rss_after[i],
             "kib_per_stream": per_node[i], "after_calls_kib": rss_calls[i]}
            for i in range(n)
        ],
        "kib_per_stream": max((x for x in per_node if x is not None), default=None),
        "redis_before": redis_before,
        "redis_after": redis_after,
        "redis_after_calls": redis_calls,
        "redis_rss_kib_per_stream": redis_rss_per,
        "redis_used_kib_per_stream": redis_used_per,
        "redis_dataset_kib_per_stream": (
            (redis_after["used_memory_dataset"] - redis_before["used_memory_dataset"]) / 1024 / held
            if held else None
        ),
        "redis_keys_per_stream": (redis_after["keys"] - redis_before["keys"]) / held if held else None,
        "rate": args.rate,
        "duration": args.duration,
        "callers": args.callers,
        "sdp_bytes": args.sdp_bytes,
        "ring": calls_result(bench.calls, ring),
        "kill": kill,
        "streams_dropped": dropped_in_calls,  # before any node was killed
        "streams_dropped_total": bench.streams_dropped,
        "closing_reasons": dict(bench.closing_reasons),
        "other_events": dict(bench.other_events),
        "heartbeats": bench.heartbeats,
        "unmatched_rings": len(bench.rings),
        "duplicate_rings": bench.duplicate_rings,
        "duplicates": bench.duplicates,
        "duplicate_rings_before_kill": sum(1 for d in bench.duplicates if d["after_kill_s"] is None),
        "call_ended_events": bench.ended_events,
        "node_log": [
            {"node": i + 1, "lines": len(text.splitlines()), "tracebacks": text.count("Traceback"),
             "max_connections_errors": text.count("Too many connections"),
             "store_unavailable": text.count("store unavailable")}
            for i, text in enumerate(logs)
        ],
    }
    result["targets"] = evaluate_nodes(result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench-signaling",
        description="Benchmark `callctl server`: idle event streams, RSS, ring latency (127.0.0.1 only).",
    )
    ap.add_argument(
        "--streams", type=int, default=5000, help="idle event streams, one per user (5000)"
    )
    ap.add_argument(
        "--rate", type=float, default=None, help="call set-ups per second (100; 200 with --nodes)"
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of calls (20)")
    ap.add_argument("--callers", type=int, default=40, help="distinct caller identities (40)")
    ap.add_argument(
        "--conns-per-caller",
        type=int,
        default=4,
        help="keep-alive connections per caller at most (4)",
    )
    ap.add_argument("--heartbeat", type=float, default=15.0, help="server --heartbeat (15)")
    ap.add_argument("--sdp-bytes", type=int, default=2048, help="size of the offer SDP (2048)")
    ap.add_argument(
        "--connect-concurrency", type=int, default=200, help="streams being opened at once (200)"
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="hard overall limit, s (180; 600 with --nodes)",
    )
    ap.add_argument("--seed", type=int, default=1, help="callee order shuffle seed (1)")
    ap.add_argument(
        "--pin", action="store_true", help="pin the server to CPU0 and the generator to CPU1"
    )
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the generator")
    ap.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile the server (node 1; with --kill-node, in the run with the kill) with py-spy during the call phase "
        "(.txt: collapsed stacks, .json: speedscope, else SVG flame graph)",
    )
    ap.add_argument(
        "--py-spy-native",
        action="store_true",
        help="with --py-spy: include native frames (pauses the server while sampling)",
    )
    ap.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="server nodes (1: one, memory store); 2 or more: on one private redis-server, "
        "the streams spread over them, every call from another node than its callee's",
    )
    ap.add_argument(
        "--kill-node",
        action="store_true",
        help="with --nodes: a second run of set-ups, one node SIGKILLed half way; its clients "
        "come back on the others",
    )
    ap.add_argument(
        "--kill-probes",
        type=int,
        default=100,
        help="with --kill-node: calls to that many of the killed node's devices right after "
        "the kill (100)",
    )
    ap.add_argument("--keep-tmp", action="store_true", help="keep the server's temp dir and logs")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = ap.parse_args(argv)
    if args.rate is None:
        args.rate = 100.0 if args.nodes == 1 else TARGET_NODES_RATE
    if args.timeout is None:
        args.timeout = 180.0 if args.nodes == 1 else 600.0
    if args.kill_node and args.nodes < 2:
        ap.error("--kill-node needs --nodes 2 or more")
    if args.callers < args.nodes:
        ap.error("--callers must be at least --nodes (each node has its callers)")
    limits = {
        "--streams": (args.streams, 1, 50000),
        "--rate": (args.rate, 0.1, 2000),
        "--duration": (args.duration, 0.1, 600),
        "--callers": (args.callers, 1, 1000),
        "--conns-per-caller": (args.conns_per_caller, 1, 64),
        "--heartbeat": (args.heartbeat, 0.2, 300),
        "--sdp-bytes": (args.sdp_bytes, 16, 60000),
        "--connect-concurrency": (args.connect_concurrency, 1, 5000),
        "--timeout": (args.timeout, 10, 3600),
        "--nodes": (args.nodes, 1, 16),
        "--kill-probes": (args.kill_probes, 0, 50000),
    }
    for name, (value, lo, hi) in limits.items():
        if not lo <= value <= hi:
            ap.error(f"{name} must be between {lo:g} and {hi:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not procfs.available():
        log("needs Linux /proc")
        return CANNOT_RUN
    nofile_needed = args.streams + args.callers * args.conns_per_caller + 512
    nofile = raise_nofile(nofile_needed)
    if nofile < nofile_needed:
        log(f"warning: open-file limit {nofile} < {nofile_needed} needed")
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            log("--pin needs 2 CPUs")
            return CANNOT_RUN
        os.sched_setaffinity(0, {1})
    stop_on_signals(args.timeout + 10)  # a backstop: asyncio.wait_for keeps the limit itself

    tmp = Path(tempfile.mkdtemp(prefix="callctl-bench-"))
    server: ServerProcess | None = None
    nodes: list[ServerProcess] = []  # --nodes
    redis: RedisServer | None = None
    holder: list[Bench] = []
    code = CANNOT_RUN
    try:
        if args.nodes == 1:
            server = start_server(tmp, args)
        else:
            redis = start_redis(tmp, args)
            start_nodes(tmp, args, redis, nodes)

        async def bounded() -> dict:
            try:
                if server is not None:
                    return await asyncio.wait_for(run(args, server, holder), args.timeout)
                assert redis is not None
                return await asyncio.wait_for(run_nodes(args, nodes, redis, holder), args.timeout)
            finally:
                for bench in holder:
                    bench.close()
                await asyncio.sleep(0)  # let the transports close

        runner: Any
        if not args.no_uvloop:
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
        else:
            runner = asyncio.run
        result = runner(bounded())
        if args.json:
            print(json.dumps(result, sort_keys=True), flush=True)
        elif server is None:
            print_nodes_report(result)
        else:
            print_report(result)
        code = MISSED if any(t["result"] == "MISS" for t in result["targets"].values()) else MET
    except KeyboardInterrupt:
        log("interrupted")
        code = INTERRUPTED
    except TimeoutError as exc:
        log(f"timeout: {str(exc) or f'hard limit of {args.timeout:g} s reached'}")
        code = CANNOT_RUN
    except BenchError as exc:
        log(f"error: {exc}")
        code = CANNOT_RUN
    finally:
        if server is not None and server.proc is not None and code == CANNOT_RUN:
            if server.proc.returncode is not None:
                log(f"server exited by itself with status {server.proc.returncode}")
        killed = next((b.victim for b in holder if b.victim is not None), None)
        for i, node in enumerate(nodes):
            if node.proc is not None and node.proc.returncode is not None and i != killed:
                log(f"node {i + 1} exited by itself with status {node.proc.returncode}")
        cleaning_up()
        for bench in holder:
            with contextlib.suppress(Exception):
                bench.close()
        if server is not None:
            server.stop()
            errors = server.stderr_text().strip()
            if errors:
                lines = errors.splitlines()
                log(f"server stderr: {len(lines)} lines; last: {lines[-1][:300]}")
        for i, node in enumerate(nodes):
            node.stop()
            errors = node.stderr_text().strip()
            if errors:
                lines = errors.splitlines()
                tracebacks = errors.count("Traceback")
                log(f"node {i + 1} stderr: {len(lines)} lines, {tracebacks} tracebacks; "
                    f"last: {lines[-1][:300]}")
        if redis is not None:
            redis.stop()
        keep_or_remove(tmp, args.keep_tmp)
    return code


if __name__ == "__main__":
    sys.exit(main())

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

Exit status: 0 no target missed, 1 a target missed, 2 the benchmark could not
run (error or overall timeout), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

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
from callctl.harness.looplag import LoopLag  # noqa: E402
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


def start_server(tmp: Path, args: argparse.Namespace) -> ServerProcess:
    """The server under load; it inherits our open-file limit, raised for the streams."""
    # enough new calls per caller and minute for the requested rate, twice over
    per_caller_min = max(30.0, math.ceil(2 * args.rate * 60.0 / args.callers))
    server = ServerProcess(tmp, ["--host", HOST, "--log-level", "warning",
                                 "--heartbeat", str(args.heartbeat),
                                 "--calls-per-minute", str(per_caller_min)])
    try:
        server.start()
    except ServerError as exc:
        raise BenchError(str(exc)) from None
    if args.pin:
        for task in Path(f"/proc/{server.pid}/task").iterdir():  # every thread it has so far
            os.sched_setaffinity(int(task.name), {0})
    log(f"server: {' '.join(server.proc.argv[1:]) if server.proc else ''} (pid {server.pid})")
    return server


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

    def __init__(self, name: str, token: str, port: int, max_conns: int) -> None:
        self.name = name
        self.port = port
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

    def close(self) -> None:
        for conn in list(self.all):
            conn.close()
        self.all.clear()
        self.idle.clear()


# ------------------------------------------------------------------ benchmark


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
    call_t0: float = 0.0
    slow: list[tuple[float, float]] = field(default_factory=list)  # (send offset s, ring ms)
    ended_events: int = 0
    streams_dropped: int = 0
    closing_reasons: Counter[str] = field(default_factory=Counter)
    other_events: Counter[str] = field(default_factory=Counter)
    stream_failures: Counter[str] = field(default_factory=Counter)
    http_failures: Counter[str] = field(default_factory=Counter)
    hangup_failures: Counter[str] = field(default_factory=Counter)
    attempted: int = 0
    succeeded: int = 0
    lost: int = 0
    wrong_callee: int = 0
    ring_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    lag: LoopLag = field(default_factory=lambda: LoopLag(0.01))
    sched_late_ms: list[float] = field(default_factory=list)

    def ring_arrived(self, call_id: str, user: str, now: float) -> None:
        waiter = self.waiters.pop(call_id, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result((now, user))
        else:
            self.rings[call_id] = (now, user)

    # -- phase 1: idle streams
    async def open_streams(self) -> dict[str, float]:
        args = self.args
        loop = asyncio.get_running_loop()
        users = [f"u{i:05d}" for i in range(args.streams)]
        t = time.perf_counter()
        tokens = [issue_token(self.secret, u, SERVICE, 3600) for u in users]
        log(f"minted {len(tokens)} tokens in {time.perf_counter() - t:.2f} s")
        sem = asyncio.Semaphore(args.connect_concurrency)

        async def one(user: str, token: str) -> None:
            request = (
                b"GET /v1/events?device=bench HTTP/1.1\r\nHost: %s\r\n"
                b"Authorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n"
                % (HOST.encode(), token.encode())
            )
            async with sem:
                for attempt in range(3):
                    proto = EventStream(self, user, request)

                    def factory(p: EventStream = proto) -> EventStream:
                        return p

                    try:
                        await asyncio.wait_for(
                            loop.create_connection(factory, HOST, self.server.port), 30
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
                    return

        t0 = time.perf_counter()
        await asyncio.gather(*(one(u, tok) for u, tok in zip(users, tokens, strict=True)))
        took = time.perf_counter() - t0
        return {"open_s": took, "open_per_s": len(self.streams) / took if took > 0 else 0.0}

    # -- phase 2: calls
    async def one_call(self, caller: Caller, callee: str, sdp: str) -> None:
        self.attempted += 1
        body = msgspec.json.encode({"to": callee, "sdp": sdp})
        try:
            status, rbody, sent = await caller.post("/v1/calls", body)
        except HTTP_FAILURES as exc:
            self.http_failures[f"create: {type(exc).__name__}"] += 1
            return
        answered = time.perf_counter()
        if status != 201:
            self.http_failures[f"create: HTTP {status}"] += 1
            return
        self.succeeded += 1
        self.post_ms.append((answered - sent) * 1000)
        call_id = _call_id.decode(rbody).call_id
        got = self.rings.pop(call_id, None)
        if got is None:
            fut: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()
            self.waiters[call_id] = fut
            try:
                remaining = sent + RING_LOST_AFTER_S - time.perf_counter()
                got = await asyncio.wait_for(fut, max(0.0, remaining))
            except TimeoutError:
                got = None
            finally:
                self.waiters.pop(call_id, None)
        if got is None or got[0] - sent > RING_LOST_AFTER_S:
            self.lost += 1
        else:
            self.ring_ms.append((got[0] - sent) * 1000)
            if (got[0] - sent) * 1000 > TARGET_P99_MS:
                self.slow.append((sent - self.call_t0, (got[0] - sent) * 1000))
            if got[1] != callee:
                self.wrong_callee += 1
        try:
            status, _, _ = await caller.post(f"/v1/calls/{call_id}/hangup", b"{}")
            if status != 200:
                self.hangup_failures[f"HTTP {status}"] += 1
        except HTTP_FAILURES as exc:
            self.hangup_failures[type(exc).__name__] += 1

    async def drive_calls(self) -> dict[str, Any]:
        args = self.args
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
        monitor = asyncio.create_task(self.lag.run())
        tasks: set[asyncio.Task[None]] = set()
        pid = self.server.pid
        spy = start_py_spy(args, pid) if args.py_spy else None
        cpu0, gen0, mach0 = procfs.cpu_seconds(pid), os.times(), procfs.machine_ticks()
        t0 = self.call_t0 = time.perf_counter()
        for k in range(n_calls):
            target = t0 + k / args.rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sched_late_ms.append(max(0.0, (time.perf_counter() - target) * 1000))
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

    def close(self) -> None:
        for caller in self.callers:
            caller.close()
        for stream in self.streams:
            if stream.transport is not None:
                stream.transport.abort()


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


def evaluate(r: dict) -> dict[str, dict]:
    def check(ok: bool | None, target: str, value: object) -> dict:
        return {
            "result": "n/a" if ok is None else ("PASS" if ok else "MISS"),
            "target": target,
            "value": value,
        }

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
    log(f"calls done: {bench.succeeded}/{bench.attempted}; {held_end} streams still open")
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
        "attempted": bench.attempted,
        "succeeded": bench.succeeded,
        "achieved_rate": calls["achieved_rate"],
        "ring_ms": stats(bench.ring_ms),
        "post_ms": stats(bench.post_ms),
        "lost_rings": bench.lost,
        "wrong_callee": bench.wrong_callee,
        "http_failures": sum(bench.http_failures.values()) + sum(bench.hangup_failures.values()),
        "http_failure_kinds": dict(bench.http_failures),
        "hangup_failure_kinds": dict(bench.hangup_failures),
        "server_cpu_pct": calls["server_cpu_pct"],
        "generator_cpu_pct": calls["generator_cpu_pct"],
        "machine_cpu_pct": calls["machine_cpu_pct"],
        "generator_lag_ms": stats(bench.lag.lags_ms),
        "schedule_late_ms": stats(bench.sched_late_ms),
        "streams_dropped": bench.streams_dropped,
        "closing_reasons": dict(bench.closing_reasons),
        "heartbeats": bench.heartbeats,
        "unmatched_rings": len(bench.rings),
        "heartbeat_bursts_in_call_phase": calls["hb_bursts"],
        "rings_over_target": len(bench.slow),
        "slow_rings": [
            {"sent_at_s": round(a, 3), "ring_ms": round(b, 1)} for a, b in bench.slow[:200]
        ],
        "call_ended_events": bench.ended_events,
    }
    result["targets"] = evaluate(result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench-signaling",
        description="Benchmark `callctl server`: idle event streams, RSS, ring latency (127.0.0.1 only).",
    )
    ap.add_argument(
        "--streams", type=int, default=5000, help="idle event streams, one per user (5000)"
    )
    ap.add_argument("--rate", type=float, default=100.0, help="call set-ups per second (100)")
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
    ap.add_argument("--timeout", type=float, default=180.0, help="hard overall limit, s (180)")
    ap.add_argument("--seed", type=int, default=1, help="callee order shuffle seed (1)")
    ap.add_argument(
        "--pin", action="store_true", help="pin the server to CPU0 and the generator to CPU1"
    )
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio loop in the generator")
    ap.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile the server with py-spy during the call phase "
        "(.txt: collapsed stacks, .json: speedscope, else SVG flame graph)",
    )
    ap.add_argument(
        "--py-spy-native",
        action="store_true",
        help="with --py-spy: include native frames (pauses the server while sampling)",
    )
    ap.add_argument("--keep-tmp", action="store_true", help="keep the server's temp dir and logs")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = ap.parse_args(argv)
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
    holder: list[Bench] = []
    code = CANNOT_RUN
    try:
        server = start_server(tmp, args)

        async def bounded() -> dict:
            try:
                return await asyncio.wait_for(run(args, server, holder), args.timeout)
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
        keep_or_remove(tmp, args.keep_tmp)
    return code


if __name__ == "__main__":
    sys.exit(main())

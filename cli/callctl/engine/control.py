"""The local control socket of a running ``call`` / ``listen``: JSON lines over a Unix socket.

One socket per identity and device, ``$XDG_RUNTIME_DIR/callctl/SERVICE.USER.DEVICE.sock``
(0600, in a 0700 directory).  Each request is one JSON object on one line;
each answer is one JSON object on one line::

    → {"cmd": "status"}
    ← {"ok": true, "user": "bob", "device": "kiosk", "online": true, "call": {...}}
    → {"cmd": "accept", "call_id": "4f1c..."}        (call_id optional)
    ← {"ok": true, "call": {"state": "connecting", ...}}
    → {"cmd": "hangup"}
    ← {"ok": false, "error": "no call in progress"}
    → {"cmd": "events"}
    ← {"ok": true}
    ← {"v": 1, "ts": 1795320220.1, "event": "call.incoming", ...}   (one line per event, until closed)

    → {"cmd": "video", "arg": "pause"}               (pause | resume | on | off)

    → {"cmd": "dial", "arg": "alice", "opts": {"video": true, "hangup_after": 30}}
    ← {"ok": true, "call": {...}}                     (a ``listen`` only; then, until the call ends:)
    ← {"v": 1, "event": "call.outgoing", ...}         (this call's events, and the phone's)
    → {"cmd": "hangup"}                               (on the same connection; closing it hangs up too)

Commands: status, accept, decline, hangup, mute, unmute, video, events, dial.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callctl.engine.sockets import ControlError, alive, check_private, unix_address

#: A request line may be this long (a ``send`` carries a message); a longer one is answered with an error and skipped.
MAX_LINE = 128 * 1024
#: An ``arg`` is this long at most; a ``send``'s (the message itself) ``MAX_SEND_ARG``.
MAX_ARG = 256
MAX_SEND_ARG = 100_000
#: A connection that sends no request for this long is closed (an event feed is exempt).
IDLE_TIMEOUT_S = 60.0
#: Connections served at once; the next one is told so and closed.
MAX_CLIENTS = 32
#: A request nests no deeper than this (real ones: one level).
MAX_REQUEST_DEPTH = 4


@dataclass(frozen=True)
class Request:
    """One control request: a command, the call it is for (optional) and its argument."""

    cmd: str
    call_id: str | None = None
    arg: str | None = None
    #: Named options (``dial``): flat, each a string, number, true/false or null.
    opts: dict[str, Any] | None = None


#: A request's ``opts`` holds at most this many keys, each value a scalar, strings this long.
MAX_OPTS = 32
MAX_OPT_CHARS = 1024


@dataclass
class Follow:
    """An answer followed by a stream of events on the same connection, until ``last`` says so.

    ``wants(record)``: send this event.  ``last(record)``: it was the final one.
    ``hang_up()``: the client asked to hang up (a ``hangup`` line) or went away.
    """

    answer: dict[str, Any]
    wants: Callable[[dict[str, Any]], bool]
    last: Callable[[dict[str, Any]], bool]
    hang_up: Callable[[], None]


@dataclass
class Later:
    """An answer that takes a while (a DTMF code being sent, a message waiting for its ack).

    The connection waits for it; other connections are served meanwhile.
    """

    work: Awaitable[dict[str, Any]]
    #: The answer when it takes longer than this.
    timeout: float = 30.0

    async def result(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.work, self.timeout)
        except TimeoutError:
            return {"ok": False, "error": f"no result within {self.timeout:g} s"}


class ControlServer:
    def __init__(
        self,
        path: Path,
        handle: Callable[[Request], dict[str, Any] | Follow | Later],
    ) -> None:
        self.path = path
        self.handle = handle
        self._server: asyncio.AbstractServer | None = None
        #: Event feeds: queues (``events``) and filtered ones (``dial``), each with ``put_nowait``.
        self._subscribers: set[Any] = set()
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private(self.path.parent)
        if self.path.exists():
            if alive(self.path):
                raise ControlError(
                    f"another callctl is already running as this identity and device "
                    f"({self.path}); give this one another --device"
                )
            self.path.unlink()
        old = os.umask(0o177)
        try:
            with unix_address(self.path) as address:
                self._server = await asyncio.start_unix_server(self._client, path=address)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def publish(self, record: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(record)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._clients) >= MAX_CLIENTS:
                await _send(writer, {"ok": False, "error": f"more than {MAX_CLIENTS} control connections"})
                return
            self._clients.add(task)
            lines = _Lines(reader)
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT_S):
                        line = await lines.next()
                except TimeoutError:
                    return  # idle: the descriptor is worth more than the connection
                if line is None:
                    return
                if line is _TOO_LONG:
                    await _send(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    continue
                req = parse_request(line)
                if isinstance(req, str):
                    await _send(writer, {"ok": False, "error": req})
                    continue
                if req.cmd == "events":
                    await self._stream_events(reader, writer)
                    return
                answer = self.handle(req)
                if isinstance(answer, Follow):
                    await self._follow(lines, writer, answer)
                    return
                if isinstance(answer, Later):
                    answer = await answer.result()
                await _send(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # closing (``close``): end quietly; a cancelled connection task would make
            # Python 3.11's StreamReaderProtocol log "Exception in callback" with a traceback
            pass
        finally:
            writer.close()
            self._clients.discard(task)

    async def _stream_events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)

        async def hung_up() -> None:  # a feed whose reader left is let go at once, not at the next event
            while await reader.read(4096):
                pass
            queue.put_nowait(None)

        watcher = asyncio.ensure_future(hung_up())
        try:
            await _send(writer, {"ok": True})
            while (record := await queue.get()) is not None:
                await _send(writer, record)
        finally:
            watcher.cancel()
            self._subscribers.discard(queue)

    async def _follow(self, lines: _Lines, writer: asyncio.StreamWriter, follow: Follow) -> None:
        """One call's events to the client that placed it; its ``hangup`` line or leaving hangs up."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)

        class Filtered:  # a subscriber that takes only this call's records
            def put_nowait(self, record: dict[str, Any] | None) -> None:
                if record is None or follow.wants(record):
                    queue.put_nowait(record)

        sink = Filtered()
        self._subscribers.add(sink)
        ended = False

        async def client_lines() -> None:
            while (line := await lines.next()) is not None:
                req = parse_request(line) if line is not _TOO_LONG else None
                if isinstance(req, Request) and req.cmd == "hangup" and not ended:
                    follow.hang_up()
            if not ended:  # the caller's process went away: its call ends with it
                follow.hang_up()

        watcher = asyncio.ensure_future(client_lines())
        try:
            await _send(writer, follow.answer)
            while (record := await queue.get()) is not None:
                ended = follow.last(record)
                await _send(writer, record)
                if ended:
                    break
        finally:
            # a write to a caller that died (kill -9) fails before its read sees the end: hang up here too
            gone, ended = not ended, True
            watcher.cancel()
            self._subscribers.discard(sink)
            if gone:
                follow.hang_up()

    async def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


_TOO_LONG = b"\0too long"


class _Lines:
    """Request lines from a stream, each at most MAX_LINE bytes; a longer one is skipped whole."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = b""
        self._skipping = False

    async def next(self) -> bytes | None:
        """The next line (without its newline), ``_TOO_LONG``, or None at the end."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
                if self._skipping:
                    self._skipping = False
                    continue  # the tail of a line already answered as too long
                return line if len(line) <= MAX_LINE else _TOO_LONG
            if len(self._buffer) > MAX_LINE:
                self._buffer = b""
                if not self._skipping:
                    self._skipping = True
                    return _TOO_LONG
            chunk = await self._reader.read(65536)
            if not chunk:
                return None
            self._buffer += chunk


def parse_request(line: bytes) -> Request | str:
    """A request, or the error to answer with (never an exception, whatever the bytes)."""
    from callctl.signaling.protocol import depth

    usage = 'expected {"cmd": ..., "call_id": ..., "arg": ...}'
    try:
        req = json.loads(line)
    except (ValueError, RecursionError):
        return f"not JSON: {usage}"
    if not isinstance(req, dict) or depth(req, MAX_REQUEST_DEPTH) > MAX_REQUEST_DEPTH:
        return usage
    cmd, call_id, arg, opts = req.get("cmd"), req.get("call_id"), req.get("arg"), req.get("opts")
    if not isinstance(cmd, str) or not all(v is None or isinstance(v, str) for v in (call_id, arg)):
        return usage
    longest = MAX_SEND_ARG if cmd == "send" else MAX_ARG
    if len(cmd) > 32 or (call_id is not None and len(call_id) > 64) or (arg is not None and len(arg) > longest):
        return usage
    if opts is not None:
        if not isinstance(opts, dict) or len(opts) > MAX_OPTS:
            return f"opts: an object of at most {MAX_OPTS} options"
        for key, value in opts.items():
            if len(key) > 32 or not (value is None or isinstance(value, str | int | float | bool)):
                return f"opts: {key[:32]!r} must be a string, number, true/false or null"
            if isinstance(value, str) and len(value) > MAX_OPT_CHARS:
                return f"opts: {key[:32]!r} is longer than {MAX_OPT_CHARS} characters"
    return Request(cmd, call_id, arg, opts)



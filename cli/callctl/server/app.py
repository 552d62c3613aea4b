"""The signaling server: a Starlette app over the Hub, served by uvicorn.

HTTP only lives here: authentication, body limits and decoding, the SSE
framing of ``GET /v1/events``, JSON errors.  Call rules live in ``hub.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from callctl.signaling import protocol as p
from callctl.signaling.auth import Identity, SecretError, TokenError, read_secret, verify_token
from callctl.server import collector
from callctl.server.errors import Refused
from callctl.server.hub import Hub, HubConfig, Stream
from callctl.server.ice import IceConfigError
from callctl.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from callctl.server.store import Close, Heartbeat, MemoryStore, Store, StoredEvent

log = logging.getLogger("callctl.server")
T = TypeVar("T")
DEFAULT_DEVICE = "default"


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return p.encode(content)


def error_response(
    code: p.ErrorCode, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(p.Error(error=code, message=message), status_code=p.STATUS[code],
                        headers=headers)


# ------------------------------------------------------------------ helpers


#: Seconds a client is told to wait (Retry-After) while the store is unavailable.
STORE_RETRY_AFTER_S = 2

#: Failed authentications per client address: sustained rate and burst, then 429.
AUTH_FAILURES_PER_S, AUTH_FAILURE_BURST = 5.0, 100
#: Stream tickets per user, and signals per user.
TICKETS_PER_S, TICKET_BURST = 1.0, 10
SIGNALS_PER_S, SIGNAL_BURST = 20.0, 100


async def _limit(request: Request, key: str, rate_per_s: float, burst: int, what: str) -> None:
    """429 with Retry-After once ``key`` spent its tokens (one bucket per key, in the Store)."""
    wait = await _hub(request).store.take_token(key, rate_per_s, burst)
    if wait > 0:
        retry = max(1, int(wait + 0.999))
        raise Refused(p.ErrorCode.RATE_LIMITED, f"too many {what}; retry in {retry} s",
                      {"Retry-After": str(retry)})


async def _identity(request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("missing bearer token")
        return verify_token(request.app.state.secret, token.strip())
    except TokenError as exc:
        await _failed_login(request)
        raise Refused(p.ErrorCode.UNAUTHORIZED, str(exc)) from None


async def _failed_login(request: Request) -> None:
    """Count a refused token or ticket against the client's address (429 past the burst)."""
    client = request.client.host if request.client else "unknown"
    await _limit(request, f"authfail:{client}", AUTH_FAILURES_PER_S, AUTH_FAILURE_BURST,
                 "failed authentications")


def _allow(value: str | None) -> frozenset[str] | None:
    """``?allow=alice,bob``: the callers this device rings for (others it refuses itself)."""
    if value is None:
        return None
    users = frozenset(u for u in value.split(",") if u)
    if not users or len(users) > p.MAX_ALLOW or not all(p.valid_id(u) for u in users):
        raise Refused(p.ErrorCode.MALFORMED, f"bad allow list: up to {p.MAX_ALLOW} user ids, comma-separated")
    return users


def _device(value: str | None) -> str:
    device = value or DEFAULT_DEVICE
    if not p.valid_id(device):
        raise Refused(p.ErrorCode.INVALID, "bad device id: letters, digits and . _ @ + -")
    return device


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and not re.fullmatch(r"[0-9]{1,12}", length):
        raise Refused(p.ErrorCode.MALFORMED, "bad Content-Length")
    if length is not None and int(length) > p.MAX_BODY_BYTES:
        raise Refused(p.ErrorCode.TOO_LARGE, f"body over {p.MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > p.MAX_BODY_BYTES:
            raise Refused(p.ErrorCode.TOO_LARGE, f"body over {p.MAX_BODY_BYTES} bytes")
    return bytes(body)


async def _body(request: Request, kind: type[T]) -> T:
    """The request's body as ``kind``, or Refused: bounded in size, time and depth."""
    try:
        timeout: float = request.app.state.request_timeout
        body = await asyncio.wait_for(_read_body(request), timeout)
    except TimeoutError:
        raise Refused(p.ErrorCode.MALFORMED, f"body not received within {timeout:g} s") from None
    if not body.strip():
        body = b"{}"
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise Refused(p.ErrorCode.INVALID, str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Refused(p.ErrorCode.MALFORMED, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise Refused(p.ErrorCode.INVALID, "body nests too deeply") from None


Handler = Callable[[Request], Awaitable[Response]]


def endpoint(fn: Handler) -> Handler:
    """Turn Refuseds into JSON error responses."""

    async def wrapper(request: Request) -> Response:
        try:
            return await fn(request)
        except ClientDisconnect:  # the client went away mid-request: nobody to answer
            return Response(status_code=400)
        except Refused as exc:
            headers = dict(exc.headers)
            if exc.code is p.ErrorCode.UNAUTHORIZED:
                headers["WWW-Authenticate"] = 'Bearer realm="callctl"'
            return error_response(exc.code, exc.message, headers)
        except Exception as exc:
            hub = _hub(request)
            if not isinstance(exc, hub.store.unavailable):
                raise
            # nothing was half-done that a retry would double: the client tries again
            log.warning("%s %s: store unavailable: %s", request.method, request.url.path, exc)
            hub.metrics.store_error()
            return error_response(p.ErrorCode.UNAVAILABLE, "the server's store is unavailable; "
                                  "try again shortly", {"Retry-After": str(STORE_RETRY_AFTER_S)})

    wrapper.__name__ = fn.__name__
    return wrapper


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


# ---------------------------------------------------------------- endpoints


@endpoint
async def healthz(request: Request) -> Response:
    """200 when this node can take calls; 503 while its store is unavailable (or it stops)."""
    health = await _hub(request).health()
    return JSONResponse(health, status_code=200 if health.status == "ok" else 503,
                        headers=None if health.status == "ok" else
                        {"Retry-After": str(STORE_RETRY_AFTER_S)})


@endpoint
async def metrics(request: Request) -> Response:
    """Prometheus metrics; no authentication, like /healthz (counts only: no user names)."""
    return Response(_hub(request).metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


@endpoint
async def create_call(request: Request) -> Response:
    me = await _identity(request)
    device = _device(request.headers.get(p.DEVICE_HEADER))
    req = await _body(request, p.CreateCall)
    info = await _hub(request).create_call(me, device, req)
    return JSONResponse(info, status_code=201, headers={"Location": f"/v1/calls/{info.call_id}"})


@endpoint
async def get_call(request: Request) -> Response:
    me = await _identity(request)
    return JSONResponse(await _hub(request).get_call(me, request.path_params["call_id"]))


@endpoint
async def call_action(request: Request) -> Response:
    me = await _identity(request)
    device = _device(request.headers.get(p.DEVICE_HEADER))
    call_id: str = request.path_params["call_id"]
    action: str = request.path_params["action"]
    hub = _hub(request)
    if action == "answer":
        answer = await _body(request, p.AnswerCall)
        return JSONResponse(await hub.answer(me, device, call_id, answer.sdp))
    if action == "decline":
        decline = await _body(request, p.DeclineCall)
        return JSONResponse(await hub.decline(me, call_id, decline.busy, decline.no_answer))
    if action == "hangup":
        hangup = await _body(request, p.HangupCall)
        return JSONResponse(await hub.hangup(me, call_id, hangup.reason))
    if action == "signal":
        await _limit(request, f"signals:{me.key}", SIGNALS_PER_S, SIGNAL_BURST, "signals")
        signal = await _body(request, p.SignalCall)
        if p.depth(signal.data, p.MAX_SIGNAL_DEPTH) > p.MAX_SIGNAL_DEPTH:
            raise Refused(p.ErrorCode.INVALID, f"signal data nests deeper than {p.MAX_SIGNAL_DEPTH}")
        return JSONResponse(await hub.signal(me, device, call_id, signal))
    raise Refused(p.ErrorCode.NOT_FOUND, f"no such action {action!r}")


@endpoint
async def ice_servers(request: Request) -> Response:
    """This user's STUN/TURN servers with fresh TURN credentials (the page refreshes with it)."""
    me = await _identity(request)
    return JSONResponse(_hub(request).ice_servers(me), headers={"Cache-Control": "no-store"})


TICKET_TTL_S = 30.0


@endpoint
async def stream_ticket(request: Request) -> Response:
    """Trade the bearer token for a short-lived, single-use stream ticket.

    EventSource cannot send an Authorization header, and a long-lived token
    must not travel in a URL (it would end up in logs and histories).
    """
    me = await _identity(request)
    await _limit(request, f"tickets:{me.key}", TICKETS_PER_S, TICKET_BURST, "stream tickets")
    await _body(request, p.CreateTicket)
    ticket = secrets.token_urlsafe(24)
    identity = msgspec.json.encode([me.user, me.service, me.expires_at])
    await _hub(request).store.put_ticket(ticket, identity, TICKET_TTL_S)
    return JSONResponse(p.StreamTicket(ticket=ticket, expires_in=TICKET_TTL_S), status_code=201)


async def _stream_identity(request: Request) -> Identity:
    ticket = request.query_params.get("ticket")
    if ticket is None or request.headers.get("authorization"):
        return await _identity(request)
    value = await _hub(request).store.take_ticket(ticket)
    if value is None:
        await _failed_login(request)
        raise Refused(p.ErrorCode.UNAUTHORIZED, "stream ticket unknown, used or expired")
    user, service, expires_at = msgspec.json.decode(value)
    return Identity(user=user, service=service, expires_at=expires_at)


@endpoint
async def events(request: Request) -> Response:
    # everything checked before the ticket is used up and before anything is registered
    device = _device(request.query_params.get("device"))
    last_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if last_id is not None and not p.valid_event_id(last_id):
        raise Refused(p.ErrorCode.MALFORMED, "bad Last-Event-ID: expected an event id this server sent")
    allow = _allow(request.query_params.get("allow"))
    me = await _stream_identity(request)
    stream, backlog, registered = await _hub(request).open_stream(me, device, last_id, allow=allow)
    return EventStreamResponse(_hub(request), stream, backlog, registered)


def _sse(event: StoredEvent) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event.id.encode(),
        event.name.encode(),
        event.data,
    )


#: An event stream whose client does not take a write for this long (or two heartbeats) is closed.
WRITE_TIMEOUT_S = 10.0


class _RingOf(msgspec.Struct):
    """The one field of a ``call.incoming`` event the ring metrics need."""

    call_id: str


class EventStreamResponse(Response):
    """``text/event-stream`` fed from the stream's subscription queue.

    Written as a bare ASGI response (one watcher task for the client's
    disconnect, no task group) because thousands of these stay open at once.
    """

    def __init__(
        self, hub: Hub, stream: Stream, backlog: list[StoredEvent], registered: p.Registered
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self.hub = hub
        self.stream = stream
        self.backlog = backlog
        self.registered = registered

    async def __call__(self, scope: Scope, receive: Receive, asgi_send: Send) -> None:
        sub = self.stream.sub
        # a reader that stops reading must not pin this stream (and its device's
        # presence) forever: a write that cannot go out in time ends the stream
        write_timeout = max(WRITE_TIMEOUT_S, 2 * self.hub.config.heartbeat_s)

        async def send(message: Message) -> None:
            async with asyncio.timeout(write_timeout):  # no task per write: thousands of streams
                await asgi_send(message)

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            sub.close("disconnect")

        watcher = asyncio.create_task(watch_disconnect())
        self.hub.metrics.stream_opened()
        gone = False  # the client closed the connection (as opposed to stalling, or us closing it)
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            )
            first = b"retry: 2000\nevent: registered\ndata: %s\n\n" % p.encode(self.registered)
            last_sent = None
            for event in self.backlog:
                first += _sse(event)
                last_sent = event.id
            await send({"type": "http.response.body", "body": first, "more_body": True})
            await asyncio.sleep(0)  # a client that gave up already is seen by the watcher now
            if not sub.closed:
                await self.hub.stream_started(self.stream)
            for event in self.backlog:
                if event.name == "call.incoming":
                    await self._rang(event)
            self.backlog = []  # sent: don't hold it for the stream's lifetime
            while True:
                item = await sub.get()
                if isinstance(item, StoredEvent):
                    if last_sent is not None and not self.hub.store.is_after(item.id, last_sent):
                        continue  # already sent as part of the backlog
                    chunk = _sse(item)
                elif isinstance(item, Heartbeat):
                    chunk = b": hb\n\n"
                else:
                    assert isinstance(item, Close)
                    gone = item.reason == "disconnect"
                    if item.reason != "disconnect":
                        closing = p.StreamClosing(reason=item.reason)  # type: ignore[arg-type]  # every Close reason but "disconnect" is one of the Literal's
                        body = b"event: stream.closing\ndata: %s\n\n" % p.encode(closing)
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if isinstance(item, StoredEvent) and item.name == "call.incoming":
                    await self._rang(item)
        except OSError:
            gone = True  # the client went away mid-write
        except TimeoutError:
            return  # it stopped reading
        finally:
            self.hub.metrics.stream_closed()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.hub.close_stream(self.stream, gone=gone)

    async def _rang(self, event: StoredEvent) -> None:
        """Count the ring ``event``, just written: its latency from the call's creation."""
        written = time.time()
        call_id = msgspec.json.decode(event.data, type=_RingOf).call_id
        try:
            created = await self.hub.store.call_created_at(call_id)
        except Exception as exc:  # the metric is not worth the stream
            self.hub.metrics.store_error()
            log.warning("ring metrics: reading call %s failed: %r", call_id[:8], exc)
            created = None
        self.hub.metrics.ring_delivered(written - created if created is not None else None)


# ---------------------------------------------------------------- softphone

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
#: The page loads nothing from elsewhere: it works offline on a LAN.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'"
)


async def openapi(request: Request) -> Response:
    from callctl.server.openapi import document_json

    return Response(document_json(), media_type="application/json")


async def softphone(request: Request) -> Response:
    html = (WEB_DIR / "index.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache",
                             "Referrer-Policy": "no-referrer"})


# ---------------------------------------------------------------------- app


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(p.ErrorCode.METHOD_NOT_ALLOWED, "method not allowed",
                              dict(exc.headers or {}))
    if exc.status_code == 404:
        return error_response(p.ErrorCode.NOT_FOUND, "no such endpoint")
    return error_response(p.ErrorCode.INVALID, str(exc.detail))


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
    return error_response(p.ErrorCode.INTERNAL, "internal server error")


def create_app(
    secret: bytes, store: Store | None = None, config: HubConfig | None = None,
    request_timeout: float = 10.0, secret_file: Path | None = None,
) -> EventStreamFirst:
    """The server app; ``request_timeout`` bounds how long a request body may take to arrive.

    With a ``secret_file``, SIGHUP reads it again: tokens signed with the new
    secret are accepted from then on, and tokens of the old one are refused.
    The TURN secret file, if any, is read again too.
    """
    hub = Hub(store or MemoryStore(), config or HubConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        if secret_file is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_secret)
        # what start-up created lives as long as the process, and so do open
        # streams: keep them out of later full collections (collector.py)
        collector.freeze()
        keeper = asyncio.create_task(collector.Collector(lambda: hub.stream_count).run(), name="gc-keeper")
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if secret_file is not None:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await hub.stop()

    def reload_secret() -> None:
        assert secret_file is not None
        try:
            app.state.secret = read_secret(secret_file)
        except SecretError as exc:
            log.error("SIGHUP: kept the old secret: %s", exc)
        else:
            log.info("SIGHUP: secret reloaded from %s", secret_file)
        policy = hub.config.ice
        if policy.turn_secret_file is not None:
            try:
                hub.config.ice = policy.reloaded()
            except IceConfigError as exc:
                log.error("SIGHUP: kept the old TURN secret: %s", exc)
            else:
                log.info("SIGHUP: TURN secret reloaded from %s", policy.turn_secret_file)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/openapi.json", openapi, methods=["GET"]),
            Route("/v1/events", events, methods=["GET"]),
            Route("/v1/stream-tickets", stream_ticket, methods=["POST"]),
            Route("/v1/ice-servers", ice_servers, methods=["GET"]),
            Route("/", softphone, methods=["GET"]),
            Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
            Mount("/web", app=StaticFiles(directory=str(WEB_DIR)), name="web"),
            Route("/v1/calls", create_call, methods=["POST"]),
            Route("/v1/calls/{call_id}", get_call, methods=["GET"]),
            Route("/v1/calls/{call_id}/{action}", call_action, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _not_found, Exception: _internal},
        lifespan=lifespan,
    )
    app.state.secret = secret
    app.state.request_timeout = request_timeout
    app.state.hub = hub
    return EventStreamFirst(app)


#: Sent with every response: no MIME sniffing of our JSON or pages.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff")]


class EventStreamFirst:
    """``GET /v1/events`` straight to its endpoint; everything else through Starlette.

    The long-lived streams skip the middleware and routing layers, which would
    otherwise hold several coroutines and objects per open stream.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        if scope["path"] == "/v1/events" and scope["method"] == "GET":
            scope["app"] = self.app
            response = await events(Request(scope, receive))
            await response(scope, receive, send_hardened)
            return
        await self.app(scope, receive, send_hardened)

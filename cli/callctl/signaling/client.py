"""The signaling client: typed calls to the REST API and a self-healing event stream.

Errors form one tree; a caller catches the branch it cares about::

    SignalingError              anything the server or the network refused
    ├── ServerUnreachable       no answer: refused, timed out, dropped, 5xx, bad TLS
    ├── AuthFailed              401: token missing, invalid or expired
    ├── Forbidden               403: not a party / not the callee / wrong device
    ├── NotFound                404: no such call
    ├── Conflict                409: the call moved on (answered, ended), device cap
    ├── RateLimited             429: see ``retry_after``
    └── RequestRejected         400/413/422: our request was malformed
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import ssl
import time
import sys
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# httpx imports its own command-line client (click, rich, pygments: ~85 ms and
# ~8 MiB at every start) whenever click is installed; callctl never uses it.
# An empty module in its place makes httpx fall back to its no-CLI stub.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))

import httpx  # noqa: E402
import msgspec
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from callctl.signaling import protocol as p

T = TypeVar("T")


class SignalingError(Exception):
    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class ServerUnreachable(SignalingError):
    pass


class AuthFailed(SignalingError):
    pass


class Forbidden(SignalingError):
    pass


class NotFound(SignalingError):
    pass


class Conflict(SignalingError):
    pass


class RateLimited(SignalingError):
    def __init__(self, message: str, code: str, status: int, retry_after: float) -> None:
        super().__init__(message, code, status)
        self.retry_after = retry_after


class RequestRejected(SignalingError):
    pass


_BY_STATUS: dict[int, type[SignalingError]] = {
    401: AuthFailed,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    400: RequestRejected,
    413: RequestRejected,
    422: RequestRejected,
}


#: Idle HTTP connections are kept this long (below the server's 5 s keep-alive).
KEEPALIVE_S = 4.0


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` among ``exc`` and its causes, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _error_from_response(status: int, body: bytes, headers: httpx.Headers) -> SignalingError:
    try:
        err = msgspec.json.decode(body, type=p.Error)
        code, message = err.error.value, err.message
    except msgspec.DecodeError:
        code, message = "", body[:200].decode(errors="replace") or f"HTTP {status}"
    if status == 429:
        try:
            retry = float(headers.get("retry-after", "1"))
        except ValueError:
            retry = 1.0
        return RateLimited(message, code, status, retry)
    if status >= 500:
        return ServerUnreachable(f"server error {status}: {message}", code, status)
    return _BY_STATUS.get(status, SignalingError)(message, code, status)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        dns = _cause(exc, socket.gaierror)
        if dns is not None:  # say so: it is not the server that is down
            try:
                host = exc.request.url.host
            except RuntimeError:  # no request attached
                host = "the server's name"
            return f"cannot resolve {host} (DNS): {getattr(dns, 'strerror', None) or dns}"
        return f"cannot connect: {exc}" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ------------------------------------------------------------------ stream items


@dataclass(frozen=True, slots=True)
class Received:
    """An event from the server, with its id (None for ``registered``)."""

    id: str | None
    event: p.Event


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The stream dropped (or could not connect); it retries after ``retry_in`` s."""

    error: SignalingError
    retry_in: float
    #: We closed it ourselves (``restart``, or to renew an expired token): not news of an outage.
    deliberate: bool = False


StreamItem = Received | Disconnected

#: The ``registered`` event must arrive this soon after the stream is requested.
FIRST_EVENT_TIMEOUT_S = 10.0
#: While hurrying (``EventStream.restart``): connect timeout and longest wait between tries.
HURRY_CONNECT_S = 0.7
HURRY_BACKOFF_S = 0.2
#: The longest wait between two attempts to open the event stream (±20 %): a server that
#: comes back after any outage is reached again within 5 s.
MAX_BACKOFF_S = 4.0


class SignalingClient:
    """One identity (token) and one device talking to one server."""

    def __init__(
        self,
        server: str,
        token: str | Callable[[], str],
        *,
        device: str = "default",
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.server = server.rstrip("/")
        self.device = device
        self._token = token
        self._last_token = ""
        if self.server.startswith("https://"):
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file)
        else:
            # plain http: a context with no CA store loaded (loading one costs
            # ~100 ms); if anything ever redirects to https it fails closed
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.AsyncClient(
            base_url=self.server,
            verify=verify,
            timeout=httpx.Timeout(timeout),
            headers={p.DEVICE_HEADER: device},
            follow_redirects=False,
            # the server closes an idle connection after 5 s (uvicorn's keep-alive); a pool that keeps
            # its own longer holds the closed ones (CLOSE_WAIT) until its next request: fewer, shorter
            limits=httpx.Limits(max_keepalive_connections=4, keepalive_expiry=KEEPALIVE_S),
        )

    def _auth(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        self._last_token = token
        return {"Authorization": f"Bearer {token}"}

    @property
    def token_renews(self) -> bool:
        """The token comes from a provider (a file, or minted): an expired one may be replaced."""
        return callable(self._token)

    def token_expired(self) -> bool:
        """The token sent last is past its ``exp`` (read without checking the signature)."""
        import jwt

        try:
            claims = jwt.decode(self._last_token, options={"verify_signature": False, "verify_exp": False})
            return float(claims.get("exp", 0)) <= time.time()
        except (jwt.InvalidTokenError, TypeError, ValueError):
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> SignalingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ REST
    async def _request(self, method: str, path: str, body: Any, kind: type[T]) -> T:
        content = p.encode(body) if body is not None else None
        headers = self._auth()
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = await self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"{self.server}: {_describe(exc)}") from None
        if resp.status_code >= 400:
            raise _error_from_response(resp.status_code, resp.content, resp.headers)
        try:
            return msgspec.json.decode(resp.content, type=kind)
        except msgspec.DecodeError as exc:
            raise ServerUnreachable(f"unexpected answer from {self.server}: {exc}") from None

    async def create_call(
        self, to: str, sdp: str, media: p.Media = p.Media.AUDIO, ring_timeout: float | None = None
    ) -> p.CallInfo:
        req = p.CreateCall(to=to, sdp=sdp, media=media, ring_timeout=ring_timeout)
        return await self._request("POST", "/v1/calls", req, p.CallInfo)

    async def get_call(self, call_id: str) -> p.CallInfo:
        return await self._request("GET", f"/v1/calls/{call_id}", None, p.CallInfo)

    async def answer(self, call_id: str, sdp: str) -> p.CallInfo:
        return await self._request(
            "POST", f"/v1/calls/{call_id}/answer", p.AnswerCall(sdp=sdp), p.CallInfo
        )

    async def decline(self, call_id: str, busy: bool = False, no_answer: bool = False) -> p.CallInfo:
        return await self._request(
            "POST", f"/v1/calls/{call_id}/decline", p.DeclineCall(busy=busy, no_answer=no_answer),
            p.CallInfo
        )

    async def hangup(
        self, call_id: str, reason: p.EndReason = p.EndReason.HANGUP
    ) -> p.CallInfo:
        return await self._request(
            "POST", f"/v1/calls/{call_id}/hangup", p.HangupCall(reason=reason), p.CallInfo
        )

    async def signal(self, call_id: str, kind: str, data: dict[str, Any] | None = None) -> None:
        await self._request(
            "POST",
            f"/v1/calls/{call_id}/signal",
            p.SignalCall(kind=kind, data=data or {}),
            p.CallInfo,
        )

    async def ice_servers(self) -> p.IceServers:
        """This user's STUN/TURN servers, with TURN credentials issued now."""
        return await self._request("GET", "/v1/ice-servers", None, p.IceServers)

    async def health(self) -> p.Health:
        try:
            resp = await self._http.get("/healthz")
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"{self.server}: {_describe(exc)}") from None
        if resp.status_code != 200:
            raise _error_from_response(resp.status_code, resp.content, resp.headers)
        return msgspec.json.decode(resp.content, type=p.Health)

    # ---------------------------------------------------------------- events
    def events(self, *, max_backoff: float = MAX_BACKOFF_S, allow: frozenset[str] | None = None) -> EventStream:
        """The event stream; ``allow``: the only callers this device rings for (the server
        sends no ringback to others: this device refuses them)."""
        return EventStream(self, max_backoff=max_backoff, allow=allow)


class EventStream:
    """``GET /v1/events`` as an endless async iterator of ``StreamItem``.

    Reconnects by itself with backoff and ``Last-Event-ID``, and drops events
    it has already yielded.  It ends only by raising: ``AuthFailed`` (token
    refused or expired), ``Conflict`` (device cap reached, or this device was
    taken over by a newer stream), or when the caller stops iterating.
    """

    def __init__(self, client: SignalingClient, *, max_backoff: float,
                 allow: frozenset[str] | None = None) -> None:
        self._client = client
        self._max_backoff = max_backoff
        self._params = {"device": client.device}
        if allow is not None:
            self._params["allow"] = ",".join(sorted(allow))
        self.last_id: str | None = None
        self._seen: collections.deque[str] = collections.deque(maxlen=1024)
        self._seen_set: set[str] = set()
        self.connected = False
        self.heartbeat_s = 15.0
        #: Until this (monotonic) time, reconnect with short timeouts and no backoff.
        self._hurry_until = 0.0
        self._restart_asked = False
        #: The deadline of what the stream waits on now (a connect or a line), to cut it short.
        self._deadline: asyncio.Timeout | None = None
        self._wake = asyncio.Event()

    @property
    def hurrying(self) -> bool:
        return time.monotonic() < self._hurry_until

    def restart(self, hurry_s: float = 0.0) -> None:
        """Drop the current connection and open a new one now; for ``hurry_s`` retry fast.

        For a network that just broke: a TCP connection that was cut may take
        many seconds of retransmission back-off to move again, a new one
        moves as soon as the path is back.
        """
        self._hurry_until = max(self._hurry_until, time.monotonic() + hurry_s)
        self._restart_asked = True
        self._wake.set()
        deadline = self._deadline
        if deadline is not None:
            with contextlib.suppress(RuntimeError):  # it has just finished
                deadline.reschedule(asyncio.get_running_loop().time())

    def _wait_at_most(self, seconds: float) -> asyncio.Timeout:
        self._deadline = asyncio.timeout(seconds)
        return self._deadline

    def _remember(self, event_id: str) -> bool:
        """False if this id was seen already."""
        if event_id in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(event_id)
        self._seen_set.add(event_id)
        return True

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        attempt = 0
        while True:
            self._restart_asked = False
            try:
                async for item in self._connect_once():
                    attempt = 0
                    yield item
                error: SignalingError = ServerUnreachable("event stream ended")
            except ServerUnreachable as exc:
                error = exc
            self.connected = False
            deliberate, self._restart_asked = self._restart_asked, False
            longest = HURRY_BACKOFF_S if self.hurrying else self._max_backoff
            delay = 0.0 if deliberate else min(longest, 0.1 * (2**attempt)) * random.uniform(0.8, 1.2)
            attempt += 1
            yield Disconnected(error, delay, deliberate=deliberate)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)  # restart() cuts it short

    def _silence_limit(self) -> float:
        """A stream silent this long is dead (the server stopped, the path broke).

        Until ``registered`` arrives (it is the first thing a server sends) the
        limit is the connect timeout; after it, 2.5 of the heartbeats the server
        announced, so ``--heartbeat`` is what decides how fast a stop is noticed.
        """
        return max(2.0, self.heartbeat_s * 2.5) if self.connected else FIRST_EVENT_TIMEOUT_S

    async def _sse(self, response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
        """Server-Sent Events read line by line under a deadline.

        Any line proves the stream alive, the heartbeat comments (``: hb``)
        too, which an event-level reader never sees.
        """
        lines = response.aiter_lines().__aiter__()
        name, data, event_id = "", list[str](), ""
        while True:
            try:
                # asyncio.timeout, not wait_for: the read stays in this task (httpcore's
                # cancel scopes must be entered and left by one task)
                async with self._wait_at_most(self._silence_limit()):
                    line = await lines.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if self._restart_asked:
                    raise ServerUnreachable("event stream reopened") from None
                raise ServerUnreachable(
                    f"{self._client.server}: no event or heartbeat for {self._silence_limit():g} s"
                ) from None
            if not line:  # a blank line ends an event
                if data or name:
                    yield ServerSentEvent(event=name or "message", data="\n".join(data), id=event_id)
                name, data, event_id = "", list[str](), ""
                continue
            if line.startswith(":"):
                continue  # a comment: the heartbeat
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id" and "\0" not in value:
                event_id = value

    async def _connect_once(self) -> AsyncIterator[StreamItem]:
        c = self._client
        headers = c._auth()
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        # our own deadline per event (below) decides; httpx's read timeout is a backstop
        connect_s = HURRY_CONNECT_S if self.hurrying else 10.0
        timeout = httpx.Timeout(connect_s, read=max(60.0, self.heartbeat_s * 3))
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with self._wait_at_most(connect_s + 1.0):  # restart() cuts it short
                        source = await stack.enter_async_context(aconnect_sse(
                            c._http,
                            "GET",
                            "/v1/events",
                            params=self._params,
                            headers=headers,
                            timeout=timeout,
                        ))
                except TimeoutError:
                    why = "event stream reopened" if self._restart_asked else "timed out connecting"
                    raise ServerUnreachable(f"{c.server}: {why}") from None
                resp = source.response
                if resp.status_code != 200:
                    body = await resp.aread()
                    error = _error_from_response(resp.status_code, body, resp.headers)
                    if isinstance(error, (ServerUnreachable, RateLimited)):
                        raise ServerUnreachable(error.message, error.code, error.status)
                    if isinstance(error, AuthFailed) and c.token_renews and c.token_expired():
                        # a token file not rotated yet: wait for the new token, don't give up
                        raise ServerUnreachable(f"{c.server}: the access token has expired; "
                                                "waiting for a fresh one", error.code, error.status)
                    raise error
                async for sse in self._sse(resp):
                    if not sse.event or sse.event == "message":
                        continue
                    try:
                        event = p.decode_event(sse.data)
                    except msgspec.DecodeError:
                        continue  # an event type from a newer server: skip it
                    if isinstance(event, p.StreamClosing):
                        if event.reason == "token_expired":
                            if c.token_renews:  # the provider has a fresh one (a rotated file)
                                self._restart_asked = True  # reopened at once, on purpose: no outage
                                raise ServerUnreachable(f"{c.server}: the access token expired; "
                                                        "reconnecting with a fresh one")
                            raise AuthFailed("token expired", "unauthorized", 401)
                        if event.reason == "replaced":
                            raise Conflict(
                                f"another stream took over device {c.device!r}",
                                "replaced",
                                409,
                            )
                        continue  # shutdown/overflow: reconnect after the close
                    if isinstance(event, p.Registered):
                        self.connected = True
                        self.heartbeat_s = event.heartbeat_s
                        if self.last_id is None:
                            self.last_id = event.cursor
                        yield Received(None, event)
                        continue
                    if sse.id:
                        if not self._remember(sse.id):
                            continue
                        self.last_id = sse.id
                    yield Received(sse.id or None, event)
        except (httpx.HTTPError, SSEError) as exc:
            raise ServerUnreachable(f"{c.server}: {_describe(exc)}") from None

"""HTTP/1.1 connections that cannot be held open by a slow or hostile client.

uvicorn's httptools protocol, with what it lacks: a deadline for the request
headers (a client that connects and sends nothing, or trickles a header a
byte at a time, is dropped with 408), and bounds on the header section's
size and header count (431).  Idle keep-alive connections are uvicorn's own
``timeout_keep_alive``; request bodies have their deadline in ``app.py``.
"""

from __future__ import annotations

import asyncio
import json
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: The request line and headers must arrive within this.
HEADER_TIMEOUT_S = 10.0
#: The request line and headers together, and how many headers.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 64
#: The connection itself is closed this long after the app's body deadline.
BODY_GRACE_S = 2.0

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    #: ``callctl server --request-timeout`` makes a subclass with its own value.
    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own signature
        super().connection_made(transport)
        self._rejected = False
        self._header_bytes = 0
        self._header_count = 0
        self._request_header_bytes = 0
        self._in_headers = True
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._reject, 408, "request headers not received in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _cancel_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _reject(self, status: int, message: str) -> None:
        """Answer with a JSON error and close; nothing of this request reaches the app."""
        if self._rejected:
            return
        self._rejected = True
        self._cancel_timer()
        code = "too_large" if status == 431 else "malformed"
        body = json.dumps({"error": code, "message": message}).encode()
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n"
                "x-content-type-options: nosniff\r\n\r\n").encode()
        if not self.transport.is_closing():
            self.transport.write(head + body)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        super().data_received(data)
        # counted after parsing: a chunk that finished the headers may carry a body
        if self._in_headers and not self._rejected:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:  # one header line without an end, say
                self._reject(431, f"request headers over {MAX_HEADER_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_count, self._request_header_bytes = True, 0, 0
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._header_timer = self.loop.call_later(
                self.header_timeout, self._reject, 408, "request headers not received in time")

    def on_url(self, url: bytes) -> None:
        if not self._rejected:
            super().on_url(url)
            if len(self.url) > MAX_HEADER_BYTES:
                self._reject(431, f"request line over {MAX_HEADER_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._request_header_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADERS:
            self._reject(431, f"more than {MAX_HEADERS} request headers")
        elif self._request_header_bytes + len(self.url) > MAX_HEADER_BYTES:
            self._reject(431, f"request headers over {MAX_HEADER_BYTES} bytes")
        if not self._rejected:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._cancel_timer()
        if not self._rejected:
            # the body has the same deadline: a client trickling a body (or an endless
            # chunked one) must not hold the connection, whatever the app does with it
            # (a little later than the app's own body deadline, so that one answers first)
            self._header_timer = self.loop.call_later(
                self.header_timeout + BODY_GRACE_S, self._body_too_slow)
            super().on_headers_complete()

    def _body_too_slow(self) -> None:
        self._header_timer = None
        self._rejected = True
        if not self.transport.is_closing():
            self.transport.close()  # the app sees the client gone; nothing more is read

    def on_body(self, body: bytes) -> None:
        if not self._rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        if not self._rejected:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refuses, as our JSON error and no log noise."""
        self._reject(400, "malformed HTTP request")

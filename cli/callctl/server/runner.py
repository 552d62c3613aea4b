"""Running the app: our own listening socket, uvicorn, a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callctl.server.app import EventStreamFirst
from callctl.server.guard import GuardedHttpToolsProtocol
from callctl.server.hub import Hub

@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    #: Request headers, and request bodies, must arrive within this.
    request_timeout: float = 10.0


class ListenError(Exception):
    pass


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: one clear error, and port 0 works."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(app: EventStreamFirst, sock: socket.socket, options: ServerOptions,
          announce: Callable[[str], None]) -> None:
    """Run until SIGINT/SIGTERM; open streams are closed first, then we exit.

    ``announce`` gets the URL once start-up is done (the ready line): the hub
    has started and SIGHUP is handled, so whoever waits for that line may
    signal the server or call it straight away.
    """
    import uvicorn

    hub: Hub = app.state.hub

    scheme = "https" if options.tls_cert else "http"
    host, port = sock.getsockname()[:2]

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)  # after the lifespan's start-up
            if not self.should_exit:
                announce(f"{scheme}://{_url_host(host)}:{port}")

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await hub.close_streams()
            await super().shutdown(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # a clean stop on SIGTERM/SIGINT exits 0: don't re-raise the signal
            self._captured_signals.clear()

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=options.log_level,
        access_log=options.log_level == "debug",
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        timeout_graceful_shutdown=3,
        loop=loop,
        # header deadline and limits (guard.py)
        http=type("Protocol", (GuardedHttpToolsProtocol,), {"header_timeout": options.request_timeout}),
        ws="none",
        lifespan="on",
        server_header=False,
    )
    Server(config).run(sockets=[sock])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

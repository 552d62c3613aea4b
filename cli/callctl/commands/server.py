"""Run the signaling server (presence, ringing, call set-up)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from callctl.exitcodes import ExitCode
from callctl.paths import default_secret_file
from callctl.ui.console import fail

LOG_LEVELS = ("debug", "info", "warning", "error")


def server(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(envvar="CALLCTL_SERVER_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="CALLCTL_SERVER_PORT", min=0, max=65535, help="Port (0: any free one).")
    ] = 8765,
    ring_timeout: Annotated[
        float, typer.Option(min=1, max=3600, help="Seconds a call rings before no_answer/unavailable.")
    ] = 60.0,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            envvar="CALLCTL_SECRET_FILE",
            help="Token signing secret (default: ~/.local/state/callctl/server-secret, created 0600).",
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    heartbeat: Annotated[
        float, typer.Option(min=0.2, max=300, help="Seconds between keep-alive comments on event streams (also paces token-expiry checks).")
    ] = 15.0,
    max_devices: Annotated[
        int, typer.Option(min=1, max=1000, help="Event streams (devices) one user may have open.")
    ] = 8,
    calls_per_minute: Annotated[
        float, typer.Option(min=0.1, help="New calls one caller may start per minute (burst 10).")
    ] = 30.0,
    offline_grace: Annotated[
        float, typer.Option(min=1, help="Seconds a party's device may stay offline before its call ends.")
    ] = 20.0,
    ice_server: Annotated[
        list[str] | None,
        typer.Option(help="STUN/TURN URL handed to clients (repeatable). None by default: LAN only."),
    ] = None,
    ice_username: Annotated[str | None, typer.Option(help="TURN username.")] = None,
    ice_credential: Annotated[str | None, typer.Option(help="TURN password.")] = None,
    request_timeout: Annotated[
        float, typer.Option(envvar="CALLCTL_REQUEST_TIMEOUT", min=0.5, max=300,
                            help="Seconds a client may take to send a request's headers, and its body.")
    ] = 10.0,
) -> None:
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}", ExitCode.USAGE)
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", ExitCode.USAGE)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            fail(f"cannot read {path}", ExitCode.USAGE)
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    ice = []
    for url in ice_server or []:
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            fail(f"bad --ice-server {url!r}: expected stun:, stuns:, turn: or turns: URL", ExitCode.USAGE)
        ice.append(url)

    from callctl.signaling import protocol as p
    from callctl.signaling.auth import SecretError, load_or_create_secret
    from callctl.server.app import create_app
    from callctl.server.hub import HubConfig
    from callctl.server.runner import ListenError, ServerOptions, bind, configure_logging, serve

    try:
        secret = load_or_create_secret(secret_file or default_secret_file())
    except SecretError as exc:
        fail(str(exc), ExitCode.USAGE)
    try:
        sock = bind(host, port)
    except ListenError as exc:
        fail(str(exc), ExitCode.USAGE)
    config = HubConfig(
        ring_timeout_s=ring_timeout,
        heartbeat_s=heartbeat,
        max_devices=max_devices,
        calls_per_minute=calls_per_minute,
        offline_grace_s=offline_grace,
        ice_servers=tuple(
            p.IceServer(
                urls=[u],
                username=ice_username if u.startswith("turn") else None,
                credential=ice_credential if u.startswith("turn") else None,
            )
            for u in ice
        ),
    )
    configure_logging(log_level)
    app = create_app(secret, config=config, request_timeout=request_timeout,
                     secret_file=secret_file or default_secret_file())
    options = ServerOptions(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                            log_level=log_level.lower(), request_timeout=request_timeout)
    serve(app, sock, options, announce=_announce_json if ctx.obj.json else _announce_plain)


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair now: garbage files are one usage error, not a traceback at start-up."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        fail(f"cannot use --tls-cert {cert} with --tls-key {key}: {getattr(exc, 'reason', None) or exc}",
             ExitCode.USAGE)


def _announce_plain(url: str) -> None:
    print(f"callctl server listening on {url}", flush=True)


def _announce_json(url: str) -> None:
    # the one line a supervisor (callctl.harness, a test, a bench) waits for: docs/EVENTS.md
    from callctl.ui.output import JsonOutput

    record = {"v": 1, "ts": round(time.time(), 3), "event": "server.listening", "url": url}
    JsonOutput()("server.listening", record)

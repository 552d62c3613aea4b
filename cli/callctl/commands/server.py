"""Run the signaling server (presence, ringing, call set-up)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callctl.exitcodes import ExitCode
from callctl.paths import default_secret_file
from callctl.ui.console import fail

if TYPE_CHECKING:
    from callctl.server.ice import IcePolicy
    from callctl.server.store import Store
    from callctl.server.tls import SelfSigned

LOG_LEVELS = ("debug", "info", "warning", "error")


def server(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(envvar="CALLCTL_SERVER_HOST",
                     help="Address to listen on: 0.0.0.0 (or ::) serves the LAN; add --tls self-signed "
                     "(or --tls-cert/--tls-key) there, as browsers on other machines get the microphone "
                     "only over HTTPS (docs/BROWSER.md)."),
    ] = "127.0.0.1",
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
    tls: Annotated[
        str | None,
        typer.Option("--tls", envvar="CALLCTL_SERVER_TLS", metavar="self-signed",
                     help="self-signed: serve HTTPS with a certificate for this machine's names and "
                     "addresses, made once and kept next to the secret file (server-cert.pem: its "
                     "fingerprint is printed at start; clients trust it with "
                     "--ca-file server-cert.pem)."),
    ] = None,
    tls_name: Annotated[
        list[str] | None,
        typer.Option("--tls-name", envvar="CALLCTL_SERVER_TLS_NAME",
                     help="Another DNS name or address the self-signed certificate covers, "
                     "e.g. kiosk.example.lan (repeatable)."),
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
    stun: Annotated[
        list[str] | None,
        typer.Option(envvar="CALLCTL_STUN", help="STUN URL handed to clients, e.g. stun:turn.example.com:3478 (repeatable)."),
    ] = None,
    turn: Annotated[
        list[str] | None,
        typer.Option(envvar="CALLCTL_TURN", help="TURN URL handed to clients with credentials that expire, "
                     "e.g. turn:turn.example.com:3478?transport=udp (repeatable; needs --turn-secret-file)."),
    ] = None,
    turn_secret_file: Annotated[
        Path | None,
        typer.Option(envvar="CALLCTL_TURN_SECRET_FILE",
                     help="The TURN server's shared secret (coturn's static-auth-secret), one line."),
    ] = None,
    turn_ttl: Annotated[
        str, typer.Option(envvar="CALLCTL_TURN_TTL", help="How long a TURN credential works: 3600, 30m, 1h (at most 24h).")
    ] = "1h",
    ice_server: Annotated[
        list[str] | None,
        typer.Option(envvar="CALLCTL_ICE_SERVER",
                     help="A STUN/TURN URL handed out as it is, with --ice-username/--ice-credential "
                     "(a TURN service with its own long-lived credentials; repeatable)."),
    ] = None,
    ice_username: Annotated[str | None, typer.Option(envvar="CALLCTL_ICE_USERNAME", help="Static TURN username.")] = None,
    ice_credential: Annotated[
        str | None, typer.Option(envvar="CALLCTL_ICE_CREDENTIAL", help="Static TURN password.")
    ] = None,
    request_timeout: Annotated[
        float, typer.Option(envvar="CALLCTL_REQUEST_TIMEOUT", min=0.5, max=300,
                            help="Seconds a client may take to send a request's headers, and its body.")
    ] = 10.0,
    store: Annotated[
        str, typer.Option(envvar="CALLCTL_STORE", metavar="memory|redis://HOST:PORT/DB",
                          help="Where calls, event logs and presence live: memory (this process, "
                          "the default) or a Redis that several server nodes share (docs/SCALING.md).")
    ] = "memory",
) -> None:
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}", ExitCode.USAGE)
    if tls is not None and tls != "self-signed":
        fail(f"--tls {tls!r}: the one choice is self-signed (or give --tls-cert/--tls-key)", ExitCode.USAGE)
    if tls is not None and (tls_cert is not None or tls_key is not None):
        fail("--tls self-signed or --tls-cert/--tls-key, not both", ExitCode.USAGE)
    if tls_name and tls is None:
        fail("--tls-name is for --tls self-signed", ExitCode.USAGE)
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", ExitCode.USAGE)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            fail(f"cannot read {path}", ExitCode.USAGE)
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
    ice = _ice_policy(stun or [], turn or [], turn_secret_file, turn_ttl,
                      ice_server or [], ice_username, ice_credential)
    shared = _store(store)
    own = _self_signed(host, tls_name or [], secret_file or default_secret_file()) if tls else None
    if own is not None:
        tls_cert, tls_key = own.cert_file, own.key_file

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
        ice=ice,
    )
    configure_logging(log_level)
    app = create_app(secret, store=shared, config=config, request_timeout=request_timeout,
                     secret_file=secret_file or default_secret_file())
    options = ServerOptions(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                            log_level=log_level.lower(), request_timeout=request_timeout)
    if ctx.obj.json:
        serve(app, sock, options, announce=lambda url: _announce_json(url, own))
    else:
        serve(app, sock, options, announce=lambda url: _announce_plain(url, own))


def _ice_policy(stun: list[str], turn: list[str], secret_file: Path | None, ttl: str,
                static: list[str], username: str | None, credential: str | None) -> IcePolicy:
    """The ICE servers to hand out, checked (usage errors exit 2)."""
    from callctl.server.ice import MAX_TURN_TTL_S, MIN_TURN_TTL_S, IceConfigError, IcePolicy, check_url, \
        parse_duration, read_secret, static_servers

    try:
        for url in stun:
            check_url(url, kind="stun")
        for url in turn:
            check_url(url, kind="turn")
        servers = tuple(static_servers(static, username, credential))
        ttl_s = parse_duration(ttl)
        if not MIN_TURN_TTL_S <= ttl_s <= MAX_TURN_TTL_S:
            raise IceConfigError(f"--turn-ttl {ttl!r}: between {MIN_TURN_TTL_S} s and 24h")
        if turn and secret_file is None:
            raise IceConfigError("--turn needs --turn-secret-file (or use --ice-server with "
                                 "--ice-username/--ice-credential for static credentials)")
        if secret_file is not None and not turn:
            raise IceConfigError("--turn-secret-file is for --turn URLs: give at least one")
        secret = read_secret(secret_file) if secret_file is not None else None
    except IceConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    return IcePolicy(stun=tuple(stun), turn=tuple(turn), turn_secret=secret, turn_ttl_s=ttl_s,
                     turn_secret_file=secret_file, static=servers)


def _store(url: str) -> Store:
    """The store named by ``--store``; a Redis must answer now (exit 10 if it does not)."""
    from callctl.server.store import StoreConfigError, open_store

    try:
        chosen = open_store(url)
    except StoreConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    if url != "memory":
        import redis
        from redis.exceptions import RedisError

        try:
            redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0).ping()
        except (RedisError, OSError, ValueError) as exc:
            fail(f"cannot reach the store {url}: {exc}", ExitCode.SERVER_UNREACHABLE)
    return chosen


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair now: garbage files are one usage error, not a traceback at start-up."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        fail(f"cannot use --tls-cert {cert} with --tls-key {key}: {getattr(exc, 'reason', None) or exc}",
             ExitCode.USAGE)


def _self_signed(host: str, names: list[str], secret_file: Path) -> SelfSigned:
    """The kept certificate (or a new one, said on stderr), next to the secret; errors exit 2."""
    import sys

    from callctl.server.tls import TlsError, machine_names, self_signed

    try:
        own = self_signed(secret_file.parent, machine_names(host, names))
    except TlsError as exc:
        fail(str(exc), ExitCode.USAGE)
    if own.renewed:
        print(f"callctl server: made a new TLS certificate, as the kept one ({own.cert_file}) "
              f"{own.renewed}: its fingerprint changed", file=sys.stderr, flush=True)
    return own


def _announce_plain(url: str, own: SelfSigned | None) -> None:
    if own is not None:
        print(f"TLS certificate {own.cert_file} (self-signed) for {own.names.describe()}\n"
              f"SHA-256 fingerprint {own.fingerprint}", flush=True)
    print(f"callctl server listening on {url}", flush=True)


def _announce_json(url: str, own: SelfSigned | None) -> None:
    # the one line a supervisor (callctl.harness, a test, a bench) waits for: docs/EVENTS.md
    from callctl.ui.output import JsonOutput

    record: dict[str, object] = {"v": 1, "ts": round(time.time(), 3), "event": "server.listening", "url": url}
    if own is not None:
        record.update(tls_cert=str(own.cert_file), tls_sha256=own.fingerprint,
                      tls_names=own.names.as_list())
    JsonOutput()("server.listening", record)

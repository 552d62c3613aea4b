"""What ``call``, ``listen`` and ``demo`` share: identity, media checks, output, running a Phone."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from callctl.config import Settings, TokenFile
from callctl.exitcodes import ExitCode
from callctl.paths import default_secret_file
from callctl.ui.console import fail

if TYPE_CHECKING:
    from callctl.engine.phone import CallPolicy, Phone
    from callctl.media.assembly import MediaOptions

#: How long `call` waits for the server before giving up with server_unreachable.
REGISTER_TIMEOUT_S = 5.0


def default_device() -> str:
    name = re.sub(r"[^A-Za-z0-9._@+-]", "-", socket.gethostname())[:64].lstrip(".-_@+")
    return name or "default"


def _token_claims(token: str, where: str) -> tuple[str, str]:
    import jwt

    from callctl.signaling.protocol import valid_id

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        user, service = claims["sub"], claims["svc"]
        if not (valid_id(user) and valid_id(service)):
            raise KeyError("sub")
    except jwt.ExpiredSignatureError:
        fail(f"the access token {where} has expired", ExitCode.AUTH_FAILED)
    except (jwt.InvalidTokenError, KeyError, TypeError):
        fail(f"the access token is not a valid callctl token (check {where})", ExitCode.AUTH_FAILED)
    return user, service


def identity(settings: Settings) -> tuple[Callable[[], str], str, str]:
    """(token provider, user, service) from --token or --token-file, or minted from the server secret."""
    from callctl.signaling.auth import SecretError, issue_token, read_secret

    if settings.token_file is not None:
        source = TokenFile(settings.token_file)
        try:
            first = source.read()
        except (OSError, ValueError) as exc:
            fail(f"cannot read the token file {settings.token_file}: "
                 f"{getattr(exc, 'strerror', None) or exc}", ExitCode.AUTH_FAILED)
        user, service = _token_claims(first, f"in {settings.token_file}")
        if settings.user and settings.user != user:
            fail(f"--as {settings.user} does not match the token, which is for {user}", ExitCode.USAGE)
        return source, user, service
    if settings.token:
        user, service = _token_claims(settings.token, "--token / CALLCTL_TOKEN")
        if settings.user and settings.user != user:
            fail(f"--as {settings.user} does not match the token, which is for {user}", ExitCode.USAGE)
        token = settings.token
        return (lambda: token), user, service
    if not settings.user:
        fail("who are you? pass --token (or CALLCTL_TOKEN), or --as USER on the server's machine",
             ExitCode.AUTH_FAILED)
    secret_path = Path(os.environ.get("CALLCTL_SECRET_FILE") or default_secret_file())
    try:
        secret = read_secret(secret_path)
    except SecretError:
        fail(f"no access token for {settings.user}: pass --token (or CALLCTL_TOKEN); "
             f"minting one needs the server's secret ({secret_path})", ExitCode.AUTH_FAILED)
    user, service = settings.user, settings.service
    try:
        issue_token(secret, user, service, 60)
    except Exception as exc:
        fail(str(exc), ExitCode.USAGE)
    return (lambda: issue_token(secret, user, service, 3600)), user, service


# ------------------------------------------------ options `call` and `listen` share

AudioIn = Annotated[str, typer.Option(
    envvar="CALLCTL_AUDIO_IN", help="Audio source: mic[:NAME], tone[:HZ], silence, file:PATH.")]
AudioOut = Annotated[str, typer.Option(
    envvar="CALLCTL_AUDIO_OUT", help="Audio sink: speaker[:NAME], null, file:PATH.")]
Loop = Annotated[bool, typer.Option("--loop", help="Repeat a file: source.")]
Device = Annotated[str | None, typer.Option(
    envvar="CALLCTL_DEVICE", help="This device's id (default: the host name).")]
Bitrate = Annotated[int, typer.Option(
    envvar="CALLCTL_BITRATE", min=6, max=510, help="Opus bitrate we send, kbit/s (mono, with FEC).")]
Aec = Annotated[bool | None, typer.Option(
    "--aec/--no-aec", envvar="CALLCTL_AEC", show_default="on with a mic and a speaker",
    help="Echo cancellation (WebRTC AEC3) on the microphone, the speaker as its reference.")]
NoiseSuppression = Annotated[bool | None, typer.Option(
    "--noise-suppression/--no-noise-suppression", envvar="CALLCTL_NOISE_SUPPRESSION",
    show_default="on with a mic", help="Noise suppression on the microphone.")]
Agc = Annotated[bool | None, typer.Option(
    "--agc/--no-agc", envvar="CALLCTL_AGC", show_default="off",
    help="Automatic gain control on the microphone (it lifts the echo canceller's residual too).")]
VideoCodecName = Annotated[str, typer.Option(
    "--video-codec", envvar="CALLCTL_VIDEO_CODEC", metavar="auto|h264_v4l2m2m|libx264|libvpx",
    help="Video encoder: auto takes a board's hardware H.264 (h264_v4l2m2m) when it opens, else VP8.")]
VideoIn = Annotated[str | None, typer.Option(
    envvar="CALLCTL_VIDEO_IN", help="Video source: camera[:/dev/videoN], testsrc, file:PATH.")]
VideoOut = Annotated[str | None, typer.Option(
    envvar="CALLCTL_VIDEO_OUT", help="Where the peer's video goes: terminal, null, file:PATH (.mkv .webm .mp4).")]
VideoSize = Annotated[str, typer.Option(help="Video size WIDTHxHEIGHT.")]
Fps = Annotated[float, typer.Option(min=1, max=60, help="Video frames per second.")]
VideoPaused = Annotated[bool, typer.Option("--video-paused", help="Negotiate video but start without sending it.")]
IceServerUrl = Annotated[list[str] | None, typer.Option(
    "--ice-server", envvar="CALLCTL_ICE_SERVER",
    help="A STUN/TURN URL of our own, tried before the server's (repeatable; aiortc uses the first "
         "STUN and the first TURN).")]
IceUsername = Annotated[str | None, typer.Option(envvar="CALLCTL_ICE_USERNAME", help="Username for our --ice-server TURN.")]
IceCredential = Annotated[str | None, typer.Option(envvar="CALLCTL_ICE_CREDENTIAL", help="Password for our --ice-server TURN.")]
RelayOnly = Annotated[bool, typer.Option("--relay-only", envvar="CALLCTL_RELAY_ONLY",
                                         help="Media only through a TURN relay (ICE transport policy relay).")]
ReconnectTimeout = Annotated[float, typer.Option(
    envvar="CALLCTL_RECONNECT_TIMEOUT", min=1, max=3600,
    help="Seconds a broken media path may take to come back before the call ends (network_lost).")]
ConnectTimeout = Annotated[float, typer.Option(
    envvar="CALLCTL_CONNECT_TIMEOUT", min=1, max=300,
    help="Seconds the media path may take to come up after the answer before the call ends (network_lost).")]
RingTimeout = Annotated[float | None, typer.Option(
    min=1, max=3600, help="Stop ringing after this many seconds: the call ends no_answer (exit 5).")]
HangupAfter = Annotated[float | None, typer.Option(
    min=0.1, help="Hang up this many seconds after the call connects (exit 0).")]
MaxDuration = Annotated[float | None, typer.Option(
    min=0.1, help="End the call this many seconds after it connects (max_duration, exit 13).")]
Ringtone = Annotated[str, typer.Option(
    envvar="CALLCTL_RINGTONE", metavar="tone|none|FILE",
    help="What the speaker plays while a call rings here (tone: built in).")]
Ringback = Annotated[str, typer.Option(
    envvar="CALLCTL_RINGBACK", metavar="tone|none|FILE",
    help="What the speaker plays while the callee's device rings (tone: built in).")]
HoldAudio = Annotated[str, typer.Option(
    envvar="CALLCTL_HOLD_AUDIO", metavar="tone|none|FILE",
    help="What the speaker plays while the peer holds the call (tone: two soft pips every 4 s).")]
OnRing = Annotated[str | None, typer.Option(help="Program run when a call rings (no shell: see docs/EVENTS.md, Hooks).")]
OnConnect = Annotated[str | None, typer.Option(help="Program run when a call connects.")]
OnEnd = Annotated[str | None, typer.Option(help="Program run when a call ends.")]
OnMissed = Annotated[str | None, typer.Option(
    help="Program run for a missed call: busy, not answered, or given up by the caller while ringing.")]
OnDtmf = Annotated[str | None, typer.Option(
    help="Program run for each DTMF digit the peer sends (CALLCTL_DIGIT; no shell: docs/EVENTS.md, Hooks).")]
OnMessage = Annotated[str | None, typer.Option(
    help="Program run for each message the peer sends; the payload on its stdin (docs/EVENTS.md, Hooks).")]
CameraFormat = Annotated[str | None, typer.Option(help="Camera input format: mjpeg or yuyv.")]


def device_and_media(settings: Settings, device: str | None, media: MediaOptions, *,
                     video_out: str | None, size: str, camera_format: str | None,
                     ) -> tuple[str, MediaOptions]:
    """This device's id and the call's media, checked before any network traffic (exits on errors)."""
    from callctl.media.errors import MediaError
    from callctl.media.video_sources import parse_size
    from callctl.signaling.protocol import valid_id

    dev = device or settings.device or default_device()
    if not valid_id(dev):
        fail(f"bad device id {dev!r}", ExitCode.USAGE)
    try:
        media.video_size = parse_size(size)
    except MediaError as exc:
        fail(str(exc), ExitCode.USAGE)
    if camera_format is not None and camera_format.lower() not in ("mjpeg", "yuyv"):
        fail("--camera-format takes mjpeg or yuyv", ExitCode.USAGE)
    media.camera_format = camera_format.lower() if camera_format else None
    if video_out is None:  # draw it when we own a terminal, otherwise drop it
        video_out = "terminal" if sys.stdout.isatty() and not settings.json else "null"
    media.video_out = video_out
    check_media(media)
    return dev, media


def network(media: MediaOptions, urls: list[str] | None, username: str | None,
            credential: str | None, relay_only: bool) -> None:
    """Our own ICE servers and relay policy into ``media`` (usage errors exit 2)."""
    from callctl.server.ice import IceConfigError, static_servers

    try:
        media.ice_servers = static_servers(urls or [], username, credential)
    except IceConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    media.relay_only = relay_only


#: sd-daemon(3) priority prefixes: journald files a line under its level.
_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter:
    """``<4>callctl.media: message``: journald keeps the time, the prefix gives the level."""

    def __init__(self) -> None:
        import logging

        self._plain = logging.Formatter("%(name)s: %(message)s")

    def format(self, record: Any) -> str:
        prefix = _JOURNAL_PRIORITY.get(record.levelname, 6)
        return f"<{prefix}>{self._plain.format(record)}"


def _log_to_stderr(level: str | None) -> None:
    """``--log-level`` / ``CALLCTL_LOG``: callctl's own log lines on stderr.

    ``debug|info|warning|error``; ``trace``: aiortc's and aioice's debug lines too
    (every ICE check).  Under systemd (``JOURNAL_STREAM`` names our stderr) each
    line starts with its sd-daemon priority and no time (journald adds it);
    otherwise ``TIME LEVEL NAME: message``.  Plain text either way, no colours.
    """
    import logging

    level = (level or "").upper()
    names = ["callctl", "aiortc", "aioice"] if level == "TRACE" else ["callctl"]
    if level == "TRACE":
        level = "DEBUG"
    if level not in _JOURNAL_PRIORITY:
        return
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(_JournalFormatter())  # type: ignore[arg-type]
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def _stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd set up (systemd.exec(5), JOURNAL_STREAM)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


class Interrupt(asyncio.Event):
    """Set by SIGINT or SIGTERM; ``signal`` says which (a service stop is SIGTERM)."""

    def __init__(self) -> None:
        super().__init__()
        self.signal: int | None = None

    def by(self, sig: int) -> None:
        if self.signal is None:
            self.signal = sig
        self.set()

    @property
    def stopped_as_service(self) -> bool:
        return self.signal == signal.SIGTERM


def check_media(media: MediaOptions) -> None:
    """Validate the call's source and sinks before any network traffic."""
    from callctl.media.assembly import check
    from callctl.media.errors import DeviceError, MediaError
    from callctl.media.registry import VIDEO_SINKS
    from callctl.ui.terminal_video import TERMINAL

    VIDEO_SINKS.register(TERMINAL)
    try:
        check(media)
    except MediaError as exc:
        fail(str(exc), ExitCode.USAGE)
    except DeviceError as exc:
        fail(str(exc), ExitCode.DEVICE_ERROR)


def outputs(settings: Settings, *, quiet_until_online: bool = False) -> tuple[list[Any], bool]:
    """The event listeners for this process and whether a live view should run."""
    from callctl.ui.output import JsonOutput, PlainOutput

    if settings.json:
        return [JsonOutput()], False
    if sys.stdout.isatty():
        return [], True
    return [PlainOutput(quiet_until_online=quiet_until_online)], False


async def run_phone(
    settings: Settings,
    device: str,
    media: MediaOptions,
    policy: CallPolicy,
    body: Callable[[Phone, Interrupt], Awaitable[int]],
    *,
    wait_registered: bool,
    reconnect_timeout: float = 20.0,
    connect_timeout: float = 15.0,
    hooks: dict[str, str | None] | None = None,
    takes_dials: bool = False,
) -> int:
    """Bring a Phone online with its control socket and output, run ``body``, clean up."""
    from callctl.engine.commands import Request, run_command, status_of
    from callctl.engine.control import ControlServer
    from callctl.engine.sockets import ControlError, socket_path
    from callctl.engine.phone import Phone
    from callctl.media.adjust import preload
    from callctl.media.errors import UnsupportedStack
    from callctl.signaling.client import SignalingClient

    token, user, service = identity(settings)
    _log_to_stderr(settings.log_level)
    # aiortc is imported and adjusted before the event stream opens.  On a thread beside the
    # stream's opening, its imports and the loop contended for the interpreter: a call cost ~9 %
    # more CPU and time on loopback (docs/PERFORMANCE.md)
    try:
        preload()
    except UnsupportedStack as exc:
        print(f"callctl: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL_ERROR
    listeners, live = outputs(settings, quiet_until_online=wait_registered)
    client = SignalingClient(settings.server, token, device=device,
                             ca_file=str(settings.ca_file) if settings.ca_file else None)
    phone = Phone(client=client, media=media, policy=policy, user=user, device=device,
                  reconnect_timeout=reconnect_timeout, connect_timeout=connect_timeout,
                  takes_dials=takes_dials)
    phone.listeners.extend(listeners)
    control = ControlServer(socket_path(service, user, device), lambda req: run_command(phone, req))
    try:
        await control.start()
    except (ControlError, OSError) as exc:
        await client.aclose()
        print(f"callctl: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    phone.listeners.append(lambda _e, record: control.publish(record))
    from callctl.commands._hooks import Hooks

    run_hooks = Hooks(hooks or {}, user=user, device=device)
    phone.listeners.append(run_hooks)
    from callctl.engine.sdnotify import Notifier, ServiceLink

    service_link = ServiceLink(Notifier(), phone.health, lambda: phone.online)
    phone.listeners.append(service_link)

    interrupted = Interrupt()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.by, sig)

    view = None
    if live:
        from callctl.ui.output import LiveView

        def key(cmd: str) -> None:
            s = phone.session
            if cmd == "toggle-mute":
                cmd = "unmute" if s is not None and s.muted else "mute"
            elif cmd == "toggle-hold":
                cmd = "unhold" if s is not None and s.held else "hold"
            run_command(phone, Request(cmd))

        async def stats() -> Any:
            s = phone.session
            return await s.peer.stats() if s is not None and s.peer is not None else {}

        view = LiveView(lambda: status_of(phone), key, stats, one_call=wait_registered)
        phone.listeners.append(view)
        view.start()
    phone.start()
    service_link.start()
    try:
        if wait_registered:
            code = await _registered(phone, interrupted)
            if code is not None:
                return code
        return await body(phone, interrupted)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        service_link.stopping("SIGTERM" if interrupted.stopped_as_service else
                              "interrupted" if interrupted.is_set() else "exiting")
        await phone.close()
        await service_link.close()
        if view is not None:
            await view.stop()
        await control.close()
        await run_hooks.finish()


async def _registered(phone: Phone, interrupted: Interrupt) -> int | None:
    waits = [asyncio.ensure_future(e.wait()) for e in (phone.registered, phone.stopped, interrupted)]
    try:
        await asyncio.wait(waits, timeout=REGISTER_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if phone.registered.is_set():
        return None
    if interrupted.is_set():
        return ExitCode.INTERRUPTED
    from callctl.signaling.client import AuthFailed

    if isinstance(phone.fatal, AuthFailed):
        return ExitCode.AUTH_FAILED
    from callctl.engine.events import Ev

    phone.emit(Ev.CALL_ENDED, {"call_id": None, "peer": None, "reason": "server_unreachable",
                               "source": "local", "duration_s": 0.0})
    reason = (phone.offline_reason or "").removeprefix(f"{phone.client.server}: ")
    why = f" ({reason})" if reason else ""
    print(f"callctl: cannot reach the server at {phone.client.server}{why}", file=sys.stderr)
    return ExitCode.SERVER_UNREACHABLE


def run(coro: Coroutine[Any, Any, int]) -> None:
    import typer

    code = asyncio.run(coro)
    raise typer.Exit(int(code))


def check_hooks(hooks: dict[str, str | None]) -> None:
    """Every hook can be run (quoting, program found), or one usage line and exit 2."""
    from callctl.commands._hooks import HookError, check

    try:
        check(hooks)
    except HookError as exc:
        fail(str(exc), ExitCode.USAGE)

"""Ring a user, talk, hang up; the exit code says how the call ended."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callctl.commands import _phone
from callctl.config import Settings, own_user
from callctl.exitcodes import ExitCode, for_reason
from callctl.ui.console import fail

if TYPE_CHECKING:
    from callctl.engine.phone import Phone

EXAMPLES = """\b
Examples:
  callctl call alice               # ring alice and talk; q hangs up
  callctl call alice --video       # a video call from the camera
  callctl call door --ring-timeout 20 --hangup-after 30
  callctl --json call alice --audio-in tone --audio-out null

The exit code says how the call ended: 0 hangup, 3 declined, 4 busy,
5 no_answer, 6 unavailable, 9 network_lost, 10 server_unreachable,
130 interrupted; all of them in docs/EXIT-CODES.md.
"""


def call(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="The user to call.")],
    audio_in: _phone.AudioIn = "mic",
    audio_out: _phone.AudioOut = "speaker",
    loop: _phone.Loop = False,
    ring_timeout: _phone.RingTimeout = None,
    hangup_after: _phone.HangupAfter = None,
    max_duration: _phone.MaxDuration = None,
    ringback: _phone.Ringback = "tone",
    hold_audio: _phone.HoldAudio = "tone",
    on_ring: Annotated[str | None, typer.Option(
        help="Program run when the callee's device rings (no shell: docs/EVENTS.md, Hooks).")] = None,
    on_connect: _phone.OnConnect = None,
    on_end: _phone.OnEnd = None,
    on_dtmf: _phone.OnDtmf = None,
    on_message: _phone.OnMessage = None,
    record: Annotated[Path | None, typer.Option(
        help="Record the call to this file: the peer's audio (.wav .ogg .flac ...), "
             "and its video too into .mkv/.webm/.mp4.")] = None,
    device: _phone.Device = None,
    bitrate: _phone.Bitrate = 32,
    aec: _phone.Aec = None,
    noise_suppression: _phone.NoiseSuppression = None,
    agc: _phone.Agc = None,
    video: Annotated[bool, typer.Option("--video", help="A video call (sends --video-in, camera by default).")] = False,
    video_in: _phone.VideoIn = None,
    video_codec: _phone.VideoCodecName = "auto",
    video_out: _phone.VideoOut = None,
    video_size: _phone.VideoSize = "640x480",
    fps: _phone.Fps = 15.0,
    video_paused: _phone.VideoPaused = False,
    camera_format: _phone.CameraFormat = None,
    ice_server: _phone.IceServerUrl = None,
    ice_username: _phone.IceUsername = None,
    ice_credential: _phone.IceCredential = None,
    relay_only: _phone.RelayOnly = False,
    reconnect_timeout: _phone.ReconnectTimeout = 20.0,
    connect_timeout: _phone.ConnectTimeout = 15.0,
    standalone: Annotated[bool, typer.Option(
        "--standalone", help="Open our own media devices even when a listen of this identity runs here "
                             "(by default the call goes through it: docs/SERVICE.md).")] = False,
) -> None:
    from callctl.engine.phone import CallPolicy
    from callctl.engine.session import CallLimits
    from callctl.media.assembly import MediaOptions
    from callctl.media.echo import Processing
    from callctl.signaling.protocol import Media, valid_id

    settings = ctx.obj
    if not valid_id(peer):
        fail(f"bad user id {peer!r}: letters, digits and . _ @ + - (max 64)", ExitCode.USAGE)
    if peer == own_user(settings):
        fail(f"{peer} cannot call itself", ExitCode.USAGE)
    hooks = {"ringback": on_ring, "connect": on_connect, "end": on_end, "dtmf": on_dtmf, "message": on_message}
    _phone.check_hooks(hooks)
    if not standalone:
        _through_listener(ctx, settings, peer, device, hooks)
    if video and video_in is None:
        video_in = "camera"
    dev, media = _phone.device_and_media(
        settings, device, MediaOptions(audio_in=audio_in, audio_out=audio_out, loop=loop, record=record,
                                       bitrate_kbps=bitrate, video_in=video_in, fps=fps,
                                       processing=Processing(aec, noise_suppression, agc),
                                       video_codec=video_codec,
                                       video_paused=video_paused, ringback=ringback,
                                       hold_audio=hold_audio),
        video_out=video_out, size=video_size, camera_format=camera_format)
    _phone.network(media, ice_server, ice_username, ice_credential, relay_only)
    call_media = Media.VIDEO if video else Media.AUDIO

    limits = CallLimits(ring_timeout=ring_timeout, hangup_after=hangup_after, max_duration=max_duration)

    async def body(phone: Phone, interrupted: _phone.Interrupt) -> int:
        if peer == phone.user:
            print(f"callctl: {peer} cannot call itself", file=sys.stderr)
            return ExitCode.USAGE
        session = phone.dial(peer, call_media, limits)
        ended = asyncio.ensure_future(session.ended.wait())
        stop = asyncio.ensure_future(interrupted.wait())
        await asyncio.wait([ended, stop], return_when=asyncio.FIRST_COMPLETED)
        if not session.ended.is_set():
            from callctl.engine import machine as m

            session.feed(m.Hangup())
            await session.ended.wait()
        stop.cancel()
        if interrupted.is_set():
            return ExitCode.INTERRUPTED
        return for_reason(session.outcome().reason)

    _phone.run(_phone.run_phone(settings, dev, media, CallPolicy(), body, wait_registered=True, hooks=hooks,
                                reconnect_timeout=reconnect_timeout, connect_timeout=connect_timeout))


def _through_listener(ctx: typer.Context, settings: Settings, peer: str, device: str | None,
                      hooks: dict[str, str | None]) -> None:
    """If a listen of ours runs here, place the call through it and exit with its code."""
    from callctl.commands import _via_listen
    from callctl.commands._quick import FORWARDED
    from callctl.engine.sockets import ControlError

    try:
        path = _via_listen.find_listener(own_user(settings), device or settings.device)
    except ControlError as exc:
        fail(f"{exc}, or --standalone", ExitCode.USAGE)
    if path is None:
        return
    opts = {}
    for name, value in ctx.params.items():
        source = getattr(ctx.get_parameter_source(name), "name", "DEFAULT")
        if name in _via_listen.LOCAL_OPTIONS or source == "DEFAULT":
            continue
        if name not in FORWARDED and source != "COMMANDLINE":
            continue  # an environment's or config file's default for a standalone call: the listener's own
        opts[name] = _via_listen.absolute(name, value)
    sock = _via_listen.dial(path, peer, opts)
    code = None if sock is None else _via_listen.follow(sock, path, settings.json, hooks)
    if code is not None:
        raise typer.Exit(int(code))

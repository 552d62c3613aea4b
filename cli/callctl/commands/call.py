"""Ring a user, talk, hang up; the exit code says how the call ended."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callctl.commands import _phone
from callctl.exitcodes import ExitCode, for_reason
from callctl.ui.console import fail

if TYPE_CHECKING:
    from callctl.engine.phone import Phone


def call(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="The user to call.")],
    audio_in: _phone.AudioIn = "mic",
    audio_out: _phone.AudioOut = "speaker",
    loop: _phone.Loop = False,
    ring_timeout: Annotated[
        float | None, typer.Option(min=1, max=3600, help="Give up after ringing this many seconds (no_answer).")
    ] = None,
    hangup_after: Annotated[
        float | None, typer.Option(min=0.1, help="Hang up this many seconds after connecting (exit 0).")
    ] = None,
    max_duration: Annotated[
        float | None, typer.Option(min=0.1, help="End the call after this many seconds (max_duration, exit 13).")
    ] = None,
    record: Annotated[Path | None, typer.Option(help="Record the peer's audio to this file (.wav, .ogg, .flac, ...).")] = None,
    device: _phone.Device = None,
    bitrate: _phone.Bitrate = 32,
    video: Annotated[bool, typer.Option("--video", help="A video call (sends --video-in, camera by default).")] = False,
    video_in: _phone.VideoIn = None,
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
) -> None:
    from callctl.engine.phone import CallPolicy
    from callctl.engine.session import CallLimits
    from callctl.media.assembly import MediaOptions
    from callctl.signaling.protocol import Media, valid_id

    settings = ctx.obj
    if not valid_id(peer):
        fail(f"bad user id {peer!r}: letters, digits and . _ @ + - (max 64)", ExitCode.USAGE)
    if video and video_in is None:
        video_in = "camera"
    dev, media = _phone.device_and_media(
        settings, device, MediaOptions(audio_in=audio_in, audio_out=audio_out, loop=loop, record=record,
                                       bitrate_kbps=bitrate, video_in=video_in, fps=fps,
                                       video_paused=video_paused),
        video_out=video_out, size=video_size, camera_format=camera_format)
    _phone.network(media, ice_server, ice_username, ice_credential, relay_only)
    call_media = Media.VIDEO if video else Media.AUDIO

    limits = CallLimits(ring_timeout=ring_timeout, hangup_after=hangup_after, max_duration=max_duration)

    async def body(phone: Phone, interrupted: asyncio.Event) -> int:
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

    _phone.run(_phone.run_phone(settings, dev, media, CallPolicy(), body, wait_registered=True,
                                reconnect_timeout=reconnect_timeout, connect_timeout=connect_timeout))

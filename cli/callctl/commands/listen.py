"""Stay online and take calls: ring, accept by hand, by script or by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from callctl.commands import _phone
from callctl.exitcodes import ExitCode, for_reason
from callctl.ui.console import fail

if TYPE_CHECKING:
    from callctl.engine.phone import Phone

EXAMPLES = """\b
Examples:
  callctl listen                   # rings on the speaker; a answers
  callctl listen --auto-accept --allow alice,bob
  callctl listen --ring-timeout 30 --on-ring 'logger "$CALLCTL_PEER"'
  button-pressed && callctl accept # another shell answers the ring

With --once the exit code says how the call ended (docs/EXIT-CODES.md);
otherwise listen runs until stopped: SIGTERM (a service stop) exits 0,
Ctrl-C 130, a fatal server error 10 or 11.
"""


def listen(
    ctx: typer.Context,
    auto_accept: Annotated[bool, typer.Option("--auto-accept", help="Answer every call at once.")] = False,
    accept_after: Annotated[
        float | None, typer.Option(min=0, help="Answer after ringing this many seconds.")
    ] = None,
    allow: Annotated[
        str | None, typer.Option(help="Comma-separated users who may call; others are refused without ringing.")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Exit after one call, with that call's exit code.")] = False,
    ring_timeout: _phone.RingTimeout = None,
    hangup_after: _phone.HangupAfter = None,
    max_duration: _phone.MaxDuration = None,
    ringtone: _phone.Ringtone = "tone",
    hold_audio: _phone.HoldAudio = "tone",
    on_ring: _phone.OnRing = None,
    on_connect: _phone.OnConnect = None,
    on_end: _phone.OnEnd = None,
    on_missed: _phone.OnMissed = None,
    on_dtmf: _phone.OnDtmf = None,
    on_message: _phone.OnMessage = None,
    audio_in: _phone.AudioIn = "mic",
    audio_out: _phone.AudioOut = "speaker",
    loop: _phone.Loop = False,
    record: Annotated[Path | None, typer.Option(
        help="Record each call to this file (overwritten per call): the peer's audio, and its video "
             "too into .mkv/.webm/.mp4.")] = None,
    device: _phone.Device = None,
    bitrate: _phone.Bitrate = 32,
    aec: _phone.Aec = None,
    noise_suppression: _phone.NoiseSuppression = None,
    agc: _phone.Agc = None,
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
) -> None:
    from callctl.engine.phone import CallPolicy
    from callctl.engine.session import CallLimits
    from callctl.media.assembly import MediaOptions
    from callctl.media.echo import Processing
    from callctl.signaling.protocol import valid_id

    settings = ctx.obj
    allowed = None
    if allow is not None:
        allowed = frozenset(u.strip() for u in allow.split(",") if u.strip())
        bad = [u for u in allowed if not valid_id(u)]
        if bad or not allowed:
            fail(f"bad --allow list {allow!r}", ExitCode.USAGE)
    dev, media = _phone.device_and_media(
        settings, device, MediaOptions(audio_in=audio_in, audio_out=audio_out, loop=loop, record=record,
                                       bitrate_kbps=bitrate, video_in=video_in, fps=fps,
                                       processing=Processing(aec, noise_suppression, agc),
                                       video_codec=video_codec,
                                       video_paused=video_paused, ringtone=ringtone,
                                       hold_audio=hold_audio),
        video_out=video_out, size=video_size, camera_format=camera_format)
    _phone.network(media, ice_server, ice_username, ice_credential, relay_only)
    limits = CallLimits(ring_timeout=ring_timeout, hangup_after=hangup_after, max_duration=max_duration)
    policy = CallPolicy(auto_accept=auto_accept, accept_after=accept_after, allow=allowed, limits=limits)
    hooks = {"ring": on_ring, "connect": on_connect, "end": on_end, "missed": on_missed,
             "dtmf": on_dtmf, "message": on_message}
    _phone.check_hooks(hooks)

    async def body(phone: Phone, interrupted: _phone.Interrupt) -> int:
        stop = asyncio.ensure_future(interrupted.wait())
        fatal = asyncio.ensure_future(phone.stopped.wait())
        try:
            while True:
                ended = asyncio.ensure_future(phone.call_ended.wait())
                await asyncio.wait([ended, stop, fatal], return_when=asyncio.FIRST_COMPLETED)
                if ended.done() and phone.calls_done:
                    phone.call_ended.clear()
                    if once:
                        return int(for_reason(phone.calls_done[-1].reason))
                    continue
                ended.cancel()
                if interrupted.is_set():  # a service stop (SIGTERM) is a clean exit; Ctrl-C is 130
                    return ExitCode.OK if interrupted.stopped_as_service else ExitCode.INTERRUPTED
                from callctl.signaling.client import AuthFailed

                return ExitCode.AUTH_FAILED if isinstance(phone.fatal, AuthFailed) else ExitCode.SERVER_UNREACHABLE
        finally:
            stop.cancel()
            fatal.cancel()

    _phone.run(_phone.run_phone(settings, dev, media, policy, body, wait_registered=False, hooks=hooks,
                                reconnect_timeout=reconnect_timeout, connect_timeout=connect_timeout,
                                takes_dials=True))


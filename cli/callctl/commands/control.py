"""Commands that steer a running `call` or `listen` through its control socket."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from callctl.exitcodes import ExitCode
from callctl.ui.console import fail

DeviceOpt = Annotated[
    str | None, typer.Option(envvar="CALLCTL_DEVICE", help="Pick the process by device id.")
]


def _target(ctx: typer.Context, device: str | None) -> Any:
    from callctl.engine.sockets import ControlError, find_socket

    settings = ctx.obj
    try:
        return find_socket(None, settings.user, device or settings.device)
    except ControlError as exc:
        fail(str(exc), ExitCode.USAGE)


def _send(ctx: typer.Context, cmd: str, call_id: str | None, device: str | None,
          arg: str | None = None) -> None:
    from callctl.engine.sockets import ControlError, request

    path = _target(ctx, device)
    try:
        answer = request(path, cmd, call_id, arg=arg)
    except ControlError as exc:
        fail(str(exc), ExitCode.INTERNAL_ERROR)
    if ctx.obj.json:
        print(json.dumps(answer))
    if not answer.get("ok"):
        fail(str(answer.get("error", "failed")), ExitCode.INTERNAL_ERROR)
    if not ctx.obj.json and cmd != "status":
        call = answer.get("call") or {}
        print(f"{cmd}: ok ({call.get('peer', '?')}, {call.get('state', '?')})", file=sys.stderr)


def accept(ctx: typer.Context, call_id: Annotated[str | None, typer.Argument(help="Only this call.")] = None,
           device: DeviceOpt = None,
           video_paused: Annotated[bool, typer.Option("--video-paused", help="Answer without sending video (resume later).")] = False) -> None:
    """Answer the ringing call of a running `listen`."""
    _send(ctx, "accept", call_id, device, "video-paused" if video_paused else None)


def video(ctx: typer.Context,
          action: Annotated[str, typer.Argument(help="pause, resume, on or off.")],
          device: DeviceOpt = None) -> None:
    """Pause or resume our video, or turn video on/off in the current call."""
    if action not in ("pause", "resume", "on", "off"):
        fail(f"video takes pause, resume, on or off, not {action!r}", ExitCode.USAGE)
    _send(ctx, "video", None, device, action)


def decline(ctx: typer.Context, call_id: Annotated[str | None, typer.Argument(help="Only this call.")] = None,
            device: DeviceOpt = None) -> None:
    """Decline the ringing call."""
    _send(ctx, "decline", call_id, device)


def hangup(ctx: typer.Context, call_id: Annotated[str | None, typer.Argument(help="Only this call.")] = None,
           device: DeviceOpt = None) -> None:
    """Hang up the current call (cancel it if still ringing)."""
    _send(ctx, "hangup", call_id, device)


def mute(ctx: typer.Context, device: DeviceOpt = None) -> None:
    """Mute the microphone (the peer is told)."""
    _send(ctx, "mute", None, device)


def unmute(ctx: typer.Context, device: DeviceOpt = None) -> None:
    """Unmute the microphone."""
    _send(ctx, "unmute", None, device)


def status(ctx: typer.Context, device: DeviceOpt = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False) -> None:
    """Show the running process's identity and call."""
    from callctl.engine.sockets import ControlError, request

    path = _target(ctx, device)
    try:
        answer = request(path, "status")
    except ControlError as exc:
        fail(str(exc), ExitCode.INTERNAL_ERROR)
    if ctx.obj.json or as_json:
        print(json.dumps(answer))
    if not answer.get("ok"):
        fail(str(answer.get("error", "refused")), ExitCode.INTERNAL_ERROR)
    if ctx.obj.json or as_json:
        return
    call = answer.get("call")
    link = answer.get("server_link") or ("online" if answer.get("online") else "offline")
    print(f"{answer.get('user')} on {answer.get('device')}: {link}"
          + (f", up {_duration(answer['uptime_s'])}" if "uptime_s" in answer else ""))
    if answer.get("server_error"):
        print(f"server: {answer['server_error']}")
    if "calls_taken" in answer:
        print(f"calls: {answer['calls_taken']} taken, {answer['calls_placed']} placed, "
              f"{answer['calls_missed']} missed, {answer['calls_refused']} refused")
    if answer.get("health", "ok") != "ok":
        print(f"health: {answer['health']}")
    error = answer.get("last_error")
    if error:
        import time

        ago = _duration(max(0.0, time.time() - float(error.get("ts", 0))))
        print(f"last {error.get('event', 'error')}: {error.get('message')} ({ago} ago)")
    if call:
        extra = f", {call['duration_s']:.0f} s" if "duration_s" in call else ""
        print(f"call {call.get('call_id')} with {call.get('peer')}: {call.get('state')}{extra}"
              f"{' (muted)' if call.get('muted') else ''}")
    else:
        print("no call")


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    return f"{hours}h {minutes:02d}m {s:02d}s" if hours else f"{minutes}m {s:02d}s"


def events(ctx: typer.Context, device: DeviceOpt = None) -> None:
    """Print the running process's events as NDJSON until it exits."""
    from callctl.engine.sockets import ControlError, tail

    path = _target(ctx, device)

    def out(record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    try:
        tail(path, out)
    except ControlError as exc:
        fail(str(exc), ExitCode.INTERNAL_ERROR)
    except KeyboardInterrupt:
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

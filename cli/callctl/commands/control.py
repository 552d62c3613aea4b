"""Commands that steer a running `call` or `listen` through its control socket."""

from __future__ import annotations

import json
import sys
from pathlib import Path
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
          arg: str | None = None, opts: dict[str, Any] | None = None, timeout: float = 10) -> None:
    from callctl.engine.sockets import ControlError, request

    path = _target(ctx, device)
    try:
        answer = request(path, cmd, call_id, arg=arg, opts=opts, timeout=timeout)
    except ControlError as exc:
        fail(str(exc), ExitCode.INTERNAL_ERROR)
    if ctx.obj.json:
        print(json.dumps(answer))
    if not answer.get("ok"):
        code = (ExitCode.USAGE if answer.get("usage") else ExitCode.DEVICE_ERROR if answer.get("device")
                else ExitCode.INTERNAL_ERROR)
        fail(str(answer.get("error", "failed")), code)
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


def hold(ctx: typer.Context, device: DeviceOpt = None) -> None:
    """Put the call on hold: no media either way until unhold (the peer is told, and may play a hold tone)."""
    _send(ctx, "hold", None, device)


def unhold(ctx: typer.Context, device: DeviceOpt = None) -> None:
    """Take the call off hold."""
    _send(ctx, "unhold", None, device)


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


def dtmf(ctx: typer.Context,
         tones: Annotated[str, typer.Argument(
             help="Digits 0-9 * # A-D, in order; ',' pauses 2 s, 'w' 0.5 s (e.g. 1234#, 0w*9).")],
         duration: Annotated[int, typer.Option(min=40, max=6000, help="Milliseconds each tone lasts.")] = 100,
         gap: Annotated[int, typer.Option(min=30, max=6000, help="Milliseconds of quiet after each tone.")] = 70,
         device: DeviceOpt = None) -> None:
    """Send DTMF digits in the current call (RFC 4733, as a phone keypad does); exits 0 once they are sent."""
    from callctl.media.dtmf import check_tones, playing_time_s

    try:
        check_tones(tones)
    except ValueError as exc:
        fail(str(exc), ExitCode.USAGE)
    _send(ctx, "dtmf", None, device, tones, opts={"duration_ms": duration, "gap_ms": gap},
          timeout=playing_time_s(tones, duration, gap) + 20)


def send(ctx: typer.Context,
         text: Annotated[str | None, typer.Argument(help="A text message (UTF-8).", show_default=False)] = None,
         data: Annotated[str | None, typer.Option(
             "--data", metavar="JSON|@FILE|@-",
             help="Send JSON instead: inline, from a file (@FILE) or from stdin (@-).")] = None,
         device: DeviceOpt = None) -> None:
    """Send a text or JSON message to the peer over the call's data channel; exits 0 only when the peer got it."""
    from callctl.media.errors import MessageError
    from callctl.media.messages import MAX_BYTES, encode, size

    if (text is None) == (data is None):
        fail("send takes a TEXT or --data JSON (one of the two)", ExitCode.USAGE)
    kind, body = "text", text or ""
    value: Any = body
    if data is not None:
        kind, body = "json", _read_data(data)
        try:
            value = json.loads(body)
        except (ValueError, RecursionError) as exc:
            fail(f"--data is not JSON: {exc}", ExitCode.USAGE)
    try:
        encoded = size(encode(1, kind, value))
    except MessageError as exc:
        fail(str(exc), ExitCode.USAGE)
    if encoded > MAX_BYTES:
        fail(f"the message is {encoded} bytes as sent; at most {MAX_BYTES}", ExitCode.USAGE)
    _send(ctx, "send", None, device, body, opts={"type": kind}, timeout=30)


def _read_data(data: str) -> str:
    """--data's JSON: inline, @FILE or @- (stdin); at most a little over the message cap is read."""
    from callctl.media.messages import MAX_BYTES

    if not data.startswith("@"):
        return data
    try:
        if data == "@-":
            raw = sys.stdin.buffer.read(MAX_BYTES * 4 + 1)
        else:
            with open(data[1:], "rb") as f:
                raw = f.read(MAX_BYTES * 4 + 1)
    except OSError as exc:
        fail(f"cannot read {data[1:]}: {exc.strerror or exc}", ExitCode.USAGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"{data[1:] if data != '@-' else 'stdin'} is not UTF-8 text", ExitCode.USAGE)


def snapshot(ctx: typer.Context,
             path: Annotated[Path, typer.Argument(help="The .jpg file to write (replaced if it exists).")],
             device: DeviceOpt = None) -> None:
    """Save the peer's current video frame as a JPEG (waits up to 5 s for the first one)."""
    import os

    if path.suffix.lower() not in (".jpg", ".jpeg"):
        fail(f"a snapshot is a .jpg file, not {str(path)!r}", ExitCode.USAGE)
    target = Path(os.path.abspath(path))
    _send(ctx, "snapshot", None, device, str(target), timeout=30)
    if not ctx.obj.json:
        print(f"snapshot: {target}", file=sys.stderr)


def switch(ctx: typer.Context,
           mic: Annotated[str | None, typer.Option(help="Send from this microphone (a name from 'callctl devices').")] = None,
           speaker: Annotated[str | None, typer.Option(help="Play the peer on this speaker.")] = None,
           camera: Annotated[str | None, typer.Option(help="Send this camera's video (/dev/videoN).")] = None,
           audio_in: Annotated[str | None, typer.Option(help="Send from this source: mic[:NAME], tone[:HZ], file:PATH.")] = None,
           audio_out: Annotated[str | None, typer.Option(help="Play the peer into this sink: speaker[:NAME], null, file:PATH.")] = None,
           video_in: Annotated[str | None, typer.Option(help="Send this video: camera[:DEV], testsrc, file:PATH.")] = None,
           device: DeviceOpt = None) -> None:
    """Switch the microphone, speaker or camera of the current call (the peer sees nothing but the change)."""
    import os

    given = {"mic": mic, "speaker": speaker, "camera": camera, "audio_in": audio_in, "audio_out": audio_out,
             "video_in": video_in}
    opts: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if not opts:
        fail("switch what? --mic NAME, --speaker NAME, --camera DEV, --audio-in SRC, --audio-out SINK "
             "or --video-in SRC", ExitCode.USAGE)
    for key, value in opts.items():  # paths as the running process (another directory) reads them
        if value.startswith("file:"):
            opts[key] = "file:" + os.path.abspath(value[5:])
    _send(ctx, "switch", None, device, None, opts=opts, timeout=30)

"""Check a microphone (level meter) or a camera (in the terminal, or one snapshot)."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from callctl.exitcodes import ExitCode
from callctl.ui.console import fail

if TYPE_CHECKING:
    import numpy as np

    from callctl.media.devices import MicSource, SpeakerSink


def _dbfs(value: float) -> float:
    return 20 * math.log10(value) if value > 1e-5 else -100.0


def preview(
    ctx: typer.Context,
    audio: Annotated[bool, typer.Option("--audio", help="Preview the microphone (the default).")] = False,
    video: Annotated[bool, typer.Option("--video", help="Preview the camera in the terminal.")] = False,
    camera: Annotated[str, typer.Option(help="Camera device, or testsrc / file:PATH.")] = "/dev/video0",
    snapshot: Annotated[Path | None, typer.Option(help="Save one camera frame to this image file and exit.")] = None,
    video_size: Annotated[str, typer.Option(help="Camera size WIDTHxHEIGHT.")] = "640x480",
    fps: Annotated[float, typer.Option(min=1, max=60, help="Camera frame rate.")] = 15.0,
    camera_format: Annotated[str | None, typer.Option(help="Camera input format: mjpeg or yuyv.")] = None,
    mic: Annotated[str | None, typer.Option(help="Microphone (name substring, or default).")] = None,
    loopback: Annotated[bool, typer.Option("--loopback", help="Play the microphone on the speaker.")] = False,
    speaker: Annotated[str | None, typer.Option(help="Speaker for --loopback.")] = None,
    duration: Annotated[float | None, typer.Option(min=0.1, help="Stop after this many seconds.")] = None,
    echo_test: Annotated[bool, typer.Option(
        "--echo-test", help="Play a test signal on --speaker and report how the microphone hears it: "
                            "the echo's delay and level, and how much echo cancellation takes out.")] = False,
) -> None:
    from callctl.media.audio import level
    from callctl.media.errors import DeviceError
    from callctl.media.devices import MicSource, SpeakerSink

    if video or snapshot is not None:
        raise typer.Exit(_video_preview(camera, snapshot, video_size, fps, camera_format, duration))
    if echo_test:
        raise typer.Exit(_echo_test(mic, speaker, duration or 8.0, bool(getattr(ctx.obj, "json", False))))
    if not audio and not video:
        audio = True
    try:
        source = MicSource(mic)
        sink = SpeakerSink(speaker) if loopback else None
    except DeviceError as exc:
        fail(str(exc), ExitCode.DEVICE_ERROR)
    print(f"callctl: microphone {source.device.name!r}"
          + (f", playing on {sink.device.name!r}" if sink else "")
          + ("; q or Ctrl-C ends" if sys.stdin.isatty() else "; Ctrl-C ends"), file=sys.stderr)
    code = asyncio.run(_meter(source, sink, duration, level))
    raise typer.Exit(int(code))


async def _meter(source: MicSource, sink: SpeakerSink | None, duration: float | None,
                 level: Callable[[np.ndarray], float]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        interrupted = True
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    tty = sys.stdout.isatty()
    restore = _keys(loop, stop) if sys.stdin.isatty() else None
    start = time.monotonic()
    frames = 0
    peak = rms_sum = 0.0
    count = 0
    try:
        while not stop.is_set():
            frames += 1
            due = start + frames * 0.02
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            pcm = source.read()
            if sink is not None:
                sink.write(pcm)
            peak = max(peak, level(pcm))
            rms_sum += float((pcm.astype("float64") ** 2).mean()) / 32768.0**2
            count += 1
            if tty and frames % 5 == 0:  # 10 updates a second
                bar = "█" * min(40, int(max(0.0, _dbfs(peak) + 60) / 60 * 40))
                sys.stdout.write(f"\r{_dbfs(peak):6.1f} dBFS |{bar:<40}|")
                sys.stdout.flush()
                peak = 0.0
            elif not tty and frames % 50 == 0:  # a line a second
                print(f"level peak {_dbfs(peak):.1f} dBFS rms {_dbfs(math.sqrt(rms_sum / count)):.1f} dBFS",
                      flush=True)
                peak, rms_sum, count = 0.0, 0.0, 0
            if duration is not None and time.monotonic() - start >= duration:
                break
    finally:
        if restore is not None:
            restore()
        if tty:
            sys.stdout.write("\n")
        source.close()
        if sink is not None:
            sink.close()
    return ExitCode.INTERRUPTED if interrupted else 0


def _echo_test(mic: str | None, speaker: str | None, seconds: float, as_json: bool) -> int:
    """``--echo-test``: the echo path of a kiosk, measured (media/echo_test.py)."""
    import json

    from callctl.media import echo_test
    from callctl.media.echo import available as echo_available
    from callctl.media.errors import DeviceError

    if seconds < 4:
        fail("--echo-test needs --duration 4 or more (the canceller settles for 2 s)", ExitCode.USAGE)
    if (why := echo_available()) is not None:
        fail(why, ExitCode.DEVICE_ERROR)
    print(f"callctl: echo test: {seconds:g} s of test noise on the speaker, "
          "listening on the microphone (Ctrl-C ends)", file=sys.stderr)
    try:
        report = echo_test.run(mic, speaker, seconds)
    except DeviceError as exc:
        fail(str(exc), ExitCode.DEVICE_ERROR)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        for name, value in report.lines():
            print(f"{name:18}{value}")
    return 0


def _keys(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    import os
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key() -> None:
        if os.read(fd, 1).lower() == b"q":
            stop.set()

    loop.add_reader(fd, key)

    def restore() -> None:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore


def _video_preview(camera: str, snapshot: Path | None, size: str, fps: float,
                   camera_format: str | None, duration: float | None) -> int:
    """Draw the camera in the terminal, or save one frame (how a kiosk's camera gets aimed)."""
    from callctl.media.errors import DeviceError, MediaError
    from callctl.media.registry import VIDEO_SOURCES, OpenParams
    from callctl.media.video_sources import VideoFormat, parse_size
    from callctl.ui.terminal_video import TerminalSink

    if camera_format is not None and camera_format.lower() not in ("mjpeg", "yuyv"):
        fail("--camera-format takes mjpeg or yuyv", ExitCode.USAGE)
    try:
        w, h = parse_size(size)
        spec = camera if camera in ("testsrc",) or camera.startswith(("file:", "camera")) else f"camera:{camera}"
        source = VIDEO_SOURCES.open(spec, OpenParams(video=VideoFormat(w, h, fps), camera_format=camera_format))
    except MediaError as exc:
        fail(str(exc), ExitCode.USAGE)
    except DeviceError as exc:
        fail(str(exc), ExitCode.DEVICE_ERROR)
    try:
        if snapshot is not None:
            frame = None
            deadline = time.monotonic() + 10
            while frame is None and time.monotonic() < deadline:
                frame = source.latest()
                if frame is None:
                    time.sleep(0.05)
            if frame is None:
                fail(f"no frame from {camera} within 10 s", ExitCode.DEVICE_ERROR)
            from callctl.media.video_sinks import save_image

            try:
                save_image(frame, snapshot)
            except MediaError as exc:
                fail(str(exc), ExitCode.USAGE)
            except Exception as exc:  # av's errors for unwritable paths and the like
                fail(f"cannot write {snapshot}: {exc}", ExitCode.USAGE)
            print(f"callctl: saved a {frame.width}x{frame.height} frame to {snapshot}", file=sys.stderr)
            return 0
        sink = TerminalSink(max_fps=min(fps, 10))
        sys.stdout.write("\x1b[2J")
        start = time.monotonic()
        try:
            while duration is None or time.monotonic() - start < duration:
                frame = source.latest()
                if frame is not None:
                    sink.write(frame)
                time.sleep(1 / fps)
        except KeyboardInterrupt:
            return ExitCode.INTERRUPTED
        finally:
            sys.stdout.write("\x1b[0m\n")
        return 0
    finally:
        source.close()

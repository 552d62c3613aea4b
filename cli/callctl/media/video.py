"""Video sources and sinks: test pattern, file, camera; file, terminal, null.

Sources keep only their latest frame: ``latest()`` never blocks and never
queues, so a slow encoder makes us skip frames instead of falling behind.
Camera and file decoding run in threads; file writing runs in a thread behind
a bounded queue; terminal rendering is capped in frame rate.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callctl.media.audio import DeviceError, MediaError

log = logging.getLogger("callctl.media")


@dataclass(frozen=True)
class VideoFormat:
    width: int = 640
    height: int = 480
    fps: float = 15.0


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{2,5})\s*[xX]\s*(\d{2,5})\s*", text)
    if not m:
        raise MediaError(f"bad video size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 2 or h % 2 or not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise MediaError(f"bad video size {text!r}: even numbers from 16 to 4096")
    return w, h


# ------------------------------------------------------------------- sources


class VideoSource:
    name = "video"

    def __init__(self, fmt: VideoFormat) -> None:
        self.fmt = fmt

    def latest(self) -> Any:
        """The newest frame (an av.VideoFrame), or None if there is none yet."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class TestPattern(VideoSource):
    """Colour bars with a moving block and a frame counter in the corner block."""

    name = "testsrc"

    def __init__(self, fmt: VideoFormat) -> None:
        super().__init__(fmt)
        self._n = 0
        w, h = fmt.width, fmt.height
        bars = np.array(
            [[235, 128, 128], [210, 16, 146], [170, 166, 16], [145, 54, 34],
             [106, 202, 222], [81, 90, 240], [41, 240, 110], [16, 128, 128]], dtype=np.uint8
        )
        cols = (np.arange(w) * 8 // w).astype(int)
        self._y = np.repeat(bars[cols, 0][None, :], h, axis=0)
        self._u = np.repeat(bars[cols[::2], 1][None, :], h // 2, axis=0)
        self._v = np.repeat(bars[cols[::2], 2][None, :], h // 2, axis=0)

    def latest(self) -> Any:
        import av

        w, h = self.fmt.width, self.fmt.height
        y = self._y.copy()
        size = max(8, h // 8)
        x = (self._n * 4) % max(1, w - size)
        y[h // 2 - size // 2 : h // 2 + size // 2, x : x + size] = 255
        self._n += 1
        frame = av.VideoFrame(w, h, "yuv420p")
        for plane, data in zip(frame.planes, (y, self._u, self._v)):
            _copy_plane(plane, data)
        return frame


def _copy_plane(plane: Any, data: np.ndarray) -> None:
    stride = plane.line_size
    rows, cols = data.shape
    if stride == cols:
        plane.update(data.tobytes())
    else:
        padded = np.zeros((rows, stride), dtype=np.uint8)
        padded[:, :cols] = data
        plane.update(padded.tobytes())


class _ThreadedSource(VideoSource):
    """A source whose frames come from a thread; only the newest is kept."""

    def __init__(self, fmt: VideoFormat) -> None:
        super().__init__(fmt)
        self._frame: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run_safely, name=self.name, daemon=True)

    def _run_safely(self) -> None:
        try:
            self._run()
        except Exception as exc:
            self.error = str(exc)
            log.warning("%s stopped: %s", self.name, exc)

    def _run(self) -> None:
        raise NotImplementedError

    def _publish(self, frame: Any) -> None:
        with self._lock:
            self._frame = frame

    def latest(self) -> Any:
        with self._lock:
            return self._frame

    def close(self) -> None:
        self._stop.set()


class FileVideoSource(_ThreadedSource):
    """A video file, scaled to the call's size, paced at its own frame rate; loops if asked."""

    def __init__(self, path: Path, fmt: VideoFormat, loop: bool = True) -> None:
        self.name = f"file:{path}"
        probe_video_file(path)
        super().__init__(fmt)
        self.path = path
        self.loop = loop
        self._thread.start()

    def _run(self) -> None:
        import av

        while not self._stop.is_set():
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or self.fmt.fps)
                start = time.monotonic()
                for i, frame in enumerate(container.decode(stream)):
                    if self._stop.is_set():
                        return
                    due = start + i / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    self._publish(frame.reformat(self.fmt.width, self.fmt.height, "yuv420p"))
            if not self.loop:
                return


def probe_video_file(path: Path) -> None:
    import av

    if not path.is_file():
        raise MediaError(f"cannot read {path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
    except av.FFmpegError as exc:
        raise MediaError(f"cannot decode {path}: {exc}") from None


def cameras_text() -> str:
    from callctl.media.devices import cameras

    found = cameras()
    return ", ".join(f"{c.path} ({c.name})" for c in found) or "none"


class CameraSource(_ThreadedSource):
    """A v4l2 camera through av, with size, frame rate and input format (mjpeg/yuyv)."""

    def __init__(self, device: str, fmt: VideoFormat, input_format: str | None = None) -> None:
        self.name = f"camera:{device}"
        super().__init__(fmt)
        self.device = device
        self.options = {"video_size": f"{fmt.width}x{fmt.height}", "framerate": f"{fmt.fps:g}"}
        if input_format:
            self.options["input_format"] = {"yuyv": "yuyv422"}.get(input_format, input_format)
        self._container = open_camera(device, self.options)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._container.decode(video=0):
                if self._stop.is_set():
                    return
                if frame.width != self.fmt.width or frame.height != self.fmt.height or frame.format.name != "yuv420p":
                    frame = frame.reformat(self.fmt.width, self.fmt.height, "yuv420p")
                self._publish(frame)
        finally:
            self._container.close()


def open_camera(device: str, options: dict[str, str]) -> Any:
    """Open a v4l2 device, or DeviceError naming the cameras that exist."""
    import av

    if not os.path.exists(device):
        raise DeviceError(f"no camera at {device}; cameras: {cameras_text()}")
    try:
        return av.open(device, format="v4l2", options=options)
    except (av.FFmpegError, OSError) as exc:
        raise DeviceError(f"cannot open camera {device}: {exc}; cameras: {cameras_text()}") from None


# --------------------------------------------------------------------- sinks


class VideoSink:
    name = "video-sink"

    def __init__(self) -> None:
        self.frames = 0
        self.size: tuple[int, int] | None = None

    def write(self, frame: Any) -> None:
        """Take one frame; never blocks."""
        self.frames += 1
        self.size = (frame.width, frame.height)

    def close(self) -> None:
        pass


class NullVideoSink(VideoSink):
    name = "null"


#: Video containers by extension: (format, video codec, audio codec).
VIDEO_FILES = {
    ".mkv": ("matroska", "libvpx", "libopus"),
    ".webm": ("webm", "libvpx", "libopus"),
    ".mp4": ("mp4", "libx264", "aac"),
}


class Recorder:
    """Remote audio and video into one container, written in a thread.

    Timestamps come from the wall clock since the recording started, so both
    streams line up and the file lasts as long as the call.  ``close()``
    flushes and finalizes whatever ended the call.
    """

    def __init__(self, path: Path, *, audio: bool = True, video: bool = True,
                 size: tuple[int, int] = (640, 480), fps: float = 15.0) -> None:
        suffix = path.suffix.lower()
        if suffix not in VIDEO_FILES:
            raise MediaError(
                f"cannot record video to {path}: use one of {', '.join(sorted(VIDEO_FILES))}"
            )
        from callctl.media.audio import FileSink

        FileSink.check(path, any_extension=True)
        self.path = path
        self.name = f"record:{path}"
        self.size = size
        self.fps = fps
        self.want_audio = audio
        self.want_video = video
        self.frames = 0
        self.dropped = 0
        self._start = time.monotonic()
        self._queue: queue.Queue[tuple[str, float, Any] | None] = queue.Queue(maxsize=200)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # the two faces: an audio sink and a video sink
    def write(self, pcm: np.ndarray) -> None:
        self._put(("audio", time.monotonic() - self._start, pcm))

    def write_video(self, frame: Any) -> None:
        self._put(("video", time.monotonic() - self._start, frame))

    def _put(self, item: tuple[str, float, Any]) -> None:
        try:
            self._queue.put_nowait(item)
            self.frames += 1
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        import fractions

        import av

        fmt, vcodec, acodec = VIDEO_FILES[self.path.suffix.lower()]
        try:
            container = av.open(str(self.path), "w", format=fmt)
        except Exception as exc:
            log.error("cannot record to %s: %s", self.path, exc)
            while self._queue.get() is not None:
                pass
            return
        with container:
            # the video stream takes the size of the first frame that arrives
            # (what the peer sends), so hold early items until then (2 s at most)
            held: list[tuple[str, float, Any]] = []
            deadline = time.monotonic() + 2.0
            while self.want_video and time.monotonic() < deadline and not self._closing.is_set():
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is None:
                    self._closing.set()
                    break
                held.append(item)
                if item[0] == "video":
                    self.size = (item[2].width, item[2].height)
                    break
            vstream = astream = None
            if self.want_video:
                vstream = container.add_stream(vcodec, rate=int(round(self.fps)))
                vstream.width, vstream.height = self.size
                vstream.pix_fmt = "yuv420p"
                vstream.time_base = fractions.Fraction(1, 1000)
                vstream.codec_context.time_base = fractions.Fraction(1, 1000)
                if vcodec == "libx264":
                    vstream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency"}
                else:
                    vstream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
            if self.want_audio:
                astream = container.add_stream(acodec, rate=48000)
                astream.layout = "mono"  # type: ignore[attr-defined]
            from av.video.reformatter import VideoReformatter

            # our own reformatter: frames are shared with other sinks, and a
            # frame's built-in one must not be used from two threads at once
            reformatter = VideoReformatter()
            audio_pts = 0
            last_video_ms = -1
            while True:
                if held:
                    item = held.pop(0)
                else:
                    try:
                        item = self._queue.get(timeout=0.2)
                    except queue.Empty:
                        if self._closing.is_set():
                            break
                        continue
                if item is None:
                    break
                kind, at, payload = item
                if kind == "audio" and astream is not None:
                    frame = av.AudioFrame.from_ndarray(payload.reshape(1, -1), format="s16", layout="mono")
                    frame.sample_rate = 48000
                    # audio follows its own sample count, resynced to the clock after gaps
                    audio_pts = max(audio_pts, int(at * 48000) - payload.size)
                    frame.pts = audio_pts
                    audio_pts += payload.size
                    for packet in astream.encode(frame):
                        container.mux(packet)
                elif kind == "video" and vstream is not None:
                    ms = int(at * 1000)
                    if ms <= last_video_ms:
                        continue
                    last_video_ms = ms
                    frame = reformatter.reformat(payload, self.size[0], self.size[1], "yuv420p")
                    if frame is payload:  # unchanged: copy before stamping our own pts on it
                        frame = av.VideoFrame.from_ndarray(payload.to_ndarray(), format="yuv420p")
                    frame.pts = ms
                    frame.time_base = fractions.Fraction(1, 1000)
                    for packet in vstream.encode(frame):
                        container.mux(packet)
            for stream in (vstream, astream):
                if stream is not None:
                    for packet in stream.encode(None):
                        container.mux(packet)

    def close(self) -> None:
        self._closing.set()
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass  # the writer still drains what is queued, then sees _closing
        self._thread.join(timeout=20)


class FileVideoSink(VideoSink):
    """The peer's video alone into a file (mkv/webm/mp4)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        super().__init__()
        self.name = f"file:{path}"
        self._recorder = Recorder(path, audio=False, video=True, size=size, fps=fps)

    def write(self, frame: Any) -> None:
        super().write(frame)
        self._recorder.write_video(frame)

    def close(self) -> None:
        self._recorder.close()


# ------------------------------------------------------------------ terminal


def half_blocks(rgb: np.ndarray) -> list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    """Cells of an image drawn with '▀': (top pixel colour, bottom pixel colour) per cell.

    ``rgb`` is H×W×3 with an even H; the result has H/2 rows of W cells.
    """
    top = rgb[0::2]
    bottom = rgb[1::2]
    return [
        [(tuple(int(c) for c in top[r, x]), tuple(int(c) for c in bottom[r, x]))  # type: ignore[misc]
         for x in range(rgb.shape[1])]
        for r in range(top.shape[0])
    ]


def render_ansi(rgb: np.ndarray) -> str:
    """An image as 24-bit ANSI text: '▀' with the top pixel as foreground, bottom as background."""
    lines = []
    for row in half_blocks(rgb):
        cells = [f"\x1b[38;2;{t[0]};{t[1]};{t[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m▀" for t, b in row]
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines)


def fit(frame_w: int, frame_h: int, cols: int, rows: int) -> tuple[int, int]:
    """Pixel size (w, 2*rows) to draw a frame into cols×rows cells, keeping its aspect."""
    # a cell is about twice as tall as wide and holds two pixels: pixels are square
    w = cols
    h = int(round(w * frame_h / frame_w))
    if h > rows * 2:
        h = rows * 2
        w = int(round(h * frame_w / frame_h))
    return max(2, w), max(2, h - h % 2)


class TerminalSink(VideoSink):
    """Draws the peer's video in the terminal with half blocks, at a capped frame rate."""

    name = "terminal"

    def __init__(self, max_fps: float = 8.0, out: Any = None) -> None:
        super().__init__()
        import shutil
        import sys

        self.max_fps = max_fps
        self.out = out or sys.stdout
        self._last = 0.0
        cols, rows = shutil.get_terminal_size((80, 24))
        self.cols, self.rows = cols, max(4, rows - 2)
        self.rendered = 0
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()

    def write(self, frame: Any) -> None:
        super().write(frame)
        now = time.monotonic()
        if now - self._last < 1.0 / self.max_fps:
            return
        self._last = now
        w, h = fit(frame.width, frame.height, self.cols, self.rows)
        rgb = self._reformatter.reformat(frame, w, h, "rgb24").to_ndarray()
        self.out.write("\x1b[H" + render_ansi(rgb))
        self.out.flush()
        self.rendered += 1


def save_image(frame: Any, path: Path) -> None:
    """One frame to a PNG or JPEG file, by extension (encoded with av: no imaging library)."""
    import av

    codec, pix_fmt = {".png": ("png", "rgb24"), ".jpg": ("mjpeg", "yuvj420p"),
                      ".jpeg": ("mjpeg", "yuvj420p")}.get(path.suffix.lower(), (None, None))
    if codec is None:
        raise MediaError(f"cannot save {path}: use .png or .jpg")
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, pix_fmt
        image = frame.reformat(format=pix_fmt)
        image.pts = 0
        for packet in stream.encode(image):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)

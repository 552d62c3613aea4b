"""Video sources: test pattern, file, camera — each keeps only its newest frame.

``latest()`` never blocks and never queues, so a slow encoder makes us skip
frames instead of falling behind.  Camera and file decoding run in threads.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callctl.media.errors import DeviceError, MediaError, probe_file

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


class VideoSource(abc.ABC):
    """What we send as video: the newest frame, at whatever rate the source has."""

    name = "video"

    def __init__(self, fmt: VideoFormat) -> None:
        self.fmt = fmt

    @abc.abstractmethod
    def latest(self) -> Any:
        """The newest frame (an av.VideoFrame), or None if there is none yet; never blocks."""

    def close(self) -> None:  # noqa: B027  # optional: most sources hold nothing
        """Stop producing frames."""


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

    @abc.abstractmethod
    def _run(self) -> None:
        """Produce frames with ``_publish`` until ``_stop`` is set (in the source's thread)."""

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
    """A video file we can decode, or MediaError saying why not (before any network traffic)."""
    probe_file(path, "video")


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

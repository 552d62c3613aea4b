"""The peer's video drawn in a terminal: 24-bit ANSI half blocks, at a capped frame rate.

Pure rendering (``half_blocks``, ``render_ansi``, ``fit``) and the sink that
writes it to stdout; commands register it as the ``terminal`` video sink.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from callctl.media.registry import Arg, Kind, OpenParams
from callctl.media.video_sinks import VideoSink


def half_blocks(rgb: np.ndarray) -> list[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
    """Cells of an image drawn with '▀': (top pixel colour, bottom pixel colour) per cell.

    ``rgb`` is H×W×3 with an even H; the result has H/2 rows of W cells.
    """
    top = rgb[0::2]
    bottom = rgb[1::2]
    return [
        [(tuple(int(c) for c in top[r, x]), tuple(int(c) for c in bottom[r, x]))  # type: ignore[misc]  # 3-tuples: rgb has 3 channels
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


#: When a terminal sink last drew a frame (0: none is drawing), for the live view's layout.
_last_drawn = 0.0
#: Frames older than this no longer hold the screen.
ON_SCREEN_S = 1.0


def video_on_screen() -> bool:
    """Whether the peer's video is being drawn in this terminal now."""
    return _last_drawn > 0 and time.monotonic() - _last_drawn < ON_SCREEN_S


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
        global _last_drawn
        _last_drawn = now

    def close(self) -> None:
        global _last_drawn
        _last_drawn = 0.0
        super().close()


def _open_terminal(arg: str | None, params: OpenParams) -> VideoSink:
    return TerminalSink()


def _check_terminal(arg: str | None, params: OpenParams) -> None:
    pass


#: ``--video-out terminal``, for the registry's video sinks.
TERMINAL = Kind("terminal", "terminal", Arg.NONE, _open_terminal, _check_terminal)

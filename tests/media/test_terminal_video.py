"""Terminal rendering: half blocks with the right colours."""

from __future__ import annotations

import io

import av
import numpy as np

from callctl.ui.terminal_video import TerminalSink, fit, half_blocks, render_ansi


def test_half_blocks_pair_the_top_and_bottom_pixel_of_each_cell() -> None:
    rgb = np.zeros((4, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)   # top-left: red over...
    rgb[1, 0] = (0, 0, 255)   # ...blue
    rgb[2, 1] = (0, 255, 0)   # bottom-right cell: green over black
    cells = half_blocks(rgb)
    assert cells[0][0] == ((255, 0, 0), (0, 0, 255))
    assert cells[1][1] == ((0, 255, 0), (0, 0, 0))
    text = render_ansi(rgb)
    first = text.splitlines()[0]
    assert first.startswith("\x1b[38;2;255;0;0m\x1b[48;2;0;0;255m▀")
    assert text.count("▀") == 4 and text.endswith("\x1b[0m")


def test_fit_keeps_the_aspect_ratio_in_the_terminal() -> None:
    assert fit(640, 480, 80, 24) == (64, 48)
    assert fit(640, 360, 80, 24) == (80, 44)  # 45 rows of pixels, made even


def test_terminal_sink_draws_a_known_frame_and_caps_its_rate() -> None:
    rgb = np.zeros((120, 160, 3), dtype=np.uint8)
    rgb[:, :80] = (255, 255, 255)  # left half white, right half black
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    out = io.StringIO()
    sink = TerminalSink(max_fps=5, out=out)
    sink.cols, sink.rows = 40, 15
    sink.write(frame)
    sink.write(frame)  # too soon: counted, not drawn
    assert sink.frames == 2 and sink.rendered == 1
    lines = out.getvalue().removeprefix("\x1b[H").splitlines()
    assert len(lines) == 15
    import re

    colours = [tuple(map(int, m)) for m in re.findall(r"38;2;(\d+);(\d+);(\d+)m", lines[7])]
    assert len(colours) == 40
    # the left half of the row is (near) white, the right half (near) black
    assert all(min(c) >= 240 for c in colours[:18]), colours[:18]
    assert all(max(c) <= 16 for c in colours[22:]), colours[22:]


def test_preview_snapshot_saves_a_frame_and_terminal_preview_draws(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    snap = tmp_path / "aim.png"
    out = subprocess.run([sys.executable, "-m", "callctl", "preview", "--camera", "testsrc",
                          "--video-size", "320x240", "--snapshot", str(snap)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with av.open(str(snap)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (240, 320, 3)
    assert image[120, 10].min() > 200 and image[120, 310].max() < 30  # white bar left, black right
    drawn = subprocess.run([sys.executable, "-m", "callctl", "preview", "--video", "--camera", "testsrc",
                            "--duration", "0.5"], capture_output=True, text=True, timeout=60,
                           env={**__import__("os").environ, "COLUMNS": "40", "LINES": "12"})
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.count("▀") >= 40 * 10
    missing = subprocess.run([sys.executable, "-m", "callctl", "preview", "--video", "--camera",
                              "/dev/video7"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 12 and "no camera at /dev/video7" in missing.stderr

"""What aiortc sends: our sources as paced tracks, and the meters that count them.

``FramePacer`` holds each frame to the wall clock (the audio track, the video
track and the playout clock all use it); ``Meter`` counts frames and keeps
peak levels for ``status`` and ``media.level``.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from typing import Any

from callctl.media.audio import FRAME, FRAME_S, RATE, SILENCE, AudioSource, level


class FramePacer:
    """Paces frame n to ``start + n * period`` on the monotonic clock.

    ``tick()`` sleeps until the next frame is due and returns its index.  When
    the caller fell behind (the loop stalled, an encoder was slow) by more
    than ``max_lag``, it does not burst to catch up: with ``skip`` the missed
    frames are skipped (video: the index jumps); otherwise the clock is
    re-anchored and the index just continues (audio: timestamps stay
    contiguous).
    """

    def __init__(self, period: float, *, max_lag: float = 0.2, skip: bool = False) -> None:
        self.period = period
        self.max_lag = max_lag
        self.skip = skip
        self._start: float | None = None
        self._n = -1

    def steer(self, at: float, slew: float) -> None:
        """Move the clock's phase towards the next frame being due at ``at`` (within half a
        period either way, by ``slew`` seconds at most per call: no jump in the frames' pace)."""
        if self._start is None:
            return
        due = self._start + (self._n + 1) * self.period
        error = (at - due + self.period / 2) % self.period - self.period / 2
        self._start += max(-slew, min(slew, error))

    async def tick(self) -> int:
        self._n += 1
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return self._n
        due = self._start + self._n * self.period
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > self.max_lag:
            if self.skip:
                self._n = int((now - self._start) / self.period)
            else:
                self._start = now - self._n * self.period
        return self._n


def _track_base() -> type:
    from aiortc.mediastreams import MediaStreamTrack

    return MediaStreamTrack


class Meter:
    """Frames counted, the latest peak level, and the peak since last asked."""

    __slots__ = ("frames", "level", "_held")

    def __init__(self) -> None:
        self.frames = 0
        self.level = 0.0
        self._held = 0.0

    def note(self, value: float) -> None:
        self.frames += 1
        self.level = value
        if value > self._held:
            self._held = value

    def take_peak(self) -> float:
        peak, self._held = self._held, 0.0
        return peak


def make_source_track(source: AudioSource | Callable[[], AudioSource], meter: Meter, muted: Callable[[], bool],
                      gate: asyncio.Event | None = None) -> Any:
    """An aiortc audio track pulling 20 ms frames from ``source``, paced by the clock.

    ``source`` may be a function giving the source of the moment: a device
    switched mid-call (``callctl switch``) feeds the same track, whose
    timestamps and format run on unbroken (a new track would restart them).

    With a ``gate``, the first ``recv()`` waits until the gate opens: the track
    can be attached when the offer/answer is made, and the first frame leaves
    the moment the call starts (aiortc polls a track-less sender only every 20 ms).
    """
    import av
    from aiortc.mediastreams import MediaStreamError

    base = _track_base()
    time_base = fractions.Fraction(1, RATE)
    current: Callable[[], AudioSource] = source if callable(source) else (lambda: source)

    class SourceTrack(base):  # type: ignore[misc,valid-type]  # aiortc's track class, imported lazily
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._pacer = FramePacer(FRAME_S)

        async def recv(self) -> Any:
            if self.readyState != "live":
                raise MediaStreamError
            if gate is not None and not gate.is_set():
                await gate.wait()
            n = await self._pacer.tick()
            pcm = current().read()
            if muted():
                pcm = SILENCE
            meter.note(level(pcm))
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = n * FRAME
            frame.time_base = time_base
            return frame

    return SourceTrack()


def make_video_track(source: Any, fps: float, meter: Meter) -> Any:
    """An aiortc video track sending the source's newest frame ``fps`` times a second.

    ``source`` may be a function giving the source of the moment (None: black),
    so that a camera switched mid-call feeds the same track: its timestamps run
    on (a new track's would restart at 0, and a browser shows a frozen picture).
    """
    from aiortc.mediastreams import MediaStreamError

    base = _track_base()
    current: Callable[[], Any] = source if callable(source) and not hasattr(source, "latest") else (lambda: source)
    clock = 90000
    time_base = fractions.Fraction(1, clock)

    class VideoTrack(base):  # type: ignore[misc,valid-type]  # aiortc's track class, imported lazily
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            # a slow encoder skips the frames it missed instead of queueing them
            self._pacer = FramePacer(1.0 / fps, max_lag=0.0, skip=True)

        async def recv(self) -> Any:
            if self.readyState != "live":
                raise MediaStreamError
            n = await self._pacer.tick()
            # the newest frame; the same one again if the source is slower than fps
            # (re-stamping it is safe: the sender encodes it before asking again)
            now = current()
            frame = now.latest() if now is not None else None
            if frame is None:
                frame = self._black_frame()
            frame.pts = int(n * clock / fps)
            frame.time_base = time_base
            meter.note(1.0)
            return frame

        def _black_frame(self) -> Any:
            import av

            fmt = source.fmt
            frame = av.VideoFrame(fmt.width, fmt.height, "yuv420p")
            for plane, value in zip(frame.planes, (16, 128, 128)):
                plane.update(bytes([value]) * plane.buffer_size)
            return frame

    return VideoTrack()

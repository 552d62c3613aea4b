"""Ring and ringback on the speaker: what a kiosk plays while a call rings.

``--ringtone`` (the callee hears it while its device rings) and ``--ringback``
(the caller hears it while the callee's device rings) take ``tone`` (built in),
``none`` or a file path.  The sound goes to the call's speaker sink before its
media starts, 20 ms at a time on the event loop's clock, and stops at once when
the call leaves ringing: the device's queue is flushed, nothing rings on.
Sinks that are not speakers (``null``, ``file:``) never ring.  The same player
plays ``--hold-audio`` (``tone``, ``none`` or a file) on the side that is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callctl.media.audio import FRAME, FRAME_S, RATE, AudioSink, FileSource, probe_audio_file
from callctl.media.errors import MediaError

#: Built-in sounds: (frequencies, amplitude, [(on_s, off_s), ...]) repeated.
#: The ring: two short warbling bursts, then quiet (3 s a cycle).
RING_HZ = (800.0, 1000.0)
RING_PATTERN = [(0.4, 0.2), (0.4, 2.0)]
#: The ringback: ITU-T E.180's 425 Hz, 1 s on, 4 s off (most of Europe).
RINGBACK_HZ = (425.0,)
RINGBACK_PATTERN = [(1.0, 4.0)]
#: On hold: two soft 440 Hz pips every 4 s, so the held side knows the call is still there.
HOLD_HZ = (440.0,)
HOLD_PATTERN = [(0.15, 0.15), (0.15, 3.55)]
AMPLITUDE = 0.3


@dataclass(frozen=True)
class RingSpec:
    """What to play: ``tone``, ``none`` or a file (checked before any traffic)."""

    kind: str  # "tone" | "none" | "file"
    path: Path | None = None

    @classmethod
    def parse(cls, value: str, option: str) -> RingSpec:
        if value in ("tone", "none"):
            return cls(value)
        path = Path(value.removeprefix("file:"))
        if not path.is_file():
            raise MediaError(f"{option} takes tone, none or an audio file: no file {str(path)!r}")
        probe_audio_file(path)
        return cls("file", path)


def pattern_pcm(freqs: tuple[float, ...], pattern: list[tuple[float, float]],
                amplitude: float = AMPLITUDE) -> np.ndarray:
    """One cycle of a built-in sound as 48 kHz mono s16, a whole number of 20 ms frames."""
    parts = []
    for on_s, off_s in pattern:
        t = np.arange(int(on_s * RATE)) / RATE
        if len(freqs) == 2:  # a warble: the two tones alternate 20 times a second
            which = (np.floor(t * 20) % 2).astype(bool)
            wave = np.where(which, np.sin(2 * math.pi * freqs[1] * t), np.sin(2 * math.pi * freqs[0] * t))
        else:
            wave = np.sin(2 * math.pi * freqs[0] * t)
        ramp = min(t.size // 2, int(0.005 * RATE))  # no clicks at the edges
        envelope = np.ones(t.size)
        envelope[:ramp] = np.linspace(0, 1, ramp)
        envelope[t.size - ramp:] = np.linspace(1, 0, ramp)
        parts += [wave * envelope * amplitude, np.zeros(int(off_s * RATE))]
    pcm = np.concatenate(parts)
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME)])
    return (pcm * 32767).astype(np.int16)


class _Cycle:
    """Frames of a built-in sound, round and round."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm, self.at = pcm, 0

    def read(self) -> np.ndarray:
        frame = self.pcm[self.at:self.at + FRAME]
        self.at = (self.at + FRAME) % self.pcm.size
        return frame

    def close(self) -> None:
        pass


def rings(sink: AudioSink) -> bool:
    """Whether a sink is a loudspeaker (the only kind that rings)."""
    return sink.name.startswith("speaker:")


class RingPlayer:
    """Plays one ring, ringback or hold sound into a speaker sink until stopped."""

    def __init__(self, spec: RingSpec, sink: AudioSink, *, ringback: bool, hold: bool = False) -> None:
        self.spec, self.sink, self.ringback, self.hold = spec, sink, ringback, hold
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def playing(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.spec.kind == "none" or self.playing or not rings(self.sink):
            return
        self._task = asyncio.ensure_future(self._play())

    def stop(self) -> None:
        """Stop now: the frames already queued for the device are dropped too."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    async def _play(self) -> None:
        from callctl.media.tracks import FramePacer

        if self.spec.kind == "file":
            assert self.spec.path is not None
            source: _Cycle | FileSource = FileSource(self.spec.path, loop=True)
        elif self.hold:
            source = _Cycle(pattern_pcm(HOLD_HZ, HOLD_PATTERN, AMPLITUDE / 2))
        elif self.ringback:
            source = _Cycle(pattern_pcm(RINGBACK_HZ, RINGBACK_PATTERN))
        else:
            source = _Cycle(pattern_pcm(RING_HZ, RING_PATTERN))
        pacer = FramePacer(FRAME_S)
        try:
            while True:
                await pacer.tick()
                with contextlib.suppress(Exception):  # a device that went away: the call goes on
                    self.sink.write(source.read())
                    self.frames += 1
        finally:
            source.close()

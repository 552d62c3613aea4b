"""Adaptive audio playout: the buffer between the network and every sink.

aiortc's receiver holds audio in a fixed jitter buffer (capacity 16, prefetch
4: ~80 ms on a clean link) that, after one lost packet, stalls and then stays
near 280 ms for the rest of the call.  We replace it with a pass-through
(``PassThroughJitterBuffer``: duplicates and late packets dropped, nothing
held) and own the playout here:

- Frames are keyed by RTP timestamp (``pts``, 960 ticks per 20 ms frame).
- The target delay follows the spread of recent transit times (the 95th
  percentile over the earliest, in a 2 s window), plus a small margin; it is clamped to [min_delay, max_delay].  When jitter stops,
  the window forgets it within 2 s and the delay comes back down.
- The playout clock calls ``pop`` every 20 ms.  A missing frame whose
  successors already arrived is concealed (the last frame, attenuated, then
  silence); a buffer deeper than the target drops a frame per pop until it is
  back on target; the buffer never holds more than ``cap``.

Pure logic with an injected clock: tested with synthetic packet timings.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from callctl.media.audio import FRAME, RATE, SILENCE

FRAME_S = FRAME / RATE
#: A frame's timestamp within this of its slot is that slot's frame (timestamps need no grid).
HALF_FRAME = FRAME // 2


@dataclass
class PlayoutStats:
    played: int = 0
    concealed: int = 0
    dropped: int = 0  # removed to bring the delay down
    late: int = 0  # arrived after their slot was played or concealed
    overflow: int = 0  # over the hard cap
    resyncs: int = 0  # the sender's timeline jumped: started afresh
    underruns: int = 0  # nothing to play at all


class PlayoutBuffer:
    def __init__(
        self,
        min_delay_s: float = 0.01,
        max_delay_s: float = 0.2,
        cap_s: float = 0.5,
        window_s: float = 2.0,
        margin_s: float = 0.005,
    ) -> None:
        self.min_delay = min_delay_s
        self.max_delay = max_delay_s
        self.cap_frames = max(2, int(round(cap_s / FRAME_S)))
        self.window = window_s
        self.margin = margin_s
        self.stats = PlayoutStats()
        self._frames: dict[int, np.ndarray] = {}
        self._next: int | None = None  # pts of the next frame to play
        self._last: np.ndarray = SILENCE
        self._concealed_run = 0
        self._transits: collections.deque[tuple[float, float]] = collections.deque()
        #: (target delay, earliest transit) of the window as it is: made again after a push
        self._spread: tuple[float, float] | None = None
        self._started = False
        self._first_arrival: float | None = None
        self._lock = threading.Lock()
        #: A timestamp this far (RTP ticks) from the next one to play is a new timeline.
        self.jump_ticks = int(max(2.0, 4 * cap_s) * RATE)

    def _resync(self) -> None:
        self._frames.clear()
        self._transits.clear()
        self._spread = None
        self._next, self._started, self._first_arrival = None, False, None

    # ----------------------------------------------------------------- input
    def push(self, pts: int, pcm: np.ndarray, now: float) -> None:
        with self._lock:
            if self._next is not None and abs(pts - self._next) > self.jump_ticks:
                # a new timeline, not a late or early packet: the sender restarted its
                # stream (a new SSRC or timestamp base; GStreamer does at negotiation)
                self._resync()
                self.stats.resyncs += 1
            if self._next is not None and pts < self._next - HALF_FRAME:
                self.stats.late += 1
                return
            transit = now - pts / RATE
            self._transits.append((now, transit))
            while self._transits and self._transits[0][0] < now - self.window:
                self._transits.popleft()
            self._spread = None
            self._frames[pts] = pcm
            if self._first_arrival is None:
                self._first_arrival = now
            while len(self._frames) > self.cap_frames:
                oldest = min(self._frames)
                del self._frames[oldest]
                self.stats.overflow += 1
                if self._next is not None and oldest >= self._next:
                    self._next = oldest + FRAME

    # ---------------------------------------------------------------- output
    @property
    def target_delay(self) -> float:
        """Seconds of audio to keep buffered, from the recent transit-time spread."""
        if not self._transits:
            return self.min_delay
        return self._window_spread()[0]

    def _window_spread(self) -> tuple[float, float]:
        """(target delay, earliest transit): sorted once a push, not on every ask (~3 a frame)."""
        if self._spread is None:
            transits = sorted(t for _, t in self._transits)
            # 95th percentile over the earliest: one scheduling hiccup does not
            # hold the delay up for the whole window; the rarer late ones are concealed
            spread = transits[int(0.95 * (len(transits) - 1))] - transits[0]
            self._spread = (min(self.max_delay, max(self.min_delay, spread + self.margin)), transits[0])
        return self._spread

    def _due(self) -> int | None:
        """The held frame that plays in the next slot (within half a frame of it), if any."""
        if not self._frames or self._next is None:
            return None
        oldest = min(self._frames)
        return oldest if oldest <= self._next + HALF_FRAME else None

    def next_due(self) -> float | None:
        """When the next slot should play: its frame's earliest arrival plus the target delay.

        A frame whose transit is the window's earliest then waits exactly the target
        delay; later ones (jitter) less.  The playout clock steers its phase to this
        (``PeerConnection._playout_clock``): otherwise every frame would also wait
        for the clock's next tick, 0-20 ms more, 10 on average.
        """
        with self._lock:
            if not self._started or self._next is None or not self._transits:
                return None
            target, earliest = self._window_spread()
            return self._next / RATE + earliest + target

    @property
    def buffered(self) -> float:
        """Seconds of audio waiting, from the next frame to play to the newest held."""
        if not self._frames:
            return 0.0
        start = self._next if self._next is not None else min(self._frames)
        return (max(self._frames) - start) / RATE + FRAME_S

    def pop(self, now: float) -> tuple[np.ndarray, str]:
        """The next 20 ms to play and what it is: play, conceal, wait or underrun."""
        with self._lock:
            if not self._started:
                if not self._frames or self._first_arrival is None:
                    return SILENCE, "wait"
                if now - self._first_arrival < self.target_delay and self.buffered < self.target_delay + FRAME_S:
                    return SILENCE, "wait"
                self._started = True
                self._next = min(self._frames)
            assert self._next is not None
            # too deep: drop the oldest frames until back on target
            while self.buffered > self.target_delay + 2 * FRAME_S and self._due() is not None:
                oldest = self._due()
                assert oldest is not None
                del self._frames[oldest]
                self._next = oldest + FRAME
                self.stats.dropped += 1
            due = self._due()
            if due is not None:
                pcm = self._frames.pop(due)
                # timestamps need not sit on a 20 ms grid from the first one (GStreamer's
                # first Opus packet is 648 ticks long): the next slot follows this frame
                self._next = due + FRAME
                self._last = pcm
                self._concealed_run = 0
                self.stats.played += 1
                return pcm, "play"
            if self._frames and min(self._frames) > self._next:
                # a hole with later frames waiting: conceal it and move on
                self._next += FRAME
                self._concealed_run += 1
                self.stats.concealed += 1
                if self._concealed_run <= 2:
                    self._last = (self._last * 0.5).astype(np.int16)
                    return self._last, "conceal"
                return SILENCE, "conceal"
            self.stats.underruns += 1
            return SILENCE, "underrun"


class PassThroughJitterBuffer:
    """aiortc's audio jitter buffer interface, holding nothing: one Opus packet is one frame.

    Every packet goes straight to the decoder, reordered ones included (the
    playout buffer puts them back in order by timestamp); only duplicates of
    the last 64 sequence numbers are dropped.  Version-pinned adaptation:
    ``JitterBuffer(capacity, prefetch, is_video)`` with ``add(packet) ->
    (pli_flag, JitterFrame | None)``, as in aiortc 1.9-1.16.
    """

    def __init__(self, capacity: int = 16, prefetch: int = 0, is_video: bool = False) -> None:
        self._capacity = capacity
        self._recent: collections.deque[int] = collections.deque(maxlen=64)

    @property
    def capacity(self) -> int:
        return self._capacity

    def add(self, packet: Any) -> tuple[bool, Any]:
        from aiortc.jitterbuffer import JitterFrame

        if packet.sequence_number in self._recent:
            return False, None
        self._recent.append(packet.sequence_number)
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


class SerialTimestampMapper:
    """RTP timestamps to a monotonic 64-bit scale, with RFC 1982 serial arithmetic.

    aiortc's ``TimestampMapper`` takes any timestamp smaller than the last one
    for a 32-bit wrap, so one reordered packet shifts every later timestamp by
    2**32.  Here a step back of less than 2**31 is reordering, not a wrap.
    Same interface: ``map(timestamp) -> int``, starting at 0.
    """

    def __init__(self) -> None:
        self._origin: int | None = None
        self._newest = 0  # the newest timestamp seen, extended to 64 bits

    def map(self, timestamp: int) -> int:
        if self._origin is None:
            self._origin = self._newest = timestamp
            return 0
        step = (timestamp - self._newest) & 0xFFFFFFFF
        if step >= 1 << 31:
            step -= 1 << 32  # behind the newest: a reordered packet
        extended = self._newest + step
        if step > 0:
            self._newest = extended
        return extended - self._origin

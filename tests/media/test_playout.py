"""The playout buffer under synthetic packet timings: jitter, loss, reordering, overflow, recovery."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from callctl.media.audio import FRAME, RATE
from callctl.media.playout import FRAME_S, PlayoutBuffer
from callctl.media.tracks import FramePacer


def frame(n: int) -> np.ndarray:
    return np.full(FRAME, n % 30000 + 1, dtype=np.int16)


def simulate(buf: PlayoutBuffer, seconds: float, *, jitter: float = 0.0, loss: float = 0.0,
             reorder: float = 0.0, start: int = 0, t0: float = 0.0, base_delay: float = 0.005,
             seed: int = 1, log: list | None = None) -> tuple[int, float, list]:
    """Send 20 ms frames through a link with the given jitter/loss; pop every 20 ms.

    Returns (next frame number, time at the end, [(now, kind, frame id, delay)]).
    """
    rng = random.Random(seed)
    arrivals = []
    n_frames = int(seconds / FRAME_S)
    for i in range(n_frames):
        n = start + i
        if rng.random() < loss:
            continue
        delay = base_delay + rng.uniform(0, jitter)
        if rng.random() < reorder:
            delay += FRAME_S * 1.5
        arrivals.append((n * FRAME_S + delay, n))
    arrivals.sort()
    out = log if log is not None else []
    a = 0
    tick = t0
    end = (start + n_frames) * FRAME_S
    while tick < end:
        while a < len(arrivals) and arrivals[a][0] <= tick:
            _, n = arrivals[a]
            buf.push(n * FRAME, frame(n), arrivals[a][0])
            a += 1
        pcm, kind = buf.pop(tick)
        ident = int(pcm[0]) - 1 if kind == "play" else None
        # mouth-to-ear of a played frame: when it plays minus when it was captured
        delay = tick - ident * FRAME_S if ident is not None else None
        out.append((tick, kind, ident, delay))
        tick += FRAME_S
    return start + n_frames, tick, out


def delays(log: list, since: float = 0.0) -> list[float]:
    return [d for t, kind, _, d in log if kind == "play" and t >= since]


def test_clean_link_plays_every_frame_in_order_with_low_delay() -> None:
    buf = PlayoutBuffer()
    _, _, log = simulate(buf, 5)
    played = [i for _, kind, i, _ in log if kind == "play"]
    assert played == sorted(played) and len(played) >= 240
    assert buf.stats.concealed == 0 and buf.stats.dropped == 0
    assert max(delays(log, 1)) <= 0.045


def test_jitter_raises_the_target_delay_within_the_bound() -> None:
    buf = PlayoutBuffer()
    _, _, log = simulate(buf, 10, jitter=0.04)
    late = buf.stats.late
    assert 0.035 <= buf.target_delay <= 0.06
    assert late / 500 < 0.02  # a late packet is rare once the delay adapted
    assert max(delays(log, 3)) <= 0.12


def test_loss_is_concealed_and_never_stalls_the_clock() -> None:
    buf = PlayoutBuffer()
    _, _, log = simulate(buf, 10, loss=0.05, jitter=0.02)
    kinds = [k for t, k, _, _ in log if t > 1]
    assert kinds.count("conceal") > 10
    assert buf.stats.concealed + buf.stats.played >= 0.97 * len(kinds)
    assert max(delays(log, 2)) <= 0.1


def test_reordered_packets_are_played_in_order() -> None:
    buf = PlayoutBuffer()
    _, _, log = simulate(buf, 5, reorder=0.1, jitter=0.01)
    played = [i for _, kind, i, _ in log if kind == "play"]
    assert played == sorted(played)
    assert len(played) >= 0.95 * 250


def test_delay_comes_back_down_after_a_loss_and_jitter_burst() -> None:
    buf = PlayoutBuffer()
    log: list = []
    n, t, _ = simulate(buf, 5, loss=0.05, jitter=0.06, log=log)
    assert buf.target_delay > 0.06
    n, t, _ = simulate(buf, 8, start=n, t0=t, seed=2, log=log)
    after = delays(log, t - 8 + 5)  # 5 s after the burst ended
    assert max(after) <= 0.06, max(after)
    assert buf.target_delay <= 0.03


def test_overflow_is_bounded_by_the_cap() -> None:
    buf = PlayoutBuffer(cap_s=0.2)
    for n in range(100):  # 2 s of audio arriving at once, nothing popped
        buf.push(n * FRAME, frame(n), 0.0)
    assert buf.buffered <= 0.2 + 1e-9
    assert buf.stats.overflow == 100 - 10
    pcm, kind = buf.pop(1.0)
    assert kind == "play"


def test_late_frames_after_their_slot_are_dropped() -> None:
    buf = PlayoutBuffer()
    for n in range(5):
        buf.push(n * FRAME, frame(n), n * FRAME_S)
    now = 0.1
    for _ in range(3):
        buf.pop(now)
        now += FRAME_S
    buf.push(0, frame(0), now)  # frame 0 again, long after it played
    assert buf.stats.late == 1


def test_timestamp_mapper_handles_reordering_and_wrap() -> None:
    from callctl.media.playout import SerialTimestampMapper

    m = SerialTimestampMapper()
    start = 2**32 - 2 * FRAME  # two frames before the 32-bit wrap
    seq = [start, start + FRAME, start + 3 * FRAME, start + 2 * FRAME, start + 4 * FRAME]
    mapped = [m.map(ts & 0xFFFFFFFF) for ts in seq]
    assert mapped == [0, FRAME, 3 * FRAME, 2 * FRAME, 4 * FRAME]


def test_timestamps_off_the_20_ms_grid_all_play() -> None:
    """GStreamer's first Opus packet is 648 ticks long: every later one sits off a grid from it."""
    buf = PlayoutBuffer()
    pts = [0] + [648 + FRAME * i for i in range(150)]
    kinds = []
    for i, ts in enumerate(pts):
        buf.push(ts, frame(i), now=i * FRAME_S)  # a burst of the first ones would do the same
        kinds.append(buf.pop(i * FRAME_S + 0.001)[1])
    played = kinds.count("play")
    assert played >= len(pts) - 3 and buf.stats.late == 0 and buf.stats.concealed <= 1, buf.stats


def test_a_new_timeline_from_the_sender_is_followed_not_dropped_as_late() -> None:
    buf = PlayoutBuffer()
    _, tick, _ = simulate(buf, 1, start=500, t0=500 * FRAME_S)  # 10 s into the sender's timeline
    played_before = buf.stats.played
    # its timestamps jumped back to 0 (a new SSRC or timestamp base), 10 s from where it was
    for i in range(50):
        now = tick + i * FRAME_S
        buf.push(FRAME * i, frame(i), now)
        buf.pop(now + 0.001)
    assert buf.stats.resyncs == 1 and buf.stats.played - played_before >= 45, buf.stats


def test_the_next_slot_is_due_its_earliest_arrival_plus_the_target() -> None:
    buf = PlayoutBuffer()
    assert buf.next_due() is None  # nothing yet
    # frames with 30 ms of transit, some 8 ms late: the target covers the spread
    for n in range(40):
        buf.push(n * FRAME, frame(n), n * FRAME_S + 0.030 + (0.008 if n % 5 == 0 else 0.0))
    now = 40 * FRAME_S + 0.030
    buf.pop(now)
    due = buf.next_due()
    assert due is not None
    assert due == pytest.approx(buf._next / RATE + 0.030 + buf.target_delay)
    assert 0.010 <= buf.target_delay <= 0.015  # the 8 ms spread plus the margin


def test_the_playout_clock_is_steered_to_the_slots_phase_a_little_at_a_time() -> None:
    pacer = FramePacer(FRAME_S)
    asyncio.run(pacer.tick())  # started now
    assert pacer._start is not None
    due = pacer._start + FRAME_S
    pacer.steer(due + 0.005, slew=0.001)
    assert pacer._start + FRAME_S == pytest.approx(due + 0.001)  # 1 ms of the 5 at most
    # 15 ms later is 5 ms earlier than the slot after: the nearer way round
    pacer.steer(pacer._start + FRAME_S + 0.015, slew=0.001)
    assert pacer._start + FRAME_S == pytest.approx(due)
    before = pacer._start
    pacer.steer(pacer._start + FRAME_S, slew=0.001)  # on phase: nothing moves
    assert pacer._start == before

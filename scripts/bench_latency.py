#!/usr/bin/env python3
"""Mouth-to-ear delay of call audio through the whole stack, measured with clicks.

Two real ``PeerConnection`` objects (aiortc peer connections, Opus, DTLS-SRTP) in one
process talk through ``callctl.harness.relay.LossyLink``, a UDP relay on 127.0.0.1 that
can drop and delay packets.  Each peer's source is a ``ClickSource``: silence,
and every ``--every`` frames (default 10 = 200 ms) a frame that starts with an
8 ms sine burst at half full scale.  The burst's frequency (1000, 1500, ...
4500 Hz) is the click's index modulo 8, so a click is matched to the one that
was sent even when clicks are lost, concealed or repeated.  ``read()`` is
called by the sender track right before the frame is encoded and sent, and
records ``time.monotonic()``.

Each peer's sink is a ``RecorderSink``: it records ``time.monotonic()`` at
every ``write()`` (one 20 ms frame played).  After the run the frames are laid
end to end, a click onset is the first sample above 15 % of full scale after
at least 15 ms below it, and its time is the write time of its frame plus the
sample offset / 48000.  Mouth-to-ear delay = onset time at the far sink - read
time at the source (same process, same clock).  Both directions are measured
and pooled.  A second figure, "paced", lays the written frames on a real-time
output clock (a frame cannot start before the previous one has finished), as
a speaker with an unbounded queue would play them; it differs from the write
time only where frames are written in bursts.  For ``ours`` the playout
buffer's ``push`` is wrapped (on the instance) to split the delay into read ->
decoded frame in the buffer, time held there, and the onset's offset in the
decoded frame (the codec's delay).  ``--speaker`` adds callctl's
``SpeakerSink`` on an ALSA PCM that discards the audio (its own callback runs
unchanged; we note when it takes each frame) to show what the speaker queue
adds beyond the sink.

Two variants run in separate subprocesses, one after the other for each
condition (fresh peers and link for every run):

* ``ours``: callctl's receive path (aiortc's jitter buffer replaced by a
  pass-through; ``callctl.media.playout.PlayoutBuffer`` and its 20 ms
  playout clock in front of the sinks);
* ``stock``: ``CALLCTL_STOCK_AUDIO=1``: aiortc's own audio jitter buffer
  (capacity 16, prefetch 4) and every decoded frame written straight to the
  sinks.  The send side (voice Opus encoder, pacing) is the same in both.

Conditions (the same impairment on both directions of the relay):

* ``clean``: no loss, no added delay;
* ``lossy``: 5 % loss, 5 ms base delay + uniform 0-20 ms jitter per packet;
* ``recovery``: clean, then 10 s (``--impair-s``) of 5 % loss + 20 ms jitter,
  then clean again for ``--after-s`` s;
* ``recovery-harsh``: the same with 10 % loss and 0-60 ms jitter.

Targets (for ``ours``; ``stock`` gets the same verdicts for comparison):
p95 <= 40 ms clean; p95 <= 100 ms with 5 % loss and 20 ms jitter; after the
impairment stops, the 1 s running median of the clicks stays <= 60 ms from
some point on, and that point is <= 5 s after the stop (the stricter "every
click <= 60 ms from then on" is printed too).  A run whose call lost its
media path (e.g. ICE consent expired) is reported and left out of the pooled
figures.

Everything stays on 127.0.0.1; each subprocess is bounded in time and closes
its peers, relay and speaker streams on success, error or timeout; the
orchestrator kills a subprocess's process group on timeout or Ctrl-C.  Exit status: 0 every
target met by ``ours``, 1 a target missed, 2 the benchmark could not run,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))  # run from a checkout without installing too

from callctl.harness import machine, procfs, stats  # noqa: E402
from callctl.harness.bench import CANNOT_RUN, INTERRUPTED, MET, MISSED, log, stop_on_signals  # noqa: E402
from callctl.harness.child import Child  # noqa: E402
from callctl.harness.looplag import LoopLag  # noqa: E402

RATE = 48000
FRAME = 960
FRAME_S = FRAME / RATE
#: Burst frequencies: click k is sent at CODES[k % len(CODES)].
CODES = [1000 + 500 * i for i in range(8)]
BURST_S = 0.008
BURST_AMP = 0.5
#: A click onset: above this after at least QUIET_S below it.
THRESHOLD = 0.15 * 32768
QUIET_S = 0.015
ANALYSIS_N = 384  # samples from the onset used to tell the frequency (8 ms)

SETTLE_MS = 60.0
#: --speaker: an ALSA PCM that PortAudio opens like a card and that throws the audio away.
SPEAKER_PCM = "Bench_Latency_Speaker"
ASOUNDRC = f"""
pcm.{SPEAKER_PCM} {{
    type file
    slave.pcm "null"
    file "/dev/null"
    format "raw"
}}
"""


@dataclass(frozen=True)
class Condition:
    title: str
    loss: float
    delay_s: float
    jitter_s: float
    recovery: bool


CONDITIONS: dict[str, Condition] = {
    "clean": Condition("clean loopback", 0.0, 0.0, 0.0, False),
    "lossy": Condition("5 % loss, 5 ms + 0-20 ms jitter", 0.05, 0.005, 0.020, False),
    "recovery": Condition("recovery after 5 % loss, 0-20 ms jitter", 0.05, 0.005, 0.020, True),
    "recovery-harsh": Condition(
        "recovery after 10 % loss, 0-60 ms jitter", 0.10, 0.005, 0.060, True
    ),
}
VARIANTS = ("ours", "stock")


# =========================================================================
# worker: one variant, one condition, one run (a subprocess)
# =========================================================================


def burst_frames() -> list[np.ndarray]:
    n = int(BURST_S * RATE)
    t = np.arange(n) / RATE
    taper = np.ones(n)
    fade = int(0.001 * RATE)
    taper[-fade:] = np.linspace(1.0, 0.0, fade)
    frames = []
    for hz in CODES:
        pcm = np.zeros(FRAME, dtype=np.int16)
        pcm[:n] = (np.sin(2 * np.pi * hz * t) * taper * BURST_AMP * 32767).astype(np.int16)
        frames.append(pcm)
    return frames


def make_click_source(every: int, phase: int):  # type: ignore[no-untyped-def]
    from callctl.media.audio import SILENCE, AudioSource

    bursts = burst_frames()

    class ClickSource(AudioSource):
        """Silence with a coded click at the start of every ``every``-th frame."""

        name = "clicks"

        def __init__(self) -> None:
            self.n = 0
            self.sent: list[float] = []  # time.monotonic() at read, by click index

        def read(self) -> np.ndarray:
            now = time.monotonic()
            i = self.n
            self.n += 1
            if i >= phase and (i - phase) % every == 0:
                k = len(self.sent)
                self.sent.append(now)
                return bursts[k % len(bursts)]
            return SILENCE

    return ClickSource()


def make_recorder_sink():  # type: ignore[no-untyped-def]
    from callctl.media.audio import AudioSink

    class RecorderSink(AudioSink):
        """Every written frame with time.monotonic() at the write."""

        name = "recorder"

        def __init__(self) -> None:
            self.frames = 0
            self.writes: list[tuple[float, np.ndarray]] = []

        def write(self, pcm: np.ndarray) -> None:
            self.frames += 1
            self.writes.append((time.monotonic(), pcm))

    return RecorderSink()


def make_timed_speaker(name: str):  # type: ignore[no-untyped-def]
    """callctl's SpeakerSink, noting time.monotonic() when PortAudio's callback takes each frame.

    The sink's own callback runs unchanged; this only looks at the frame it is
    about to take (the head of its queue, or silence when the queue is empty).
    """
    from callctl.media.audio import SILENCE
    from callctl.media.devices import SpeakerSink

    class TimedSpeaker(SpeakerSink):  # type: ignore[misc]
        def __init__(self) -> None:
            self.taken: list[tuple[float, np.ndarray]] = []  # before the stream starts
            super().__init__(name)
            self.output_latency_ms = round(self._stream.get_output_latency() * 1000, 1)

        def _callback(self, data: None, frames: int, info: Any, status: int) -> tuple[bytes, int]:
            try:
                head = self._frames[0]
            except IndexError:
                head = SILENCE
            self.taken.append((time.monotonic(), head))
            return super()._callback(data, frames, info, status)  # type: ignore[no-any-return]

    return TimedSpeaker()


def identify(seg: np.ndarray) -> int | None:
    """The click code of a burst segment (its dominant frequency), or None."""
    if seg.size < ANALYSIS_N // 2:
        return None
    spec = np.abs(np.fft.rfft(seg.astype(np.float64) * np.hanning(seg.size), 8192))
    hz = float(np.argmax(spec)) * RATE / 8192
    code = int(round((hz - CODES[0]) / (CODES[1] - CODES[0])))
    if 0 <= code < len(CODES) and abs(hz - CODES[code]) < 150:
        return code
    return None


Detection = tuple[float, float, int | None, float]


def detect(writes: list[tuple[float, np.ndarray]]) -> list[Detection]:
    """Click onsets in what a sink was given: (write-based time, paced time, code, offset in its frame)."""
    if not writes:
        return []
    times = np.array([t for t, _ in writes])
    sizes = np.array([p.size for _, p in writes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    paced = times.copy()
    for i in range(1, len(paced)):
        paced[i] = max(times[i], paced[i - 1] + sizes[i - 1] / RATE)
    pcm = np.concatenate([p.reshape(-1) for _, p in writes]).astype(np.int32)
    loud = np.flatnonzero(np.abs(pcm) > THRESHOLD)
    if loud.size == 0:
        return []
    onsets = np.concatenate([[loud[0]], loud[1:][np.diff(loud) > QUIET_S * RATE]])
    out = []
    for i in onsets:
        j = int(np.searchsorted(starts, i, side="right")) - 1
        off = (i - starts[j]) / RATE
        code = identify(pcm[i : i + ANALYSIS_N])
        out.append((float(times[j] + off), float(paced[j] + off), code, float(off)))
    return out


def match(sent: list[float], detections: list[Detection], every_s: float) -> dict[str, Any]:
    """Each detection to the click it is (by code and time); first one wins.

    ``got``: click index -> (delay, paced delay, offset of the onset in its frame), seconds.
    """
    m = len(CODES)
    got: dict[int, tuple[float, float, float]] = {}
    dup = unidentified = unmatched = 0
    for t, tp, code, off in sorted(detections, key=lambda d: d[0]):
        if code is None:
            unidentified += 1
            continue
        kmax = bisect.bisect_left(sent, t) - 1
        k = kmax - ((kmax - code) % m)
        if k < 0 or t - sent[k] > 0.95 * m * every_s:
            unmatched += 1
            continue
        if k in got:
            dup += 1  # a concealment repeat of a click already heard
            continue
        got[k] = (t - sent[k], tp - sent[k], off)
    return {"got": got, "duplicates": dup, "unidentified": unidentified, "unmatched": unmatched}


def tap_playout(playout: Any, into: list[Detection]) -> None:
    """Note when each decoded click frame is pushed into a PlayoutBuffer (instance-level wrap)."""
    push = playout.push

    def tapped(pts: int, pcm: np.ndarray, now: float) -> None:
        loud = np.abs(pcm) > THRESHOLD
        if loud.any():
            i = int(np.argmax(loud))
            into.append((now, now, identify(pcm[i : i + ANALYSIS_N]), i / RATE))
        push(pts, pcm, now)

    playout.push = tapped


def lag_summary(lag: LoopLag) -> dict[str, float | None]:
    if not lag.lags_ms:
        return {}
    got = stats.summary(lag.lags_ms, (50, 99), digits=2)
    return {"p50_ms": got["p50"], "p99_ms": got["p99"], "max_ms": got["max"]}


async def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    from callctl.harness.relay import Impairment, LossyLink
    from callctl.media import adjust
    from callctl.media.peer import MediaCallbacks, PeerConnection

    variant, cond = args.worker_variant, CONDITIONS[args.worker_condition]
    if (variant == "stock") != adjust.STOCK_AUDIO:
        raise RuntimeError(f"CALLCTL_STOCK_AUDIO does not match variant {variant}")

    to_a, to_b = Impairment(), Impairment()

    def impair(on: bool) -> None:
        for imp in (to_a, to_b):
            imp.loss = cond.loss if on else 0.0
            imp.delay_s = cond.delay_s if on else 0.0
            imp.jitter_s = cond.jitter_s if on else 0.0

    def counts() -> list[int]:
        return [to_a.counts[0] + to_b.counts[0], to_a.counts[1] + to_b.counts[1]]

    load0 = machine.loadavg().split()[0]
    link = LossyLink(to_a=to_a, to_b=to_b, seed=args.seed)
    src_a, src_b = make_click_source(args.every, 0), make_click_source(args.every, args.every // 2)
    sink_a, sink_b = make_recorder_sink(), make_recorder_sink()
    speakers: dict[str, Any] = {}
    if args.speaker:
        speakers = {"a": make_timed_speaker(SPEAKER_PCM), "b": make_timed_speaker(SPEAKER_PCM)}
    peers: list[PeerConnection] = []
    lost: list[str] = []
    closing = False
    tasks: list[asyncio.Task[None]] = []
    lag = LoopLag(0.02)  # a 20 ms sleeper, as the audio frames are paced
    timeline: list[list[float]] = []
    pushed: dict[str, list[Detection]] = {"a": [], "b": []}
    marks: dict[str, float] = {}
    link_counts: dict[str, list[int]] = {}
    try:
        await link.start()
        up = {"a": asyncio.Event(), "b": asyncio.Event()}

        def peer(side: str, source, sinks) -> PeerConnection:  # type: ignore[no-untyped-def]
            def on_lost(why: str) -> None:
                if not closing:  # one peer sees the other close at the end: not a loss
                    lost.append(f"{side}: {why}")

            p = PeerConnection([], source, sinks, MediaCallbacks(on_up=up[side].set, on_lost=on_lost))
            peers.append(p)
            return p

        a = peer("a", src_a, [sink_a] + ([speakers["a"]] if speakers else []))
        b = peer("b", src_b, [sink_b] + ([speakers["b"]] if speakers else []))
        if variant == "ours":
            tap_playout(a.playout, pushed["a"])
            tap_playout(b.playout, pushed["b"])
        await link.negotiate(a, b)
        await asyncio.wait_for(asyncio.gather(up["a"].wait(), up["b"].wait()), 10)
        a.start()
        b.start()
        t0 = time.monotonic()

        async def sample() -> None:
            while True:
                timeline.append(
                    [
                        time.monotonic(),
                        a.playout.target_delay,
                        a.playout.buffered,
                        b.playout.target_delay,
                        b.playout.buffered,
                    ]
                )
                await asyncio.sleep(0.1)

        tasks.append(asyncio.ensure_future(lag.run()))
        if variant == "ours":
            tasks.append(asyncio.ensure_future(sample()))
        if not cond.recovery:
            impair(True)
            await asyncio.sleep(args.warmup)
            link_counts["start"] = counts()
            marks["w0"] = time.monotonic()
            cpu0, machine0 = resource.getrusage(resource.RUSAGE_SELF), procfs.machine_ticks()
            await asyncio.sleep(args.duration)
            marks["w1"] = time.monotonic()
            link_counts["end"] = counts()
        else:
            await asyncio.sleep(args.warmup)
            marks["w0"] = time.monotonic()
            cpu0, machine0 = resource.getrusage(resource.RUSAGE_SELF), procfs.machine_ticks()
            await asyncio.sleep(args.before_s)
            link_counts["start"] = counts()
            impair(True)
            marks["on"] = time.monotonic()
            await asyncio.sleep(args.impair_s)
            impair(False)
            marks["off"] = time.monotonic()
            link_counts["end"] = counts()
            await asyncio.sleep(args.after_s)
            marks["w1"] = time.monotonic()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        machine1 = procfs.machine_ticks()
        await asyncio.sleep(args.drain)  # the last clicks of the window reach the sinks
        playout = {"a": asdict(a.playout.stats), "b": asdict(b.playout.stats)}
        received = {"a": a.received.frames, "b": b.received.frames}
    finally:
        closing = True
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for p in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.close(), 10)
        for spk in speakers.values():  # normally closed by its peer; closing twice is harmless
            with contextlib.suppress(Exception):
                spk.close()
        link.close()

    w0, w1 = marks["w0"], marks["w1"]
    clicks = []
    diag = {"duplicates": 0, "unidentified": 0, "unmatched": 0}
    for direction, src, sink, spk, into in (
        ("a->b", src_a, sink_b, speakers.get("b"), pushed["b"]),
        ("b->a", src_b, sink_a, speakers.get("a"), pushed["a"]),
    ):
        res = match(src.sent, detect(sink.writes), args.every * FRAME_S)
        at_push = match(src.sent, into, args.every * FRAME_S)["got"]
        at_speaker = match(src.sent, detect(spk.taken), args.every * FRAME_S)["got"] if spk else {}
        for key in diag:
            diag[key] += res[key]
        for k, t in enumerate(src.sent):
            if w0 <= t < w1:
                d = res["got"].get(k)
                e = at_speaker.get(k)
                f = at_push.get(k)
                clicks.append(
                    [
                        direction,
                        k,
                        round(t - w0, 4),
                        None if d is None else round(d[0] * 1000, 2),
                        None if d is None else round(d[1] * 1000, 2),
                        None if e is None else round(e[0] * 1000, 2),
                        # the decoded click frame reaching the playout buffer (ours)
                        None if f is None else round(f[0] * 1000, 2),
                        # where the onset is in its decoded frame: the codec's delay
                        None if d is None else round(d[2] * 1000, 2),
                    ]
                )
    fwd = link_counts["end"][0] - link_counts["start"][0]
    drop = link_counts["end"][1] - link_counts["start"][1]
    wall = w1 - w0
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall * 100
    return {
        "variant": variant,
        "condition": args.worker_condition,
        "seed": args.seed,
        "window_s": round(wall, 3),
        "impairment_on_s": round(marks["on"] - w0, 3) if "on" in marks else None,
        "impairment_off_s": round(marks["off"] - w0, 3) if "off" in marks else None,
        "setup_to_window_s": round(w0 - t0, 3),
        "clicks": clicks,
        "detection": diag,
        "playout": playout if variant == "ours" else None,
        "frames_played": received,
        "target_timeline": [
            [round(r[0] - w0, 2)] + [round(x * 1000, 1) for x in r[1:]] for r in timeline
        ]
        if variant == "ours"
        else None,
        "impaired_packets": {
            "forwarded": fwd,
            "dropped": drop,
            "loss_pct": round(100 * drop / max(1, fwd + drop), 2),
        },
        "loop_lag": lag_summary(lag),
        "cpu_pct": round(cpu, 1),
        # all processes on the machine, % of one CPU (the benchmark's own share included)
        "machine_cpu_pct": round(procfs.machine_busy_pct(machine0, machine1), 1),
        "media_lost": lost,
        "warnings": _Warnings.seen[:20],
        "loadavg": [load0, machine.loadavg().split()[0]],
        "speaker": {
            side: {
                **{k: v for k, v in asdict(spk.counters).items() if k != "extra"},
                "output_latency_ms": spk.output_latency_ms,
                "rate": spk.rate,
                "channels": spk.channels,
            }
            for side, spk in speakers.items()
        }
        or None,
    }


class _Warnings:
    """callctl.media warnings during a run (device lost, ...), kept for the result."""

    seen: list[str] = []


def worker_main(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            _Warnings.seen.append(record.getMessage())

    media_log = logging.getLogger("callctl.media")
    media_log.setLevel(logging.WARNING)
    media_log.addHandler(Keep(logging.WARNING))
    media_log.propagate = False
    # aioice says why a path closed ("Consent to send expired") at INFO
    ice_log = logging.getLogger("aioice.ice")
    ice_log.setLevel(logging.INFO)
    ice_keep = Keep(logging.INFO)
    ice_keep.addFilter(lambda record: "onsent" in record.getMessage())
    ice_log.addHandler(ice_keep)
    ice_log.propagate = False
    timeout = (
        args.warmup + args.duration + args.before_s + args.impair_s + args.after_s + args.drain + 30
    )
    result = asyncio.run(asyncio.wait_for(run_cell(args), timeout))
    print(json.dumps(result), flush=True)
    return 0


# =========================================================================
# orchestrator
# =========================================================================


def pct(values: list[float], q: float) -> float | None:
    got = stats.percentile(values, q)
    return None if got is None else round(got, 1)


def summarize(values: list[float | None]) -> dict[str, Any]:
    """Clicks sent, heard (a delay) and lost (None), and the delays' figures in ms."""
    got = stats.summary(values, (50, 95), digits=1)
    return {
        "sent": len(values),
        "heard": got["n"],
        "lost": len(values) - (got["n"] or 0),
        "median_ms": got["p50"],
        "p95_ms": got["p95"],
        "max_ms": got["max"],
        "min_ms": got["min"],
    }


def settle_time(clicks: list[list[Any]], off: float, strict: bool = False) -> float | None:
    """Seconds after ``off`` from which the delay stays <= SETTLE_MS to the end of the window.

    Default: the running median over 1 s of clicks (both directions) stays
    <= SETTLE_MS, so a lone late click (a scheduling stall) does not count;
    ``strict``: every click heard from then on is <= SETTLE_MS.  None: never.
    """
    after = sorted((c[2] - off, c[3]) for c in clicks if c[2] >= off and c[3] is not None)
    if not after:
        return None
    if strict:
        bad = [d > SETTLE_MS for _, d in after]
    else:
        bad = []
        for t, _ in after:
            window = [d for u, d in after if t <= u < t + 1.0]
            bad.append(float(np.median(window)) > SETTLE_MS)
    if bad[-1]:
        return None
    last_bad = max((i for i, b in enumerate(bad) if b), default=None)
    if last_bad is None:
        return 0.0
    return round(after[last_bad + 1][0], 2)


def aggregate(
    cond_name: str, variant: str, all_runs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Pooled figures of the runs whose call stayed up; a run whose media path was lost is only counted."""
    cond = CONDITIONS[cond_name]
    runs = [r for r in all_runs if not r["media_lost"]] or all_runs
    out: dict[str, Any] = {
        "condition": cond_name,
        "variant": variant,
        "runs": len(runs),
        "runs_media_lost": [
            {
                "seed": r["seed"],
                "events": r["media_lost"],
                "warnings": r.get("warnings", []),
                "clicks_sent": len(r["clicks"]),
                "clicks_heard": sum(c[3] is not None for c in r["clicks"]),
            }
            for r in all_runs
            if r["media_lost"]
        ],
    }
    all_clicks = [c for r in runs for c in r["clicks"]]
    if not cond.recovery:
        out["delay"] = summarize([c[3] for c in all_clicks])
        out["paced"] = summarize([c[4] for c in all_clicks])
    else:
        off = [r["impairment_off_s"] for r in runs]
        on = [r["impairment_on_s"] for r in runs]
        before = [c[3] for r in runs for c in r["clicks"] if c[2] < r["impairment_on_s"]]
        during = [
            c[3]
            for r in runs
            for c in r["clicks"]
            if r["impairment_on_s"] <= c[2] < r["impairment_off_s"]
        ]
        after = [c[3] for r in runs for c in r["clicks"] if c[2] >= r["impairment_off_s"]]
        out["before"] = summarize(before)
        out["during"] = summarize(during)
        out["after"] = summarize(after)
        out["delay"] = out["during"]
        bins: dict[int, list[float | None]] = {}
        for r in runs:
            for c in r["clicks"]:
                s = int(np.floor(c[2] - r["impairment_off_s"]))
                if -2 <= s < args.after_s:
                    bins.setdefault(s, []).append(c[3])
        out["per_second_after_off"] = [
            {"from_s": s, "to_s": s + 1, **summarize(bins[s])} for s in sorted(bins)
        ]
        out["settle_s_per_run"] = [settle_time(r["clicks"], r["impairment_off_s"]) for r in runs]
        out["settle_strict_s_per_run"] = [
            settle_time(r["clicks"], r["impairment_off_s"], strict=True) for r in runs
        ]
        out["impairment_on_s"], out["impairment_off_s"] = on, off
    if args.speaker:
        if cond.recovery:
            out["speaker_during"] = summarize(
                [
                    c[5]
                    for r in runs
                    for c in r["clicks"]
                    if r["impairment_on_s"] <= c[2] < r["impairment_off_s"]
                ]
            )
            out["speaker_after"] = summarize(
                [c[5] for r in runs for c in r["clicks"] if c[2] >= r["impairment_off_s"]]
            )
        out["speaker"] = summarize([c[5] for c in all_clicks])
        added = [c[5] - c[3] for c in all_clicks if c[5] is not None and c[3] is not None]
        out["speaker_added"] = {
            "median_ms": pct(added, 50),
            "p95_ms": pct(added, 95),
            "max_ms": round(max(added), 1) if added else None,
        }
        counters: dict[str, float] = {}
        for r in runs:
            for side in r["speaker"].values():
                for k in ("callbacks", "underflows", "overflows"):
                    counters[k] = counters.get(k, 0) + side[k]
                for k in ("output_latency_ms", "rate", "channels"):
                    counters[k] = side[k]
        out["speaker_counters"] = counters
    codec = [c[7] for c in all_clicks if len(c) > 7 and c[7] is not None]
    out["stages"] = {"onset_in_decoded_frame_ms": pct(codec, 50)}
    if variant == "ours":
        full = [c for c in all_clicks if len(c) > 7 and None not in (c[3], c[6], c[7])]
        to_push = [c[6] for c in full]
        held = [c[3] - c[6] - c[7] for c in full]
        out["stages"].update(
            read_to_playout_push_ms={"median": pct(to_push, 50), "p95": pct(to_push, 95)},
            in_playout_buffer_ms={"median": pct(held, 50), "p95": pct(held, 95)},
        )
    out["detection"] = {
        k: sum(r["detection"][k] for r in runs) for k in ("duplicates", "unidentified", "unmatched")
    }
    if variant == "ours":
        stats: dict[str, int] = {}
        for r in runs:
            for side in r["playout"].values():
                for k, v in side.items():
                    stats[k] = stats.get(k, 0) + v
        out["playout_stats"] = stats
    out["impaired_packets"] = {
        "forwarded": sum(r["impaired_packets"]["forwarded"] for r in runs),
        "dropped": sum(r["impaired_packets"]["dropped"] for r in runs),
    }
    f, d = out["impaired_packets"]["forwarded"], out["impaired_packets"]["dropped"]
    out["impaired_packets"]["loss_pct"] = round(100 * d / max(1, f + d), 2)
    out["loop_lag_max_ms"] = max((r["loop_lag"].get("max_ms", 0) for r in runs), default=None)
    out["loop_lag_p99_ms"] = max((r["loop_lag"].get("p99_ms", 0) for r in runs), default=None)
    out["cpu_pct"] = round(float(np.mean([r["cpu_pct"] for r in runs])), 1)
    out["machine_cpu_pct"] = round(float(np.mean([r["machine_cpu_pct"] for r in runs])), 1)
    if args.keep_raw:
        out["raw"] = all_runs
    return out


def verdicts(cells: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for cond_name, by_variant in cells.items():
        for variant, cell in by_variant.items():
            if cond_name == "clean":
                value, limit, what = cell["delay"]["p95_ms"], 40.0, "p95 <= 40 ms"
            elif cond_name == "lossy":
                value, limit, what = cell["delay"]["p95_ms"], 100.0, "p95 <= 100 ms"
            else:
                settles = cell["settle_s_per_run"]
                value = None if any(s is None for s in settles) else max(settles)
                limit, what = 5.0, f"<= {SETTLE_MS:g} ms within 5 s"  # running 1 s median
            ok = value is not None and value <= limit
            rows.append(
                {
                    "condition": cond_name,
                    "variant": variant,
                    "target": what,
                    "value": value,
                    "result": "PASS" if ok else "MISS",
                }
            )
    return rows


def run_worker(
    variant: str, cond: str, seed: int, args: argparse.Namespace, deadline: float, home: Path | None
) -> dict[str, Any]:
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)
    env.pop("CALLCTL_STOCK_AUDIO", None)
    if variant == "stock":
        env["CALLCTL_STOCK_AUDIO"] = "1"
    c = CONDITIONS[cond]
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker-variant",
        variant,
        "--worker-condition",
        cond,
        "--seed",
        str(seed),
        "--every",
        str(args.every),
        "--warmup",
        str(args.warmup),
        "--drain",
        str(args.drain),
    ] + (["--speaker"] if args.speaker else [])
    if c.recovery:
        argv += [
            "--duration",
            "0",
            "--before-s",
            str(args.before_s),
            "--impair-s",
            str(args.impair_s),
            "--after-s",
            str(args.after_s),
        ]
    else:
        argv += [
            "--duration",
            str(args.duration),
            "--before-s",
            "0",
            "--impair-s",
            "0",
            "--after-s",
            "0",
        ]
    budget = (
        args.warmup
        + args.drain
        + 40
        + (args.before_s + args.impair_s + args.after_s if c.recovery else args.duration)
    )
    timeout = min(budget, deadline - time.monotonic())
    if timeout <= 5:
        raise TimeoutError(f"--timeout {args.timeout:g} s reached")
    worker = Child(argv, name=f"{variant}/{cond}", env=env, cwd=ROOT)
    try:
        code = worker.wait_exit(timeout)
    finally:
        worker.stop(grace=0)  # at once: done, timed out, or we are interrupted
    if code is None:
        raise TimeoutError(f"{variant}/{cond} run still going after {timeout:g} s")
    if code != 0 or not worker.lines:
        tail = "\n".join(worker.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{variant}/{cond} run failed (exit {code}):\n{tail}")
    return json.loads(worker.lines[-1])


def fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def print_report(result: dict[str, Any]) -> None:
    a = result["args"]
    print(
        f"Mouth-to-ear delay, click read at the source -> onset written to the far sink (ms); "
        f"{a['runs']} run(s), both directions pooled, a click every {a['every'] * 20} ms"
    )
    print(
        f"commit {result['machine'].get('revision')}; machine: {result['machine']['cpus']} CPU(s) {result['machine']['cpu_model']}, "
        f"Python {result['machine']['python']}, aiortc {result['machine'].get('aiortc')}, "
        f"av {result['machine'].get('av')}"
    )
    print()
    head = (
        f"{'condition':<15} {'path':<6} {'clicks':>9} {'lost':>5} {'median':>7} {'p95':>7} {'max':>7} "
        f"{'p95 paced':>9} {'loss%':>6} {'cpu%':>5} {'mach%':>5} {'lag max':>7}"
    )
    print(head)
    print("-" * len(head))
    for cond_name, by_variant in result["cells"].items():
        for variant, cell in by_variant.items():
            s = cell["delay"]
            label = cond_name if not CONDITIONS[cond_name].recovery else f"{cond_name}*"
            paced = cell.get("paced", {}).get("p95_ms") if "paced" in cell else None
            print(
                f"{label:<15} {variant:<6} {s['heard']:>4}/{s['sent']:<4} {s['lost']:>5} {fmt(s['median_ms']):>7} "
                f"{fmt(s['p95_ms']):>7} {fmt(s['max_ms']):>7} {fmt(paced):>9} "
                f"{cell['impaired_packets']['loss_pct']:>6g} {cell['cpu_pct']:>5g} {cell['machine_cpu_pct']:>5g} "
                f"{fmt(cell['loop_lag_max_ms']):>7}"
            )
    print("* recovery rows: the clicks sent while the link was impaired")
    print(
        "cpu%: the benchmark process (both peers and the relay), % of one CPU; mach%: all processes on the machine,"
        " % of one CPU; lag max: the worst late wake-up of a 20 ms sleeper on the event loop, ms"
    )
    print(
        "stages (ours, median ms): read -> decoded frame pushed to the playout buffer / held in the"
        " playout buffer / onset offset in the decoded frame (codec delay)"
    )
    for cond_name, by_variant in result["cells"].items():
        st = by_variant.get("ours", {}).get("stages")
        if st and "in_playout_buffer_ms" in st:
            print(
                f"  {cond_name:<15} {fmt(st['read_to_playout_push_ms']['median'])} / "
                f"{fmt(st['in_playout_buffer_ms']['median'])} (p95 {fmt(st['in_playout_buffer_ms']['p95'])}) / "
                f"{fmt(st['onset_in_decoded_frame_ms'])}"
            )
    for cond_name, by_variant in result["cells"].items():
        for variant, cell in by_variant.items():
            for lost in cell["runs_media_lost"]:
                print(
                    f"! {cond_name} / {variant} (seed {lost['seed']}): the call lost its media path "
                    f"({'; '.join(lost['events'] + lost['warnings'])}); {lost['clicks_heard']} of "
                    f"{lost['clicks_sent']} clicks heard; "
                    f"left out of the figures above"
                )
    print()
    print("Playout buffer (ours; both receiving peers, summed over the runs above):")
    for cond_name, by_variant in result["cells"].items():
        if "ours" in by_variant:
            st = by_variant["ours"]["playout_stats"]
            print(f"  {cond_name:<15} " + "  ".join(f"{k} {v}" for k, v in st.items()))
    if a.get("speaker"):
        print()
        print(
            "Through callctl's SpeakerSink (--speaker): click onset when PortAudio's callback takes the frame "
            "(ms; recovery rows: whole window)"
        )
        print(
            f"  {'condition':<15} {'path':<6} {'median':>7} {'p95':>7} {'max':>7}   {'queue adds med/p95/max':>24}"
            f" {'underflows':>10} {'overflows':>9}"
        )
        for cond_name, by_variant in result["cells"].items():
            for variant, cell in by_variant.items():
                sp, add, cnt = cell["speaker"], cell["speaker_added"], cell["speaker_counters"]
                print(
                    f"  {cond_name:<15} {variant:<6} {fmt(sp['median_ms']):>7} {fmt(sp['p95_ms']):>7} "
                    f"{fmt(sp['max_ms']):>7}   {fmt(add['median_ms']) + ' / ' + fmt(add['p95_ms']) + ' / ' + fmt(add['max_ms']):>24}"
                    f" {cnt.get('underflows', 0):>10g} {cnt.get('overflows', 0):>9g}"
                )
    for cond_name, by_variant in result["cells"].items():
        if not CONDITIONS[cond_name].recovery:
            continue
        c = CONDITIONS[cond_name]
        print()
        print(
            f"{cond_name}: {c.loss * 100:g} % loss + {c.delay_s * 1000:g} ms + 0-{c.jitter_s * 1000:g} ms jitter "
            f"for {a['impair_s']:g} s, then clean. Delay by second after the impairment stopped "
            f"(median / max ms, clicks lost):"
        )
        variants = list(by_variant)
        print(f"  {'second':>9}  " + "  ".join(f"{v:>22}" for v in variants))
        seconds = sorted(
            {row["from_s"] for v in variants for row in by_variant[v]["per_second_after_off"]}
        )
        for s in seconds:
            cols = []
            for v in variants:
                row = next(
                    (r for r in by_variant[v]["per_second_after_off"] if r["from_s"] == s), None
                )
                cols.append(
                    "-"
                    if row is None
                    else f"{fmt(row['median_ms'])} / {fmt(row['max_ms'])}  lost {row['lost']}"
                )
            print(f"  {s:>+4}..{s + 1:<+3}  " + "  ".join(f"{col:>22}" for col in cols))
        for v in variants:
            cell = by_variant[v]
            print(
                f"  {v}: 1 s running median back to <= {SETTLE_MS:g} ms for good after "
                + ", ".join("never" if x is None else f"{x:g} s" for x in cell["settle_s_per_run"])
                + "; every click after "
                + ", ".join(
                    "never" if x is None else f"{x:g} s" for x in cell["settle_strict_s_per_run"]
                )
                + f"; before the impairment median {fmt(cell['before']['median_ms'])} ms, "
                f"after it p95 {fmt(cell['after']['p95_ms'])} ms"
            )
    print()
    print("Targets:")
    for row in result["targets"]:
        value = (
            fmt(row["value"]) + (" s" if "within" in row["target"] else " ms")
            if row["value"] is not None
            else "never"
        )
        print(
            f"  {row['condition']:<15} {row['variant']:<6} {row['target']:<24} {value:>10}  {row['result']}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench-latency",
        description="Mouth-to-ear delay with clicks: our playout path vs aiortc's stock "
        "path, on a clean, a lossy and a recovering loopback link.",
    )
    p.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated subset of {','.join(CONDITIONS)} (default: all)",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="ours,stock (default: both)")
    p.add_argument(
        "--runs", type=int, default=1, help="runs per condition and variant, pooled (default 1)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="measured seconds, clean and lossy (default 20)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds after connecting before measuring (default 2)",
    )
    p.add_argument(
        "--before-s",
        type=float,
        default=2.0,
        help="recovery: clean seconds measured before (default 2)",
    )
    p.add_argument(
        "--impair-s", type=float, default=10.0, help="recovery: impaired seconds (default 10)"
    )
    p.add_argument(
        "--after-s", type=float, default=15.0, help="recovery: clean seconds after (default 15)"
    )
    p.add_argument(
        "--every", type=int, default=10, help="a click every N 20 ms frames (default 10)"
    )
    p.add_argument("--drain", type=float, default=1.5, help=argparse.SUPPRESS)
    p.add_argument(
        "--seed", type=int, default=7, help="relay loss/jitter seed of the first run (default 7)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="hard limit for the whole run, s (default 1200)",
    )
    p.add_argument(
        "--speaker",
        action="store_true",
        help="also play into callctl's SpeakerSink (PortAudio, an ALSA PCM that discards) and "
        "time each click when PortAudio's callback takes its frame",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON summary instead of the tables"
    )
    p.add_argument(
        "--keep-raw", action="store_true", help="with --json: include every click of every run"
    )
    p.add_argument("--worker-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--worker-condition", choices=list(CONDITIONS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.every < 4 or args.runs < 1:
        p.error("--every must be >= 4 and --runs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker_variant:
        return worker_main(args)
    conditions = [c for c in args.conditions.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    bad = [c for c in conditions if c not in CONDITIONS] + [
        v for v in variants if v not in VARIANTS
    ]
    if bad:
        log(f"unknown condition/variant: {', '.join(bad)}")
        return CANNOT_RUN
    stop_on_signals()
    deadline = time.monotonic() + args.timeout
    home: Path | None = None
    if args.speaker:
        home = Path(tempfile.mkdtemp(prefix="callctl-bench-latency-"))
        (home / ".asoundrc").write_text(ASOUNDRC)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c: {v: [] for v in variants} for c in conditions
    }
    try:
        for cond in conditions:
            for i in range(args.runs):
                for variant in variants:  # interleaved: the same background load hits both
                    log(f"{cond} / {variant} / run {i + 1} of {args.runs}")
                    runs[cond][variant].append(
                        run_worker(variant, cond, args.seed + i, args, deadline, home)
                    )
    except KeyboardInterrupt:
        log("interrupted")
        return INTERRUPTED
    except Exception as exc:
        log(f"cannot run: {exc}")
        return CANNOT_RUN
    finally:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
    cells = {c: {v: aggregate(c, v, runs[c][v], args) for v in variants} for c in conditions}
    result = {
        "args": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
        "machine": machine.describe(ROOT, ("aiortc", "aioice", "av", "numpy")),
        "cells": cells,
        "targets": verdicts(cells),
    }
    if args.json:
        print(json.dumps(result, sort_keys=True), flush=True)
    else:
        print_report(result)
    missed = any(r["result"] == "MISS" for r in result["targets"] if r["variant"] == "ours")
    return MISSED if missed else MET


if __name__ == "__main__":
    sys.exit(main())

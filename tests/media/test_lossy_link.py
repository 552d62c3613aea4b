"""A call through a lossy, jittery link still yields the tone at the far sink.

Two real aiortc peer connections (our PeerConnection), real Opus, real RTP, a UDP
relay on loopback that drops 5 % of the packets and delays them by 0-20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import numpy as np

from callctl.harness.looplag import LoopLag
from callctl.harness.relay import Impairment, LossyLink
from callctl.media.audio import FileSink, NullSink, ToneSource
from callctl.media.peer import MediaCallbacks, PeerConnection
from callctl.media.voice import FEC_RECOVERED
from tests.audio import read_mono, tone_fraction


async def connected_pair(link: LossyLink, a_source, a_sinks, b_source, b_sinks):  # type: ignore[no-untyped-def]
    up = {"a": asyncio.Event(), "b": asyncio.Event()}

    def peer(side: str, source, sinks) -> PeerConnection:  # type: ignore[no-untyped-def]
        return PeerConnection([], source, sinks, MediaCallbacks(on_up=up[side].set, on_lost=lambda why: None))

    a, b = peer("a", a_source, a_sinks), peer("b", b_source, b_sinks)
    await link.negotiate(a, b)
    await asyncio.wait_for(asyncio.gather(up["a"].wait(), up["b"].wait()), 10)
    a.start()
    b.start()
    return a, b


async def test_tone_survives_5_percent_loss_and_20_ms_jitter(tmp_path: Path) -> None:
    rec = tmp_path / "far.wav"
    lossy = Impairment(loss=0.05, delay_s=0.005, jitter_s=0.02)
    link = await LossyLink(to_a=lossy, to_b=Impairment(loss=0.05, jitter_s=0.02)).start()
    a, b = await connected_pair(link, ToneSource(440), [NullSink()], ToneSource(660), [])
    a.sinks.append(FileSink(rec))  # a records what b sends through the lossy direction
    recovered_before = FEC_RECOVERED[0]
    # both peers share this event loop: a stall of it (a busy machine) is a gap the link did not
    # make, so the gap allowed below grows by the worst stall seen
    lag = LoopLag(0.01)
    watching = asyncio.ensure_future(lag.run())
    try:
        seconds = 6.0
        await asyncio.sleep(seconds)  # the call's length: this is the thing being measured
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await a.close()
        await b.close()
        link.close()
    forwarded, dropped = lossy.counts
    assert 0.02 < dropped / (forwarded + dropped) < 0.09  # the link really lost packets

    duration, fraction = tone_fraction(rec, 660)
    assert duration > seconds - 1.0
    assert fraction > 0.85, fraction  # the tone is there nearly all the time
    stats = a.playout.stats
    # losses happened and were rebuilt from FEC (media/voice.py) or concealed...
    assert stats.concealed + FEC_RECOVERED[0] - recovered_before > 0
    assert stats.concealed < 0.12 * stats.played  # ...and stayed bounded
    # gaps are short: no run of silence longer than 60 ms once audio started
    samples, rate = read_mono(rec)
    start = int(np.argmax(np.abs(samples) > 1000))
    quiet = np.abs(samples[start:]) < 200
    longest, run = 0, 0
    for q in quiet[:: rate // 1000]:  # 1 ms steps
        run = run + 1 if q else 0
        longest = max(longest, run)
    stall = max(lag.lags_ms, default=0.0)
    assert longest <= 60 + stall, (longest, stall)

"""Call statistics (``media.stats``) measured over a real lossy, delayed link.

Two real aiortc peer connections through the UDP relay on loopback: one direction loses
10 % of its datagrams, both are delayed 30 ms.  The figures each side reports are checked
against what the relay did.
"""

from __future__ import annotations

import asyncio

import pytest

from callctl.harness.relay import Impairment, LossyLink
from callctl.media.audio import NullSink, ToneSource
from callctl.media.stats import mos
from tests.media.test_lossy_link import connected_pair


@pytest.mark.alone  # the round trip includes both peers' event loop, which a busy machine slows
async def test_loss_rtt_and_mos_match_what_the_link_did() -> None:
    lossy = Impairment(loss=0.10, delay_s=0.030)
    clean = Impairment(delay_s=0.030)
    link = await LossyLink(to_a=lossy, to_b=clean).start()
    a, b = await connected_pair(link, ToneSource(440), [NullSink()], ToneSource(660), [NullSink()])
    try:
        await asyncio.gather(a.call_stats.sample(), b.call_stats.sample())
        await asyncio.sleep(2.0)  # the call's length: this is the thing being measured
        await asyncio.gather(a.call_stats.sample(), b.call_stats.sample())
        await asyncio.sleep(5.0)
        at_a, at_b = await asyncio.gather(a.call_stats.sample(), b.call_stats.sample())
        forwarded, dropped = lossy.rtp_counts
    finally:
        await a.close()
        await b.close()
        link.close()
    # what a did not get, as a counted it over the call, is the RTP the relay dropped towards
    # a (within 1 point: packets still on their way at the end are the difference)
    relay_loss = 100 * dropped / (forwarded + dropped)
    assert 5 < relay_loss < 15, relay_loss
    total = a.call_stats.summary()
    assert abs(total["loss_in_pct"] - relay_loss) <= 1.0, (total, relay_loss)
    assert total["packets_received"] > 200 and abs(total["packets_lost"] - dropped) <= 3
    assert 4 < at_a["loss_in_pct"] < 16, at_a  # the last interval's own figure
    assert at_b["loss_in_pct"] == 0 and b.call_stats.summary()["packets_lost"] == 0, at_b
    # b hears of its loss towards a from a's receiver reports
    assert at_b["loss_out_pct"] > 3, at_b
    # the round trip is the relay's 2 x 30 ms, seen from both ends, plus what the two event
    # loops add (~4 ms on a quiet machine: scripts/bench-audio; up to ~20 under load), never less
    for side in (at_a, at_b):
        assert 59 <= side["rtt_ms"] <= 85, side
    # Opus at ~32 kbit/s each way, as sent and as the other end's reports say it came
    # (kbps_in takes two of the peer's sender reports: towards a, one may be lost on the link)
    for side in (at_a, at_b):
        assert 20 < side["kbps_out"] < 60 and 20 < side.get("kbps_in", 30) < 60, side
    assert "kbps_in" in at_b, at_b
    assert at_a["mos"] < at_b["mos"] - 0.5, (at_a["mos"], at_b["mos"])
    # most lost frames came back from the next packet's FEC; the rest were concealed
    assert at_a["frames_recovered"] > 0 and at_a["concealed_pct"] < at_a["loss_in_pct"], at_a


def test_the_mos_falls_as_loss_and_delay_rise() -> None:
    assert 4.3 <= mos(40, 0) <= 4.5  # a clean call: the E-model's best for narrow R
    by_loss = [mos(60, loss) for loss in (0, 1, 3, 5, 10, 20)]
    assert by_loss == sorted(by_loss, reverse=True) and len(set(by_loss)) == len(by_loss)
    assert mos(60, 20) < 2.5
    by_delay = [mos(d, 1) for d in (20, 150, 250, 400)]
    assert by_delay == sorted(by_delay, reverse=True) and by_delay[-1] < by_delay[0] - 0.5

"""A lost audio packet is rebuilt from the next one's in-band FEC, not concealed.

Two real peer connections (Opus with in-band FEC, DTLS-SRTP) through the
loopback relay, which drops RTP packets towards one side.  Each single loss is
followed by a packet that carries a copy of the lost frame: the receiving
decoder (media/voice.py) decodes it in the lost frame's place.  Counted at the
relay (what was dropped), at the decoder (what was rebuilt) and at the playout
(what still had to be concealed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from callctl.harness.relay import Impairment, LossyLink
from callctl.media.adjust import audio_encoder
from callctl.media.audio import FileSink, SilenceSource, ToneSource
from callctl.media.peer import PeerConnection
from callctl.media.voice import FEC_RECOVERED, fec_decode_problem
from tests.audio import tone_fraction
from tests.media.test_lossy_link import connected_pair

if fec_decode_problem() is not None:
    pytest.skip(f"no FEC decoding here: {fec_decode_problem()}", allow_module_level=True)


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.05)


def planned(peer: PeerConnection) -> int:
    """The loss (%) the peer's Opus encoder plans FEC for; -1 before it has encoded a frame."""
    encoder = audio_encoder(peer.pc)
    return -1 if encoder is None else int(encoder.plan.pct)


async def reports(peer: PeerConnection, n: int) -> None:
    """Until ``n`` more RTCP reports about what ``peer`` sends have come from the far end."""
    async def stamp() -> object:
        stats = await peer.pc.getStats()
        return next((s.timestamp for s in stats.values() if s.type == "remote-inbound-rtp"
                     and s.kind == "audio"), None)

    seen, last = 0, await stamp()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0 * n
    while seen < n:
        assert loop.time() < deadline, f"{n} RTCP reports not within {5 * n} s"
        await asyncio.sleep(0.05)
        now = await stamp()
        if now is not None and now != last:
            seen, last = seen + 1, now


async def test_fec_is_planned_for_the_loss_the_peer_reports() -> None:
    """No FEC on a clean link (it more than doubles the encoder's work); planned at the first
    reports of a loss; back to none once the loss has stopped (docs/AUDIO.md)."""
    lossy = Impairment()
    link = await LossyLink(to_a=lossy).start()
    a, b = await connected_pair(link, SilenceSource(), [], ToneSource(660), [])
    try:
        await reports(b, 3)
        assert planned(b) == 0, "FEC planned on a clean link"
        stats = await b.call_stats.sample()
        assert stats["fec_planned_pct"] == 0, stats
        lossy.loss = 0.08
        await until(lambda: planned(b) >= 5, "FEC planned once a reports losses", timeout=15)
        assert planned(a) == 0  # the other direction loses nothing
        stats = await b.call_stats.sample()
        assert stats["fec_planned_pct"] >= 5, stats
        high, lost = planned(b), lossy.rtp_counts[1]
        assert lost > 0
        lossy.loss = 0.0
        await reports(b, 2)  # the reports of the clean link that follow...
        assert planned(b) >= high, "a report or two of no loss brought the plan down"
        await until(lambda: planned(b) == 0, "the plan back to no FEC once the loss stopped", timeout=40)
    finally:
        await a.close()
        await b.close()
        link.close()


@pytest.mark.parametrize("burst", [1, 2])
async def test_a_lost_packet_is_rebuilt_from_the_next_ones_fec(tmp_path: Path, burst: int) -> None:
    rec = tmp_path / "far.wav"
    lossy = Impairment(loss=0.05, burst=burst)
    link = await LossyLink(to_a=lossy).start()
    a, b = await connected_pair(link, SilenceSource(), [FileSink(rec)], ToneSource(660), [])
    try:
        await a.call_stats.sample()  # the call's figures count from here
        # b plans FEC once a's reports say that packets are lost (voice.LossPlan): count from then
        await until(lambda: planned(b) >= 5, "b's encoder planning FEC for the loss a reports")
        dropped0, runs0 = lossy.rtp_counts[1], lossy.rtp_runs
        before, concealed0 = FEC_RECOVERED[0], a.playout.stats.concealed
        await until(lambda: lossy.rtp_counts[1] >= dropped0 + 16, "16 RTP packets dropped on the way to a")
        played = a.playout.stats.played
        await until(lambda: a.playout.stats.played >= played + 10, "the frames after the last loss")
        stats = await a.call_stats.sample()
    finally:
        await a.close()
        await b.close()
        link.close()
    dropped = lossy.rtp_counts[1] - dropped0
    recovered = FEC_RECOVERED[0] - before
    concealed = a.playout.stats.concealed - concealed0
    # each run of losses ends at a packet that carries the last one's copy (runs that touch
    # each other are one run: the relay counts them as they happened)
    runs = lossy.rtp_runs - runs0
    assert recovered >= 0.8 * runs, (dropped, recovered, concealed)
    # what FEC rebuilt was played, not concealed: only the earlier frames of a run are
    assert concealed <= dropped - 0.8 * runs, (dropped, recovered, concealed)
    # the call's figures say so too (media.stats, status, call.ended)
    assert stats["frames_recovered"] >= 0.8 * runs, stats
    # the tone plays on, from when the call is surely up; a 100 ms window holding a rebuilt or
    # concealed frame has its peak a 10 Hz bin off 660 (the splice), not gone
    _, fraction = tone_fraction(rec, 660, tolerance=15, start_s=1.0)
    assert fraction > 0.85, fraction  # as over the lossy link without FEC (test_lossy_link.py)

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
from callctl.media.audio import FileSink, SilenceSource, ToneSource
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


@pytest.mark.parametrize("burst", [1, 2])
async def test_a_lost_packet_is_rebuilt_from_the_next_ones_fec(tmp_path: Path, burst: int) -> None:
    rec = tmp_path / "far.wav"
    lossy = Impairment(loss=0.05, burst=burst)
    link = await LossyLink(to_a=lossy).start()
    before = FEC_RECOVERED[0]
    a, b = await connected_pair(link, SilenceSource(), [FileSink(rec)], ToneSource(660), [])
    try:
        await a.call_stats.sample()  # the call's figures count from here
        await until(lambda: lossy.rtp_counts[1] >= 16, "16 RTP packets dropped on the way to a")
        played = a.playout.stats.played
        await until(lambda: a.playout.stats.played >= played + 10, "the frames after the last loss")
        stats = await a.call_stats.sample()
    finally:
        await a.close()
        await b.close()
        link.close()
    dropped = lossy.rtp_counts[1]
    recovered = FEC_RECOVERED[0] - before
    concealed = a.playout.stats.concealed
    # each run of losses ends at a packet that carries the last one's copy (runs that touch
    # each other are one run: the relay counts them as they happened)
    runs = lossy.rtp_runs
    assert recovered >= 0.8 * runs, (dropped, recovered, concealed)
    # what FEC rebuilt was played, not concealed: only the earlier frames of a run are
    assert concealed <= dropped - 0.8 * runs, (dropped, recovered, concealed)
    # the call's figures say so too (media.stats, status, call.ended)
    assert stats["frames_recovered"] >= 0.8 * runs, stats
    # the tone plays on, from when the call is surely up; a 100 ms window holding a rebuilt or
    # concealed frame has its peak a 10 Hz bin off 660 (the splice), not gone
    _, fraction = tone_fraction(rec, 660, tolerance=15, start_s=1.0)
    assert fraction > 0.85, fraction  # as over the lossy link without FEC (test_lossy_link.py)

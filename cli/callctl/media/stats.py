"""A call's link statistics, read from aiortc's getStats() report."""

from __future__ import annotations

import contextlib
from typing import Any

from callctl.media.audio import RATE


async def link_stats(pc: Any) -> dict[str, float]:
    """RTT, loss and jitter of the audio stream as the peer reports them, when known."""
    out: dict[str, float] = {}
    with contextlib.suppress(Exception):  # stats of a closing connection: just none
        report = await pc.getStats()
        for s in report.values():
            if s.type == "remote-inbound-rtp" and s.kind == "audio":
                if getattr(s, "roundTripTime", None) is not None:
                    out["rtt_ms"] = round(s.roundTripTime * 1000, 1)
                out["loss_pct"] = round(100 * (s.fractionLost or 0) / 256, 1)
            if s.type == "inbound-rtp" and s.kind == "audio":
                out["jitter_ms"] = round((s.jitter or 0) / RATE * 1000, 1)
                out["packets_lost"] = s.packetsLost or 0
    return out

"""A call's statistics: link figures from aiortc's getStats(), playout figures, an estimated MOS.

``CallStats.sample()`` is called every few seconds; rates and loss are over
the interval since the previous sample, totals since the call connected.

Directions: ``in`` is what we receive (our count of the peer's packets that
never came), ``out`` what we send (the peer's RTCP receiver reports: its
loss of our packets, and the round trip our sender reports measure).

The MOS is ITU-T G.107's E-model, simplified as G.107 allows for one codec
with packet-loss concealment: R = 93.2 - Id - Ie,eff, from the one-way mouth
to ear delay (half the RTT, the packet's 20 ms, the playout buffer) and the
loss we hear.  Opus has no Ie/Bpl in G.113; we take Ie = 0 and Bpl = 20
(Opus's concealment at 20 ms frames, between G.711+PLC's 25.1 and iLBC's
~32, without its FEC), and random loss (BurstR = 1).  It is an estimate of
the conversation's quality from the network's figures, not a listening test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from callctl.media.adjust import audio_encoder
from callctl.media.audio import RATE
from callctl.media.voice import FEC_RECOVERED

#: Opus at 20 ms frames (see the module's docstring).
OPUS_IE = 0.0
OPUS_BPL = 20.0
FRAME_MS = 20.0


def mos(one_way_ms: float, loss_pct: float) -> float:
    """ITU-T G.107 E-model MOS (1.0 .. 4.5) from the one-way delay and the random loss."""
    d = max(0.0, one_way_ms)
    idd = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ppl = max(0.0, min(100.0, loss_pct))
    ie_eff = OPUS_IE + (95.0 - OPUS_IE) * ppl / (ppl + OPUS_BPL)
    r = max(0.0, min(100.0, 93.2 - idd - ie_eff))
    return round(1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6, 2)


@dataclass
class _Totals:
    at: float
    sent_packets: int = 0
    sent_bytes: int = 0
    received: int = 0
    lost: int = 0
    peer_sent_bytes: int | None = None
    #: What the peer's latest receiver report says of our packets (cumulative).
    peer_received: int = 0
    peer_lost: int = 0
    played: int = 0
    concealed: int = 0
    #: Frames rebuilt from the next packet's FEC (media/voice.py's decoder).
    recovered: int = 0


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole > 0 else 0.0


_COUNTS = ("sent_packets", "received", "lost", "played", "concealed", "peer_received",
           "peer_lost", "recovered")


class CallStats:
    """The figures of one call's audio, sampled from its peer (``pc`` and ``playout``).

    A reconnect gives the call a new peer connection and playout, whose counters start at
    zero: what the old ones counted is carried into the call's totals."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        self._pc: Any = None
        self._first: _Totals | None = None
        self._last: _Totals | None = None
        self._carry = dict.fromkeys(_COUNTS, 0)
        #: The latest sample (``status``, the live view, the call's summary).
        self.latest: dict[str, float] = {}

    async def _totals(self) -> tuple[_Totals, dict[str, float]]:
        now = time.monotonic()
        totals, extra = _Totals(now), {}
        pc, playout = self.peer.pc, getattr(self.peer, "playout", None)
        if pc is not self._pc:
            if self._first is not None and self._last is not None:
                for name in _COUNTS:
                    self._carry[name] += getattr(self._last, name) - getattr(self._first, name)
            self._pc, self._first, self._last = pc, None, None
        report = await pc.getStats()
        for s in report.values():
            if getattr(s, "kind", None) != "audio":
                continue
            if s.type == "outbound-rtp":
                totals.sent_packets, totals.sent_bytes = s.packetsSent, s.bytesSent
            elif s.type == "inbound-rtp":
                totals.received, totals.lost = s.packetsReceived, max(0, s.packetsLost or 0)
                extra["jitter_ms"] = round((s.jitter or 0) / RATE * 1000, 1)
            elif s.type == "remote-inbound-rtp":
                if getattr(s, "roundTripTime", None) is not None:
                    extra["rtt_ms"] = round(s.roundTripTime * 1000, 1)
                extra["loss_out_pct"] = round(100 * (s.fractionLost or 0) / 256, 1)
                totals.peer_received = max(0, s.packetsReceived or 0)
                totals.peer_lost = max(0, s.packetsLost or 0)
            elif s.type == "remote-outbound-rtp":
                totals.peer_sent_bytes = s.bytesSent
        totals.recovered = FEC_RECOVERED[0]
        plan = getattr(audio_encoder(pc), "plan", None)
        if plan is not None:
            extra["fec_planned_pct"] = plan.pct
        if playout is not None:
            totals.played = playout.stats.played
            totals.concealed = playout.stats.concealed
            extra["playout_ms"] = round(playout.target_delay * 1000, 1)
        return totals, extra

    async def sample(self) -> dict[str, float]:
        """Take a sample: the figures since the last one (and totals); {} if there are none."""
        try:
            now, extra = await self._totals()
        except Exception:  # a closing connection has no stats: just none
            return {}
        # totals count from zero (a peer connection's counters start there); rates from the
        # previous sample
        last, first = self._last or now, self._first or _Totals(now.at)
        self._first, self._last = first, now
        dt = now.at - last.at
        out: dict[str, float] = {}
        if "rtt_ms" in extra:
            out["rtt_ms"] = extra["rtt_ms"]
        got, lost = now.received - last.received, now.lost - last.lost
        out["loss_in_pct"] = _pct(lost, got + lost)
        peer_got, peer_lost = now.peer_received - last.peer_received, now.peer_lost - last.peer_lost
        if peer_got + peer_lost > 0:  # the peer's reports over the interval
            out["loss_out_pct"] = _pct(peer_lost, peer_got + peer_lost)
        elif "loss_out_pct" in extra:  # one report so far: its own fraction
            out["loss_out_pct"] = extra["loss_out_pct"]
        if "jitter_ms" in extra:
            out["jitter_ms"] = extra["jitter_ms"]
        if dt > 0:
            out["kbps_out"] = round((now.sent_bytes - last.sent_bytes) * 8 / dt / 1000, 1)
            if now.peer_sent_bytes is not None and last.peer_sent_bytes is not None:
                out["kbps_in"] = round((now.peer_sent_bytes - last.peer_sent_bytes) * 8 / dt / 1000, 1)
        if "playout_ms" in extra:
            out["playout_ms"] = extra["playout_ms"]
        if "fec_planned_pct" in extra:
            out["fec_planned_pct"] = extra["fec_planned_pct"]
        concealed = now.concealed - last.concealed
        out["concealed_pct"] = _pct(concealed, now.played - last.played + concealed)
        # totals since the call connected
        total = self._total(first, now)
        out["packets_received"] = total["received"]
        out["packets_lost"] = total["lost"]
        out["packets_sent"] = total["sent_packets"]
        out["frames_recovered"] = total["recovered"]
        one_way = out.get("rtt_ms", 0.0) / 2 + FRAME_MS + out.get("playout_ms", 0.0)
        out["mos"] = mos(one_way, out["loss_in_pct"])
        self.latest = out
        return out

    def _total(self, first: _Totals, last: _Totals) -> dict[str, int]:
        return {name: self._carry[name] + getattr(last, name) - getattr(first, name)
                for name in _COUNTS}

    def summary(self) -> dict[str, float]:
        """The whole call: totals, loss over all of it, and the last RTT/jitter/MOS seen."""
        if self._first is None or self._last is None:
            return {}
        t = self._total(self._first, self._last)
        out: dict[str, float] = {
            "packets_sent": t["sent_packets"], "packets_received": t["received"],
            "packets_lost": t["lost"], "loss_in_pct": _pct(t["lost"], t["received"] + t["lost"]),
            "loss_out_pct": _pct(t["peer_lost"], t["peer_received"] + t["peer_lost"]),
            "concealed_pct": _pct(t["concealed"], t["played"] + t["concealed"]),
            "frames_recovered": t["recovered"]}
        for key in ("rtt_ms", "jitter_ms", "mos"):
            if key in self.latest:
                out[key] = self.latest[key]
        return out


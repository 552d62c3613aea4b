"""A lossy link on loopback: a UDP relay between two real peer connections.

Each side's SDP is rewritten (``negotiate``, or the caller's own signaling
with ``rewrite``) so that its one host candidate points at the relay; the
relay forwards every datagram to the real address after a random delay, or
drops it.  Nothing leaves 127.0.0.1 and this machine's own addresses.
"""

from __future__ import annotations

from typing import Any, cast

import asyncio
import random
import re
from dataclasses import dataclass, field
from typing import Protocol

CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d) udp (\d+) (\d+\.\d+\.\d+\.\d+) (\d+) typ host(.*)$")


class Negotiator(Protocol):
    """One side of an offer/answer exchange (callctl's AudioPeer is one)."""

    async def create_offer(self) -> str: ...

    async def create_answer(self, offer_sdp: str) -> str: ...

    async def apply_answer(self, sdp: str) -> None: ...


@dataclass
class Impairment:
    """What the relay does to one direction; ``counts`` is what it did."""

    loss: float = 0.0
    #: Losses come in runs of this many RTP packets (the same loss rate over all): 2 is the
    #: "bursts of 2" a Wi-Fi retry storm gives.  A run only counts RTP; other packets pass.
    burst: int = 1
    delay_s: float = 0.0
    jitter_s: float = 0.0
    #: (packets forwarded, dropped)
    counts: list[int] = field(default_factory=lambda: [0, 0])
    #: ... of them RTP media packets (not RTCP, STUN or DTLS): what a receiver can count
    rtp_counts: list[int] = field(default_factory=lambda: [0, 0])
    #: Runs of RTP losses (packets dropped one after another count as one run)
    rtp_runs: int = 0
    #: RTP packets still to drop in the current run
    _run_left: int = 0
    _last_rtp_dropped: bool = False


def is_rtp(data: bytes) -> bool:
    """An RTP packet (RFC 5761: version 2, and not an RTCP payload type 200-207)."""
    return len(data) >= 12 and data[0] & 0xC0 == 0x80 and not 72 <= data[1] & 0x7F <= 79


class _Face(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.on_datagram = lambda data, addr: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_datagram(data, addr)


class LossyLink:
    """``a`` and ``b`` are the two peers; ``to_a`` / ``to_b`` impair each direction."""

    def __init__(self, to_a: Impairment | None = None, to_b: Impairment | None = None, seed: int = 7) -> None:
        self.to_a = to_a or Impairment()
        self.to_b = to_b or Impairment()
        self.rng = random.Random(seed)
        self.real: dict[str, tuple[str, int]] = {}
        self.faces: dict[str, _Face] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self) -> LossyLink:
        loop = asyncio.get_running_loop()
        for side in ("a", "b"):  # faces["a"] is what a talks to (it stands for b)
            _, face = await loop.create_datagram_endpoint(_Face, local_addr=("127.0.0.1", 0))
            self.faces[side] = face
        self.faces["a"].on_datagram = lambda data, addr: self._forward(data, "b")
        self.faces["b"].on_datagram = lambda data, addr: self._forward(data, "a")
        return self

    def _forward(self, data: bytes, to: str) -> None:
        imp = self.to_a if to == "a" else self.to_b
        if to not in self.real:
            return
        rtp = is_rtp(data)
        if rtp and imp._run_left > 0:
            imp._run_left -= 1
            drop = True
        else:
            drop = self.rng.random() < imp.loss / max(1, imp.burst if rtp else 1)
            if drop and rtp:
                imp._run_left = imp.burst - 1
        if rtp:
            if drop and not imp._last_rtp_dropped:
                imp.rtp_runs += 1
            imp._last_rtp_dropped = drop
        if drop:
            imp.counts[1] += 1
            imp.rtp_counts[1] += rtp
            return
        imp.counts[0] += 1
        imp.rtp_counts[0] += rtp
        face = self.faces[to]  # a hears from its own face (standing for b), and vice versa
        delay = imp.delay_s + self.rng.uniform(0, imp.jitter_s)
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._send, face, data, self.real[to])
        self._timers.add(handle)

    def _send(self, face: _Face, data: bytes, addr: tuple[str, int]) -> None:
        if face.transport is not None:
            face.transport.sendto(data, addr)

    def rewrite(self, sdp: str, side: str) -> str:
        """``side``'s SDP as the other side must see it: one candidate, at the relay."""
        other = "b" if side == "a" else "a"
        transport = self.faces[other].transport
        assert transport is not None, "the relay is not started"
        relay_port = transport.get_extra_info("sockname")[1]
        out, kept = [], False
        for line in sdp.splitlines():
            m = CANDIDATE.match(line)
            if m:
                if kept:
                    continue
                kept = True
                self.real[side] = (m.group(4), int(m.group(5)))
                line = (f"a=candidate:{m.group(1)} {m.group(2)} udp {m.group(3)} 127.0.0.1 "
                        f"{relay_port} typ host{m.group(6)}")
            elif line.startswith("c=IN IP4 "):
                line = "c=IN IP4 127.0.0.1"
            elif line.startswith("m=audio "):
                parts = line.split(" ")
                parts[1] = str(relay_port)
                line = " ".join(parts)
            elif line.startswith("a=candidate:"):
                continue  # IPv6 / other candidates: only the relayed one
            out.append(line)
        assert kept, "no IPv4 host candidate to relay"
        return "\r\n".join(out) + "\r\n"

    async def negotiate(self, a: Negotiator, b: Negotiator) -> None:
        """``a`` offers, ``b`` answers; each sees the other's SDP pointing at the relay."""
        offer = await a.create_offer()
        answer = await b.create_answer(self.rewrite(offer, "a"))
        await a.apply_answer(self.rewrite(answer, "b"))

    def close(self) -> None:
        for h in self._timers:
            h.cancel()
        for face in self.faces.values():
            if face.transport is not None:
                face.transport.close()

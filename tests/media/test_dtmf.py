"""DTMF as RFC 4733 telephone-events on the audio stream, both ways.

Two real aiortc peer connections (our PeerConnection) on loopback with tone
sources, real Opus and RTP; the sender and receiver state machines with
hand-built RFC 4733 packets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from callctl.media import adjust, dtmf, peer
from callctl.media.audio import FRAME, RATE, AudioSink, ToneSource
from callctl.media.dtmf import ToneReceiver, ToneSender, check_timing, check_tones
from callctl.media.errors import MediaError
from callctl.media.peer import MediaCallbacks, PeerConnection
from tests.audio import dominant_hz

DIGITS = "1234567890*#ABCD"


class ToneSink(AudioSink):
    """Keeps the last second of what the call played, and when each loud frame came."""

    name = "tone-sink"

    def __init__(self) -> None:
        self.frames = 0
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=50)
        self.loud_at: list[float] = []

    def write(self, pcm: np.ndarray) -> None:
        self.frames += 1
        self.recent.append(pcm.copy())
        if np.abs(pcm).max() > 3000:
            self.loud_at.append(time.monotonic())

    def loud_since(self, t: float) -> int:
        return sum(1 for at in self.loud_at if at >= t)

    def hz(self) -> float:
        return dominant_hz(np.concatenate(list(self.recent)[-25:]), RATE)


@dataclass
class Side:
    pc: PeerConnection
    sink: ToneSink
    hz: float
    digits: list[tuple[str, float]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    ups: int = 0

    @property
    def heard(self) -> str:
        return "".join(d for d, _ in self.digits)


Edit = Callable[[str], str]


def _side(hz: float) -> Side:
    sink = ToneSink()
    side = Side(None, sink, hz)  # type: ignore[arg-type]

    def up() -> None:
        side.ups += 1

    side.pc = PeerConnection([], ToneSource(hz), [sink], MediaCallbacks(on_up=up, on_lost=side.lost.append))
    side.pc.on_dtmf = lambda d: side.digits.append((d, time.monotonic()))
    return side


async def until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.02)


async def negotiate(a: Side, b: Side, offer_edit: Edit | None = None,
                    answer_edit: Edit | None = None) -> None:
    ups = a.ups, b.ups
    offer = await a.pc.create_offer()
    answer = await b.pc.create_answer(offer_edit(offer) if offer_edit else offer)
    await a.pc.apply_answer(answer_edit(answer) if answer_edit else answer)
    await until(lambda: a.ups > ups[0] and b.ups > ups[1], what="both sides up")


@pytest.fixture
async def sides() -> AsyncIterator[list[Side]]:
    made: list[Side] = []
    yield made
    for side in made:
        await side.pc.close()


async def connected(sides: list[Side], offer_edit: Edit | None = None,
                    answer_edit: Edit | None = None, *, dtmf_ready: bool = True) -> tuple[Side, Side]:
    a, b = _side(440), _side(660)
    sides += [a, b]
    await negotiate(a, b, offer_edit, answer_edit)
    a.pc.start()
    b.pc.start()
    await until(lambda: a.sink.loud_since(0) > 5 and b.sink.loud_since(0) > 5, what="audio both ways")
    if dtmf_ready:
        await until(lambda: a.pc.dtmf_ready and b.pc.dtmf_ready, what="dtmf_ready")
    return a, b


async def audio_goes_on(*sides: Side) -> None:
    """Each side hears the other's tone again, for half a second."""
    t = time.monotonic()
    await until(lambda: all(s.sink.loud_since(t) >= 25 for s in sides), what="audio after DTMF")
    for s in sides:
        other_hz = 1100 - s.hz  # the sides send 440 and 660 Hz
        assert abs(s.sink.hz() - other_hz) < 5, (s.sink.hz(), other_hz)
    assert not any(s.lost for s in sides), [s.lost for s in sides]


def payload_types(sdp: str, name: str) -> list[str]:
    return re.findall(rf"^a=rtpmap:(\d+) {name}/", sdp, re.M)


def strip_telephone_events(sdp: str) -> str:
    pts = payload_types(sdp, "telephone-event")
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio"):
            line = " ".join(p for p in line.split(" ") if p not in pts)
        elif any(line.startswith((f"a=rtpmap:{pt} ", f"a=fmtp:{pt} ")) for pt in pts):
            continue
        lines.append(line)
    return "\r\n".join(lines)


def events_first(sdp: str) -> str:
    """The audio m= line with telephone-event before every real codec."""
    pts = payload_types(sdp, "telephone-event")

    def reorder(m: re.Match[str]) -> str:
        head, formats = m.group(1), m.group(2).split(" ")
        return head + " ".join(pts + [f for f in formats if f not in pts])

    return re.sub(r"^(m=audio \d+ \S+ )([^\r\n]*)", reorder, sdp, count=1, flags=re.M)


def audio_formats(sdp: str) -> list[str]:
    line = next(line for line in sdp.splitlines() if line.startswith("m=audio"))
    return line.split(" ")[3:]


# --------------------------------------------------------------------- real calls
async def test_every_digit_arrives_once_in_order_both_ways_and_the_audio_goes_on(
        sides: list[Side]) -> None:
    a, b = await connected(sides)
    await asyncio.wait_for(asyncio.gather(a.pc.send_dtmf(DIGITS), b.pc.send_dtmf(DIGITS.lower())), 20)
    await until(lambda: len(a.digits) >= len(DIGITS) and len(b.digits) >= len(DIGITS), 3, "digits")
    await asyncio.sleep(0.3)  # anything reported twice would be in by now
    assert a.heard == DIGITS and b.heard == DIGITS
    await audio_goes_on(a, b)
    # the events took the audio's sequence numbers and were counted: no "lost" packets
    for s in (a, b):
        stats = await s.pc.stats()
        assert stats.get("packets_lost", 0) < 5, stats
    assert a.pc.dtmf_ready and b.pc.dtmf_ready


async def test_a_3_s_tone_is_one_digit_and_does_not_trip_the_no_media_watchdog(
        sides: list[Side], monkeypatch: pytest.MonkeyPatch) -> None:
    # the watchdog at 1 s: a 3 s tone (no audio packets meanwhile) would trip it 3 times over
    monkeypatch.setattr(peer, "MEDIA_SILENCE_TIMEOUT_S", 1.0)
    a, b = await connected(sides)
    started = time.monotonic()
    await asyncio.wait_for(a.pc.send_dtmf("#", duration_ms=3000), 15)
    assert time.monotonic() - started >= 3.0
    await asyncio.sleep(0.5)
    assert b.heard == "#"  # three RFC 4733 segments (48 kHz: 1.36 s each), one digit
    assert not a.lost and not b.lost, (a.lost, b.lost)
    await audio_goes_on(b)


async def test_pauses_delay_the_next_digit(sides: list[Side]) -> None:
    a, b = await connected(sides)
    await asyncio.wait_for(a.pc.send_dtmf("1,2w3W4", duration_ms=60, gap_ms=40), 20)
    await until(lambda: len(b.digits) >= 4, 3, "4 digits")
    assert b.heard == "1234"
    t = [at for _, at in b.digits]
    assert t[1] - t[0] >= 2.0  # ","
    assert t[2] - t[1] >= 0.5 and t[3] - t[2] >= 0.5  # "w", "W"


async def test_bad_tones_and_timings_are_refused_naming_what(sides: list[Side]) -> None:
    a, b = await connected(sides)
    for tones, named in [("12x3", "'x'"), ("1 2", "' '"), ("9E", "'E'"), ("", "no DTMF tones"),
                         ("1" * 65, "at most 64")]:
        with pytest.raises(MediaError, match=re.escape(named)):
            await a.pc.send_dtmf(tones)
    with pytest.raises(MediaError, match="40-6000 ms, not 39"):
        await a.pc.send_dtmf("1", duration_ms=39)
    with pytest.raises(MediaError, match="not 6001"):
        await a.pc.send_dtmf("1", duration_ms=6001)
    with pytest.raises(MediaError, match="at least 30 ms, not 29"):
        await a.pc.send_dtmf("1", gap_ms=29)
    await asyncio.sleep(0.3)
    assert b.heard == ""  # nothing of a refused send went out
    await a.pc.send_dtmf("7")
    await until(lambda: b.heard == "7", 3, "the 7")
    await audio_goes_on(a, b)


@pytest.mark.parametrize("stripped", ["offer", "answer"])
async def test_a_peer_without_telephone_event_gets_no_dtmf_and_the_call_goes_on(
        sides: list[Side], stripped: str) -> None:
    a, b = await connected(sides, offer_edit=strip_telephone_events if stripped == "offer" else None,
                           answer_edit=strip_telephone_events if stripped == "answer" else None,
                           dtmf_ready=False)
    await asyncio.sleep(0.5)
    assert not a.pc.dtmf_ready
    with pytest.raises(MediaError, match="did not negotiate DTMF"):
        await a.pc.send_dtmf("1")
    if stripped == "offer":
        assert not b.pc.dtmf_ready
        with pytest.raises(MediaError, match="did not negotiate DTMF"):
            await b.pc.send_dtmf("1")
    else:
        # b saw telephone-event in a's offer and sends it: a, which did not take it
        # (the answer it got has none), drops the packets, and b's audio plays on
        await until(lambda: b.pc.dtmf_ready, what="b ready")
        await asyncio.wait_for(b.pc.send_dtmf("123"), 10)
        assert a.heard == ""
    await audio_goes_on(a, b)


@pytest.mark.parametrize("first_in", ["offer", "answer"])
async def test_telephone_event_listed_first_never_becomes_the_send_codec(
        sides: list[Side], first_in: str) -> None:
    answers: list[str] = []

    def answer_edit(sdp: str) -> str:
        answers.append(sdp)
        return events_first(sdp) if first_in == "answer" else sdp

    offer_edit = events_first if first_in == "offer" else None
    a, b = await connected(sides, offer_edit=offer_edit, answer_edit=answer_edit)
    formats = audio_formats(answers[0])
    assert formats[0] == "96" and formats.index("110") > formats.index("8"), formats  # opus first
    for s in (a, b):
        audio = next(t for t in s.pc.pc.getTransceivers() if t.kind == "audio")
        assert adjust.negotiated_codecs(audio)[0].mimeType == "audio/opus"  # the send codec
    await asyncio.wait_for(asyncio.gather(a.pc.send_dtmf("12"), b.pc.send_dtmf("34")), 10)
    await until(lambda: b.heard == "12" and a.heard == "34", 3, "digits")
    await audio_goes_on(a, b)


async def test_dtmf_follows_a_reconnect_and_a_send_in_progress_fails(sides: list[Side]) -> None:
    a, b = await connected(sides)
    old_sender = next(t.sender for t in a.pc.pc.getTransceivers() if t.kind == "audio")
    sending = asyncio.ensure_future(a.pc.send_dtmf("1111111111"))
    await until(lambda: b.heard.startswith("11"), 5, "two digits")
    await a.pc.restart([])
    await b.pc.restart([])
    with pytest.raises(MediaError, match="reconnected"):
        await asyncio.wait_for(sending, 5)
    assert not hasattr(old_sender, "_callctl_dtmf")  # the old connection's sender is let go
    with pytest.raises(MediaError):  # not connected again yet
        await a.pc.send_dtmf("1")
    heard = len(b.heard), len(a.heard)
    await negotiate(a, b)
    await until(lambda: a.pc.dtmf_ready and b.pc.dtmf_ready, what="ready after the reconnect")
    await asyncio.wait_for(asyncio.gather(a.pc.send_dtmf("*0#"), b.pc.send_dtmf("D")), 10)
    await until(lambda: b.heard[heard[0]:] == "*0#" and a.heard[heard[1]:] == "D", 3, "digits")
    await audio_goes_on(a, b)


async def test_send_dtmf_before_the_call_started_or_after_it_ended(sides: list[Side]) -> None:
    a = _side(440)
    sides.append(a)
    with pytest.raises(MediaError, match="no call in progress"):
        await a.pc.send_dtmf("1")
    assert not a.pc.dtmf_ready
    a2, b2 = await connected(sides)
    await b2.pc.close()
    await a2.pc.close()
    with pytest.raises(MediaError, match="no call in progress"):
        await a2.pc.send_dtmf("1")


def test_dtmf_unavailable_with_other_internals_is_one_line_and_no_negotiation(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    adjust.tune_aiortc()
    assert adjust.dtmf_internals_problem() is None  # the installed aiortc is the verified one
    monkeypatch.setattr(adjust, "DTMF_ATTRIBUTES", adjust.DTMF_ATTRIBUTES + (
        ("aiortc.rtcrtpreceiver", "RTCRtpReceiver", "_handle_rtp_packet", ("_gone",)),))
    assert adjust.dtmf_internals_problem() == "aiortc.rtcrtpreceiver.RTCRtpReceiver no longer sets _gone"
    monkeypatch.setattr(adjust, "_dtmf_problem", None)
    with caplog.at_level(logging.WARNING, "callctl.media"):
        adjust._telephone_events()  # what tune_aiortc does: it stops at the guard
    assert [r.getMessage() for r in caplog.records] == [
        "aiortc.rtcrtpreceiver.RTCRtpReceiver no longer sets _gone: DTMF is unavailable with this aiortc"]
    assert "no longer sets _gone" in (adjust.dtmf_problem() or "")


async def test_send_dtmf_says_why_dtmf_is_unavailable(
        sides: list[Side], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = await connected(sides)
    monkeypatch.setattr(adjust, "_dtmf_problem", "x lacks y: DTMF is unavailable with this aiortc")
    with pytest.raises(MediaError, match="DTMF is unavailable"):
        await a.pc.send_dtmf("1")


# ------------------------------------------------------------------- tone strings
def test_check_tones_normalizes_and_names_the_bad_character() -> None:
    assert check_tones("0123456789*#abcdABCD,wW") == "0123456789*#ABCDABCD,WW"
    assert check_tones("1" * 64) == "1" * 64
    for tones, named in [("12#e", "'e' (position 4)"), ("1;", "';'"), ("p", "'p'"), ("1\n", r"'\n'")]:
        with pytest.raises(ValueError, match=re.escape(named)):
            check_tones(tones)
    with pytest.raises(ValueError, match="at most 64"):
        check_tones("1" * 65)
    check_timing(40, 30)
    check_timing(6000, 70)
    for duration, gap in [(39, 70), (6001, 70), (100, 29)]:
        with pytest.raises(ValueError):
            check_timing(duration, gap)


# ------------------------------------------------ RFC 4733 packets, by hand
def event(code: int, duration: int, end: bool = False) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def tone_packets(code: int, ts: int, packets: int, step: int = 960) -> list[tuple[bytes, int, bool]]:
    """One short event as a sender makes it: M first, durations cumulative, E x3."""
    out = [(event(code, step * (i + 1)), ts, i == 0) for i in range(packets - 1)]
    return out + [(event(code, step * packets, end=True), ts, packets == 1)] * 3


def feed_all(rx: ToneReceiver, packets: list[tuple[bytes, int, bool]], t0: float = 0.0) -> list[str]:
    got = []
    for i, (payload, ts, marker) in enumerate(packets):
        digit = rx.feed(payload, ts, marker, t0 + i * 0.02)
        if digit is not None:
            got.append(digit)
    return got


def test_receiver_reports_each_event_once_on_its_first_packet() -> None:
    rx = ToneReceiver()
    first = tone_packets(5, 1000, 5)
    assert rx.feed(*first[0], now=0.0) == "5"  # on the first packet
    assert feed_all(rx, first[1:]) == []  # then its packets and the 3 end packets are no digit
    assert feed_all(rx, first) == []  # duplicates of any of them neither
    # the same digit again is another event: another timestamp
    assert feed_all(rx, tone_packets(5, 1000 + 8 * 960, 5), 1.0) == ["5"]
    assert feed_all(rx, tone_packets(15, 1000 + 16 * 960, 2), 2.0) == ["D"]
    assert not rx.active


def test_receiver_lost_end_packets_and_lost_first_packets() -> None:
    rx = ToneReceiver(end_timeout_s=0.5)
    no_end = tone_packets(1, 5000, 5)[:4]  # every end packet lost
    assert feed_all(rx, no_end) == ["1"]
    assert rx._open(0.06 + 0.1) is not None  # still in progress for a moment...
    assert rx._open(0.06 + 0.6) is None  # ...closed after the timeout
    # the next event lost its marker packet: a short event's next timestamp is a new digit
    later = tone_packets(1, 5000 + 9 * 960, 5)[1:]
    assert feed_all(rx, later, 0.3) == ["1"]
    # a late end packet of the first event: no digit again
    assert rx.feed(event(1, 4800, end=True), 5000, False, 1.0) is None
    # all but the end packets lost: the digit on the first end packet
    assert feed_all(rx, tone_packets(11, 5000 + 20 * 960, 5)[-3:], 2.0) == ["#"]
    # another kind of event (16: a flash) and a short payload: no digit
    assert rx.feed(event(16, 960), 5000 + 30 * 960, True, 3.0) is None
    assert rx.feed(b"\x01\x8a", 5000 + 31 * 960, True, 3.0) is None


def long_event(code: int, ts: int, packets: int) -> list[tuple[bytes, int, bool]]:
    """A long event as RFC 4733 2.5.1.3 segments it (48 kHz, 20 ms packets: 68 per segment)."""
    out = []
    for k in range(packets):
        segment = k // 68
        duration = (k + 1 - segment * 68) * 960
        out.append((event(code, duration, end=k == packets - 1), (ts + segment * 68 * 960) % 2**32,
                    k == 0))
    return out + [out[-1]] * 2


def test_receiver_takes_a_segmented_long_event_for_one_digit() -> None:
    packets = long_event(9, 2**32 - 70000, 300)  # 6 s, its timestamps wrapping round
    assert len({ts for _, ts, _ in packets}) == 5
    assert feed_all(ToneReceiver(), packets) == ["9"]
    # the packets around a segment boundary lost: still one digit
    assert feed_all(ToneReceiver(), packets[:65] + packets[70:]) == ["9"]
    # the next digit right after it is one
    rx = ToneReceiver()
    assert feed_all(rx, packets + tone_packets(9, (2**32 - 70000 + 310 * 960) % 2**32, 5)) == ["9", "9"]


def rtp(seq: int, ts: int, payload: bytes = b"\xfc" + bytes(40), marker: bool = False) -> bytes:
    """An Opus packet as aiortc sends it: PT 96, one header extension (a mid), SSRC 0x01020304."""
    ext = b"\xbe\xde\x00\x01" + b"\x10\x30\x00\x00"  # one-byte form: id 1, "0"
    return (bytes([0x90, (0x80 if marker else 0) | 96]) + struct.pack("!HII", seq, ts, 0x01020304)
            + ext + payload)


def parse(packet: bytes) -> tuple[int, bool, int, int, bytes, bytes]:
    """(payload type, marker, seq, timestamp, header up to the payload, payload)."""
    header = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        header += 4 + 4 * int.from_bytes(packet[header + 2:header + 4], "big")
    seq, ts = struct.unpack_from("!HI", packet, 2)
    return packet[1] & 0x7F, bool(packet[1] & 0x80), seq, ts, packet[8:header], packet[header:]


async def test_sender_rewrites_opus_packets_into_events_and_back() -> None:
    tx = ToneSender(payload_type=110, event_rate=48000, stream_rate=48000)
    done = tx.queue(check_tones("5"), duration_ms=100, gap_ms=70)
    out = [parse(tx.rewrite(rtp(100 + i, 7000 + i * FRAME))) for i in range(12)]
    assert done.done() and not tx.busy
    events, audio = out[:7], out[7:]
    assert [p[0] for p in events] == [110] * 7 and [p[0] for p in audio] == [96] * 5
    assert [p[2] for p in out] == list(range(100, 112))  # the audio's sequence numbers
    assert {p[3] for p in events} == {7000}  # the event's start timestamp on every packet
    assert [p[1] for p in events] == [True] + [False] * 6  # M on the first
    assert all(p[4] == rtp(0, 0)[8:20] for p in out)  # SSRC and header extension kept
    decoded = [struct.unpack("!BBH", p[5]) for p in events]
    assert [d[0] for d in decoded] == [5] * 7
    assert [bool(d[1] & 0x80) for d in decoded] == [False] * 4 + [True] * 3  # E x3
    assert [d[2] for d in decoded] == [960, 1920, 2880, 3840, 4800, 4800, 4800]
    assert [p[3] for p in audio] == [7000 + i * FRAME for i in range(7, 12)]  # audio as it was
    assert tx.rewrite(rtp(200, 0)) == rtp(200, 0)  # nothing due: untouched


async def test_sender_segments_a_long_tone_and_the_receiver_hears_one_digit() -> None:
    tx = ToneSender(payload_type=110, event_rate=48000, stream_rate=48000)
    tx.queue(check_tones("0,A"), duration_ms=6000, gap_ms=30)
    rx = ToneReceiver()
    digits, starts = [], []
    for i in range(2 * 302 + 100):
        pt, marker, _, ts, _, payload = parse(tx.rewrite(rtp(i % 65536, (123 + i * FRAME) % 2**32)))
        if pt == 110:
            starts.append(ts)
            assert struct.unpack("!BBH", payload)[2] <= 0xFFFF
            digit = rx.feed(payload, ts, marker, i * 0.02)
            if digit:
                digits.append((digit, i))
    assert not tx.busy
    assert [d for d, _ in digits] == ["0", "A"]
    assert len(set(starts)) == 5 + 5  # 6 s = 5 segments, each with its own start
    assert digits[1][1] - digits[0][1] == 300 + 2 + 100  # the tone, its end packets, the 2 s pause


async def test_sender_at_8000_hz_pcmu_and_a_mismatched_clock() -> None:
    tx = ToneSender(payload_type=126, event_rate=8000, stream_rate=8000)
    tx.queue("1", 40, 30)
    durations = [struct.unpack("!BBH", parse(tx.rewrite(rtp(i, i * 160)))[5])[2] for i in range(4)]
    assert durations == [160, 320, 320, 320]
    # a peer with telephone-event/8000 only, under Opus: timestamps at 48 kHz, durations at 8 kHz
    tx = ToneSender(payload_type=126, event_rate=8000, stream_rate=48000)
    tx.queue("1", 2000, 30)
    out = [parse(tx.rewrite(rtp(i, i * FRAME))) for i in range(100)]
    assert {p[3] for p in out} == {0}  # 100 x 160 fits in one segment
    assert struct.unpack("!BBH", out[-1][5])[2] == 16000


async def test_sender_fails_and_cancels_what_is_queued() -> None:
    tx = ToneSender(payload_type=110, event_rate=48000, stream_rate=48000)
    first = tx.queue("12", 100, 70)
    second = tx.queue("3", 100, 70)
    tx.rewrite(rtp(1, 0))  # the "1" started
    tx.cancel(first)  # the "1" is finished, the "2" dropped
    out = [parse(tx.rewrite(rtp(2 + i, (1 + i) * FRAME))) for i in range(30)]
    codes = [p[5][0] for p in out if p[0] == 110]
    assert 2 not in codes and codes.count(1) == 6 and codes.count(3) == 7
    assert second.done() and not first.done()
    third = tx.queue("4", 100, 70)
    tx.fail(MediaError("gone"))
    with pytest.raises(MediaError, match="gone"):
        third.result()
    assert not tx.busy
    assert dtmf.END_PACKETS == 3

"""DTMF on the call's audio stream: RFC 4733 telephone-events, sent and received.

Tones are ``0-9 * # A-D`` (any case), ``,`` a 2 s pause (as W3C
``insertDTMF``) and ``w``/``W`` a 0.5 s pause (as LiveKit's CLI); ``check_tones``
says which character is not one.

Sending (``ToneSender``): while a tone is due, each Opus packet the call's
audio sender makes is rewritten into a telephone-event packet of the same
SSRC and sequence number (``adjust.attach_dtmf_sender``): the event's start
timestamp on every packet of it, the marker bit on its first, the durations
cumulative, the end bit on the last three.  A tone longer than the 16-bit
duration field holds (1.36 s at 48 kHz) is sent in segments, each with its
own start timestamp, as RFC 4733 2.5.1.3 says.  Tones, gaps and pauses are
counted in the audio's 20 ms packets, so they keep time with the stream.

Receiving (``ToneReceiver``): one event is one RTP timestamp; a digit is
reported on the first packet of its event that arrives, once: the repeated
end packets, duplicates and late packets of an event already reported are
not digits again, nor is the next segment of a long one.  An event whose
end packets were all lost is closed after ``END_TIMEOUT_S``.

``CallDtmf`` is one call's DTMF across its peer connections: attached to the
audio sender and receiver of the connection that is up, detached when it is
replaced or closed.
"""

from __future__ import annotations

import asyncio
import collections
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from callctl.media import adjust
from callctl.media.errors import MediaError

#: The DTMF events of RFC 4733 (3.2), by event code.
EVENTS = "0123456789*#ABCD"
#: Pauses, in ms: ``,`` as W3C insertDTMF, ``W`` (or ``w``) as LiveKit's CLI.
PAUSES = {",": 2000, "W": 500}
MAX_TONES = 64
DURATION_MS = (40, 6000)
MIN_GAP_MS = 30
#: The audio's packet length (aiortc sends 20 ms audio frames).
PACKET_MS = 20
#: The last packet of an event is sent this many times (RFC 4733 2.5.1.4).
END_PACKETS = 3
#: The volume field: -10 dBm0, as browsers send it.
VOLUME = 10
#: An event with no packet for this long is over, even without its end packets.
END_TIMEOUT_S = 0.5
#: A send with no audio packet going out for this long has lost its sender.
STALL_S = 1.0
#: Audio (or events) within this long: "flowing", for ``ready``.
FLOWING_S = 1.0


def playing_time_s(tones: str, duration_ms: int, gap_ms: int) -> float:
    """How long sending ``tones`` takes: each tone and its gap, and the pauses."""
    pauses = sum(PAUSES.get(t.upper(), 0) for t in tones)
    digits = sum(1 for t in tones if t.upper() not in PAUSES)
    return (pauses + digits * (duration_ms + gap_ms)) / 1000


def check_tones(tones: str) -> str:
    """The tones, normalized (upper case), or ValueError naming the first bad character."""
    if not tones:
        raise ValueError("no DTMF tones given")
    if len(tones) > MAX_TONES:
        raise ValueError(f"at most {MAX_TONES} DTMF tones at once, not {len(tones)}")
    normalized = tones.upper()
    for i, ch in enumerate(normalized):
        if ch not in EVENTS and ch not in PAUSES:
            raise ValueError(
                f"{tones[i]!r} (position {i + 1}) is not a DTMF tone: use 0-9, *, #, A-D, "
                "',' (a 2 s pause) or 'w' (0.5 s)")
    return normalized


def check_timing(duration_ms: int, gap_ms: int) -> None:
    """ValueError unless the tone duration and the gap between tones are allowed."""
    low, high = DURATION_MS
    if not low <= duration_ms <= high:
        raise ValueError(f"a DTMF tone lasts {low}-{high} ms, not {duration_ms}")
    if gap_ms < MIN_GAP_MS:
        raise ValueError(f"the gap between DTMF tones is at least {MIN_GAP_MS} ms, not {gap_ms}")


def _packets(ms: int) -> int:
    return max(1, math.ceil(ms / PACKET_MS))


# ----------------------------------------------------------------------------- sending
@dataclass
class _Item:
    """One tone (``event``) or pause (``event`` None), counted in audio packets."""

    event: int | None
    packets: int  # with the event (a tone), or passed through (a pause)
    gap: int = 0  # after a tone: packets until the next item; the first repeat the end
    done: asyncio.Future[None] | None = None  # the send this item ends
    sent: int = 0
    start: int = 0  # RTP timestamp of the event's first packet

    @property
    def total(self) -> int:
        return self.packets + self.gap


class ToneSender:
    """Rewrites one audio sender's outgoing packets into telephone-events while tones are due.

    ``rewrite`` gets every RTP packet of the sender (on the event loop,
    from aiortc's sender task) and returns it, or its replacement.
    """

    def __init__(self, payload_type: int, event_rate: int, stream_rate: int) -> None:
        self.payload_type = payload_type
        self.event_rate = event_rate
        # the stream's timestamps advance by this per packet; durations count in the event's clock
        self._stream_step = stream_rate * PACKET_MS // 1000
        self._event_step = event_rate * PACKET_MS // 1000
        #: packets of one segment: its duration must fit in 16 bits
        self._segment = 0xFFFF // self._event_step
        self._queue: collections.deque[_Item] = collections.deque()
        self.packets = 0
        self.last_packet_at: float | None = None

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def queue(self, tones: str, duration_ms: int, gap_ms: int) -> asyncio.Future[None]:
        """Queue checked tones (``check_tones``); the future is done once the last was sent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        items = []
        for ch in tones:
            if ch in PAUSES:
                items.append(_Item(None, _packets(PAUSES[ch])))
            else:
                items.append(_Item(EVENTS.index(ch), _packets(duration_ms),
                                   gap=max(END_PACKETS - 1, _packets(gap_ms))))
        items[-1].done = done
        self._queue.extend(items)
        return done

    def fail(self, error: Exception) -> None:
        """Every send in progress fails with ``error``; what was queued is dropped."""
        for item in self._queue:
            if item.done is not None and not item.done.done():
                item.done.set_exception(error)
        self._queue.clear()

    def cancel(self, done: asyncio.Future[None]) -> None:
        """Drop what is left of the send that ``done`` ends (a tone being sent is finished)."""
        items = list(self._queue)
        last = next((i for i, item in enumerate(items) if item.done is done), None)
        if last is None:
            return
        first = last  # only a send's last item carries its future: the send starts after the one before
        while first > 0 and items[first - 1].done is None:
            first -= 1
        if first == 0 and items[0].sent and items[0].event is not None:
            items[0].done = None
            first = 1
        self._queue = collections.deque(items[:first] + items[last + 1:])

    def rewrite(self, data: bytes) -> bytes:
        self.packets += 1
        self.last_packet_at = time.monotonic()
        if not self._queue:
            return data
        item = self._queue[0]
        out = data if item.event is None else self._event_packet(item, data)
        item.sent += 1
        if item.sent >= item.total:
            self._queue.popleft()
            if item.done is not None and not item.done.done():
                item.done.set_result(None)
        return out

    def _event_packet(self, item: _Item, data: bytes) -> bytes:
        header = 12 + 4 * (data[0] & 0x0F)  # with its CSRCs
        if data[0] & 0x10:  # and its header extension (the mid, the audio level)
            if len(data) < header + 4:
                return data
            header += 4 + 4 * int.from_bytes(data[header + 2:header + 4], "big")
        if len(data) < header or item.event is None:
            return data
        if item.sent == 0:
            item.start = int.from_bytes(data[4:8], "big")
        n = min(item.sent, item.packets - 1)  # the end packet is repeated
        if item.sent >= item.packets + END_PACKETS - 1:
            return data  # the gap: the audio again
        segment = n // self._segment
        duration = (n + 1 - segment * self._segment) * self._event_step
        timestamp = (item.start + segment * self._segment * self._stream_step) & 0xFFFFFFFF
        end = n == item.packets - 1
        marker = 0x80 if item.sent == 0 else 0
        return (bytes([data[0] & 0xDF, marker | self.payload_type]) + data[2:4]
                + timestamp.to_bytes(4, "big") + data[8:header]
                + struct.pack("!BBH", item.event, (0x80 if end else 0) | VOLUME, duration))


# --------------------------------------------------------------------------- receiving
@dataclass
class _Event:
    code: int
    timestamp: int  # of its current segment
    duration: int  # the longest seen in that segment
    last_at: float
    ended: bool = False


class ToneReceiver:
    """Telephone-event packets in, each DTMF digit out once (on the first packet of its event)."""

    def __init__(self, end_timeout_s: float = END_TIMEOUT_S) -> None:
        self.end_timeout = end_timeout_s
        self._event: _Event | None = None
        self._seen: collections.deque[int] = collections.deque(maxlen=32)  # recent event timestamps

    @property
    def active(self) -> bool:
        """An event is in progress (its end not received, its timeout not passed)."""
        return self._open(time.monotonic()) is not None

    def _open(self, now: float) -> _Event | None:
        event = self._event
        if event is None or event.ended or now - event.last_at > self.end_timeout:
            return None
        return event

    def feed(self, payload: bytes, timestamp: int, marker: bool, now: float) -> str | None:
        """One received packet: the digit it starts, or None."""
        if len(payload) < 4:
            return None
        code, flags, duration = struct.unpack_from("!BBH", payload)
        end = bool(flags & 0x80)
        if code >= len(EVENTS):
            return None  # another kind of event (a fax tone, a flash): not a digit
        event = self._event
        if timestamp in self._seen:
            # the same event again: its next packet, a repeated end, a duplicate, a late one
            if event is not None and event.timestamp == timestamp:
                event.last_at = now
                event.duration = max(event.duration, duration)
                event.ended = event.ended or end
            return None
        self._seen.append(timestamp)
        open_event = self._open(now)
        if (open_event is not None and not marker and code == open_event.code
                and open_event.duration >= 0x8000
                and 0 < (timestamp - open_event.timestamp) & 0xFFFFFFFF < 0x80000000):
            # the next segment of a long event (RFC 4733 2.5.1.3): the same digit
            open_event.timestamp, open_event.duration = timestamp, duration
            open_event.last_at, open_event.ended = now, end
            return None
        self._event = _Event(code, timestamp, duration, now, ended=end)
        return EVENTS[code]


# -------------------------------------------------------------------------- one call
@dataclass
class _Attached:
    pc: Any
    sender: Any
    receiver: Any
    tone_sender: ToneSender | None
    no_dtmf: str  # why we cannot send, when tone_sender is None
    tone_receiver: ToneReceiver = field(default_factory=ToneReceiver)


class CallDtmf:
    """One call's DTMF, attached to the audio of the peer connection that is up.

    ``on_packet(digit)`` is called on the event loop for every telephone-event
    packet received (``digit`` None, or the digit it starts).
    """

    def __init__(self, on_packet: Callable[[str | None], None]) -> None:
        self._on_packet = on_packet
        self._attached: _Attached | None = None

    def follow(self, pc: Any) -> None:
        """``pc``'s connection state changed: attach once it is connected, detach if it ended."""
        state = pc.connectionState
        if state == "connected":
            if self._attached is None or self._attached.pc is not pc:
                self.attach(pc)
        elif state in ("failed", "closed") and self._attached is not None and self._attached.pc is pc:
            self.detach("the call's media path is gone")

    def attach(self, pc: Any) -> None:
        """The audio sender and receiver of ``pc`` (negotiated): DTMF goes through them."""
        self.detach("the call's audio moved to a new connection")
        if adjust.dtmf_problem() is not None:
            return
        transceiver = next((t for t in pc.getTransceivers() if t.kind == "audio"), None)
        if transceiver is None:
            return
        codecs = adjust.negotiated_codecs(transceiver)
        tone_sender, no_dtmf = None, "the call has no audio codec"
        if codecs and not adjust.is_telephone_event(codecs[0]):
            stream_rate = codecs[0].clockRate
            events = [c for c in codecs if adjust.is_telephone_event(c)]
            # RFC 4733 2.1: on the audio's SSRC the events keep the audio's clock; a peer that
            # negotiated only another clock gets durations in that one (as browsers do)
            events.sort(key=lambda c: c.clockRate != stream_rate)
            if events:
                tone_sender = ToneSender(events[0].payloadType, events[0].clockRate, stream_rate)
            else:
                no_dtmf = "the peer did not negotiate DTMF (no telephone-event in its description)"
        attached = _Attached(pc, transceiver.sender, transceiver.receiver, tone_sender, no_dtmf)
        self._attached = attached
        if tone_sender is not None:
            adjust.attach_dtmf_sender(transceiver.sender, tone_sender.rewrite)
        adjust.attach_dtmf_receiver(transceiver.receiver, lambda payload, ts, marker: self._received(
            attached, payload, ts, marker))

    def detach(self, why: str) -> None:
        """No more DTMF on the attached connection; a send in progress fails with ``why``."""
        attached, self._attached = self._attached, None
        if attached is None:
            return
        adjust.attach_dtmf_sender(attached.sender, None)
        adjust.attach_dtmf_receiver(attached.receiver, None)
        if attached.tone_sender is not None:
            attached.tone_sender.fail(MediaError(f"DTMF not sent: {why}"))

    def _received(self, attached: _Attached, payload: bytes, timestamp: int, marker: bool) -> None:
        if attached is not self._attached:
            return
        self._on_packet(attached.tone_receiver.feed(payload, timestamp, marker, time.monotonic()))

    def ready(self, pc: Any, receiving: bool) -> bool:
        """Telephone-events negotiated on ``pc``, our audio going out, the peer's coming in."""
        attached = self._attached
        if attached is None or attached.pc is not pc or attached.tone_sender is None:
            return False
        sent = attached.tone_sender.last_packet_at
        return receiving and sent is not None and time.monotonic() - sent < FLOWING_S

    async def send(self, pc: Any, tones: str, duration_ms: int, gap_ms: int) -> None:
        """Send ``tones`` on ``pc``'s audio; returns once every one was sent, else MediaError."""
        try:
            tones = check_tones(tones)
            check_timing(duration_ms, gap_ms)
        except ValueError as exc:
            raise MediaError(str(exc)) from None
        problem = adjust.dtmf_problem()
        if problem is not None:
            raise MediaError(problem)
        attached = self._attached
        if attached is None or attached.pc is not pc:
            raise MediaError("DTMF not sent: the call's media is not connected")
        tone_sender = attached.tone_sender
        if tone_sender is None:
            raise MediaError(f"DTMF not sent: {attached.no_dtmf}")
        if attached.sender.track is None:
            raise MediaError("DTMF not sent: the call's audio sender is gone")
        queued_at = time.monotonic()
        done = tone_sender.queue(tones, duration_ms, gap_ms)
        try:
            while not done.done():
                await asyncio.wait([done], timeout=STALL_S / 4)
                last = max(queued_at, tone_sender.last_packet_at or 0.0)
                if not done.done() and time.monotonic() - last > STALL_S:
                    tone_sender.fail(MediaError("DTMF not sent: the call's audio stopped going out"))
        except asyncio.CancelledError:
            tone_sender.cancel(done)
            raise
        done.result()

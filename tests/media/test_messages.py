"""App messages over the call's negotiated data channel, between real aiortc peer connections.

Two of our PeerConnections on loopback with real sources and sinks; a
hostile peer is one of them with no Messenger and a raw aiortc data channel
of its own (the same negotiated id 0), sending whatever it likes.  The
framing and the dedupe are also tested alone, with no channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from callctl.media import messages
from callctl.media.audio import NullSink, ToneSource
from callctl.media.errors import BadSdp, MessageError
from callctl.media.messages import (
    Ack,
    DropLog,
    Garbage,
    Inbox,
    Message,
    Messenger,
    decode,
    encode,
    encode_ack,
)
from callctl.media.peer import MediaCallbacks, PeerConnection
from callctl.media.sdp import check_sdp, has_data_channel

WAIT = 10.0


class Inbound:
    """What a Messenger delivered, in order, with a way to wait for the next ones."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    def __call__(self, kind: str, body: Any) -> None:
        self.got.append((kind, body))
        self.changed.set()

    async def until(self, n: int, timeout: float = WAIT) -> list[tuple[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
        return self.got


class Side:
    """One end of a call: its peer connection, messenger, what it got and its far-audio sink."""

    def __init__(self, hz: float, messenger: bool = True) -> None:
        self.inbound = Inbound()
        self.messenger = Messenger(self.inbound) if messenger else None
        self.sink = NullSink()
        self.up = asyncio.Event()
        self.peer = PeerConnection([], ToneSource(hz), [self.sink], MediaCallbacks(
            on_up=self.up.set, on_lost=lambda why: None), messenger=self.messenger)

    @property
    def m(self) -> Messenger:
        assert self.messenger is not None
        return self.messenger

    async def close(self) -> None:
        await self.peer.close()
        if self.messenger is not None:
            self.messenger.close()


async def connect(a: Side, b: Side, *, on_answer: Callable[[], None] = lambda: None,
                  rewrite_offer: Callable[[str], str] = lambda sdp: sdp) -> None:
    """``a`` offers, ``b`` answers; both connected and playing."""
    a.up.clear()
    b.up.clear()
    answer = await b.peer.create_answer(rewrite_offer(await a.peer.create_offer()))
    on_answer()
    await a.peer.apply_answer(answer)
    await asyncio.wait_for(asyncio.gather(a.up.wait(), b.up.wait()), WAIT)
    a.peer.start()
    b.peer.start()


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def sides() -> Any:
    made: list[Side] = []

    def side(hz: float, messenger: bool = True) -> Side:
        made.append(Side(hz, messenger))
        return made[-1]

    yield side
    for s in made:
        await s.close()


class RawPeer:
    """A peer without a Messenger: its own negotiated channel id 0, raw frames in and out."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.channel: Any = None
        self.frames: list[Any] = []
        self.got = asyncio.Event()

    def make_channel(self) -> None:
        self.channel = messages.create_channel(self.side.peer.pc)
        self.channel.on("message", self._on_message)

    def _on_message(self, data: Any) -> None:
        self.frames.append(json.loads(data))
        self.got.set()

    async def opened(self) -> None:
        await until(lambda: self.channel.readyState == "open", "the raw channel to open")

    def acks(self) -> list[int]:
        return [f["ack"] for f in self.frames if "ack" in f]


async def hostile_pair(sides: Callable[..., Side]) -> tuple[Side, RawPeer]:
    """Our side (offering) and a raw peer answering it."""
    ours, theirs = sides(440), sides(660, messenger=False)
    raw = RawPeer(theirs)
    await connect(ours, theirs, on_answer=raw.make_channel)
    await raw.opened()
    return ours, raw


# ----------------------------------------------------------------- both ways
TEXTS = [
    "hello",
    "",
    "emoji 👋🏽 family 👨‍👩‍👧 flag 🇺🇦 clef 𝄞",
    "RTL שלום עולם / مرحبا بالعالم with \u200f marks \u202e override \u202c",
    "control \t tab \n newline \r return \x01 \x1b[31m escape \x7f del \u2028 \u2029",
    "combining e\u0301 ﬁ ligature \ufeff bom",
]
JSONS: list[Any] = [
    {"a": 1, "b": [True, False, None], "c": {"d": -1.5e-3}},
    [1, "two", 3.0, [], {}],
    "a string", 42, 2**60, -0.0, None, True,
    {"ключ": "значение", "🔑": ["🎉", {"nested": {"deeper": [1, [2, [3]]]}}]},
]


async def test_text_and_json_both_ways_each_acked_after_the_peer_got_it(sides: Callable[..., Side]) -> None:
    a, b = sides(440), sides(660)
    await connect(a, b)
    order: list[str] = []

    def delivered(kind: str, body: Any) -> None:
        order.append("b delivered")
        b.inbound(kind, body)

    b.m.on_message = delivered
    await a.m.send("text", "first")
    order.append("a acked")
    assert order == ["b delivered", "a acked"]  # the ack comes after the peer's on_message ran

    for text in TEXTS:
        await a.m.send("text", text)
        await b.m.send("text", text[::-1])
    for body in JSONS:
        await a.m.send("json", body)
        await b.m.send("json", body)
    assert b.inbound.got == [("text", "first")] + [("text", t) for t in TEXTS] + [("json", j) for j in JSONS]
    assert a.inbound.got == [("text", t[::-1]) for t in TEXTS] + [("json", j) for j in JSONS]
    # concurrent sends arrive once each, in order
    await asyncio.gather(*(a.m.send("json", {"n": n}) for n in range(50)))
    assert [body for _, body in b.inbound.got[-50:]] == [{"n": n} for n in range(50)]
    # and the call's audio flows beside them
    await until(lambda: a.sink.frames > 10 and b.sink.frames > 10, "audio both ways")


async def test_a_message_sent_before_the_channel_opens_waits_for_it(sides: Callable[..., Side]) -> None:
    a, b = sides(440), sides(660)
    early = asyncio.ensure_future(a.m.send("text", "sent while connecting"))
    await connect(a, b)
    await asyncio.wait_for(early, WAIT)
    assert b.inbound.got == [("text", "sent while connecting")]


# ------------------------------------------------------------------ the cap
async def test_a_message_over_the_cap_is_one_clear_error_and_nothing_is_sent(
    sides: Callable[..., Side]
) -> None:
    ours, raw = await hostile_pair(sides)
    overhead = len(encode(1, "text", "").encode())
    with pytest.raises(MessageError) as err:
        await ours.m.send("text", "x" * (16384 - overhead + 1))
    assert str(err.value) == "message is 16385 bytes; at most 16384"
    assert err.value.usage  # the message is at fault, not the call
    with pytest.raises(MessageError, match=r"^message is 20\d\d\d bytes; at most 16384$"):
        await ours.m.send("text", "👋" * 5000)  # 4 bytes each: the cap is in bytes, not characters
    # exactly at the cap goes through, and is the first message on the wire
    sending = asyncio.ensure_future(ours.m.send("text", "y" * (16384 - overhead)))
    await asyncio.wait_for(raw.got.wait(), WAIT)
    assert len(raw.frames) == 1 and raw.frames[0]["id"] == 1 and len(raw.frames[0]["body"]) == 16384 - overhead
    raw.channel.send(encode_ack(1))
    await asyncio.wait_for(sending, WAIT)


# -------------------------------------------------------------- a hostile peer
def garbage() -> list[Any]:
    frame = '{{"v":1,"id":{id},"type":{type},"body":{body}}}'
    return [
        "not json at all", "", "[]", "null", "42", '"a string"', "{", "\ufffd",
        b"\x00\xff binary", b"",
        '{"v":2,"id":1,"type":"text","body":"future version"}',
        '{"v":true,"id":1,"type":"text","body":"v is a boolean"}',
        '{"v":1.0,"id":1,"type":"text","body":"v is a float"}',
        '{"v":1}', '{"id":1,"type":"text","body":"no version"}',
        frame.format(id='"1"', type='"text"', body='"id is a string"'),
        frame.format(id="0", type='"text"', body='"id 0"'),
        frame.format(id="-5", type='"text"', body='"negative id"'),
        frame.format(id="1.5", type='"text"', body='"fractional id"'),
        frame.format(id="true", type='"text"', body='"boolean id"'),
        frame.format(id=str(2**53), type='"text"', body='"id past 2**53"'),
        frame.format(id="9" * 5000, type='"text"', body='"5000-digit id"'),
        frame.format(id="3", type='"image"', body='"unknown type"'),
        frame.format(id="3", type='["text"]', body='"type is a list"'),
        frame.format(id="3", type="null", body='"type is null"'),
        frame.format(id="3", type='"text"', body="17"),
        frame.format(id="3", type='"text"', body='{"text": "in an object"}'),
        frame.format(id="3", type='"text"', body='"\\ud800 lone surrogate"'),
        frame.format(id="3", type='"json"', body='{"k": "\\udfff"}'),
        frame.format(id="3", type='"json"', body="NaN"),
        frame.format(id="3", type='"json"', body="[Infinity]"),
        frame.format(id="3", type='"json"', body="[" * 7000 + "]" * 7000),
        '{"v":1,"id":3,"type":"json"}',
        frame.format(id="3", type='"text"', body=json.dumps("x" * 20000)),
        "x" * 200_000,
        '{"v":1,"ack":"1"}', '{"v":1,"ack":-1}', '{"v":1,"ack":null}',
    ]


async def test_a_hostile_peer_cannot_raise_grow_memory_or_stop_real_messages(
    sides: Callable[..., Side], caplog: pytest.LogCaptureFixture
) -> None:
    ours, raw = await hostile_pair(sides)
    started = time.monotonic()
    loop_errors: list[Any] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: loop_errors.append(ctx))
    caplog.set_level(logging.WARNING, logger="callctl.media")
    junk = garbage()
    for frame in junk:
        raw.channel.send(frame)
    raw.channel.send(encode(1, "text", "legit after the junk"))
    assert await ours.inbound.until(1) == [("text", "legit after the junk")]
    assert ours.m.drops.dropped == len(junk)

    # a flood: 10,000 frames, junk and valid messages skipping every other id, in turn, as
    # fast as we take them.  (Not all queued at once: with both aiortc stacks on one event
    # loop, a burst of thousands overflows the UDP socket buffer on loopback, and the lost
    # datagrams take ICE consent, so the whole connection, with them; 100 in flight stays clear
    # of that on a machine busy with other tests too.)
    flood = 10_000
    small = [frame for frame in junk if len(frame) < 1000]
    seen = lambda: ours.m.drops.dropped + len(ours.inbound.got)  # noqa: E731
    for n in range(flood):
        raw.channel.send(small[n % len(small)] if n % 2 else encode(1000 + 2 * n, "json", n))
        if n % 100 == 99:
            behind = len(junk) + 1 + n - 100  # at most 100 in flight
            await until(lambda: seen() >= behind, "the flood to go through")  # noqa: B023
    raw.channel.send(encode(50_000, "text", "legit after the flood"))
    await ours.inbound.until(1 + flood // 2 + 1)
    assert ours.inbound.got[-1] == ("text", "legit after the flood")
    assert ours.m.drops.dropped == len(junk) + flood // 2
    assert len(ours.m.inbox) <= messages.SEEN_WINDOW  # what dedupe remembers is bounded
    # one log line per dropped frame, but rate-limited: a handful, not thousands
    dropped_lines = [r for r in caplog.records if "peer message dropped" in r.getMessage()]
    windows = 1 + int((time.monotonic() - started) / messages.DROP_LOG_WINDOW_S)
    assert 1 <= len(dropped_lines) <= windows * messages.DROP_LOG_BURST
    assert all(len(r.getMessage()) < 200 for r in dropped_lines)  # a huge frame is not logged whole
    # every valid one was acknowledged; the call goes on both ways
    await until(lambda: 50_000 in raw.acks(), "the ack of the last message", timeout=30)
    assert len(raw.acks()) == 1 + flood // 2 + 1
    sending = asyncio.ensure_future(ours.m.send("json", {"still": "working"}))
    await until(lambda: any(f.get("body") == {"still": "working"} for f in raw.frames), "our message")
    raw.channel.send(encode_ack(next(f["id"] for f in raw.frames if f.get("body") == {"still": "working"})))
    await asyncio.wait_for(sending, WAIT)
    assert not loop_errors and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    frames = ours.sink.frames
    await until(lambda: ours.sink.frames > frames + 10, "the call's audio, still flowing")


async def test_a_peer_that_never_acks(sides: Callable[..., Side]) -> None:
    ours, raw = await hostile_pair(sides)
    with pytest.raises(MessageError, match=r"^the peer did not acknowledge the message within 0.3 s$"):
        await ours.m.send("text", "anyone?", timeout=0.3)
    # the pending queue is capped: one over it is refused at once
    waiting = [asyncio.ensure_future(ours.m.send("json", n, timeout=30)) for n in range(messages.MAX_PENDING)]
    await asyncio.sleep(0)
    with pytest.raises(MessageError, match="already wait for the peer's acknowledgement"):
        await ours.m.send("text", "one too many")
    # the call ends: every waiting send fails with that, and so does any later one
    ours.m.close()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert {str(r) for r in results} == {"the call ended"}
    assert all(isinstance(r, MessageError) for r in results)
    with pytest.raises(MessageError, match="^the call ended$"):
        await ours.m.send("text", "after the end")


# --------------------------------------------------- peer connection rebuilt
async def restart(a: Side, b: Side) -> None:
    await a.peer.restart([])
    await b.peer.restart([])
    await connect(a, b)


async def test_a_message_sent_as_the_connection_is_rebuilt_arrives_once_on_the_new_one(
    sides: Callable[..., Side]
) -> None:
    a, b = sides(440), sides(660)
    await connect(a, b)
    await a.m.send("text", "before")
    for n in range(3):  # sent, then the connection replaced at once: on the old channel or the new
        sending = asyncio.ensure_future(a.m.send("text", f"during restart {n}"))
        await asyncio.sleep(0)
        await restart(a, b)
        await asyncio.wait_for(sending, WAIT)
    await a.m.send("text", "after")
    assert b.inbound.got == [("text", t) for t in ["before", *(f"during restart {n}" for n in range(3)), "after"]]
    frames = b.sink.frames
    await until(lambda: b.sink.frames > frames + 10, "audio on the new connection")


async def test_delivered_on_the_old_channel_but_unacked_is_resent_and_delivered_once(
    sides: Callable[..., Side]
) -> None:
    a, b = sides(440), sides(660)
    await connect(a, b)
    old_channel = a.peer._channel

    def delivered(kind: str, body: Any) -> None:
        b.inbound(kind, body)
        a.m.detach(old_channel)  # a's connection goes before b's ack reaches it

    b.m.on_message = delivered
    sending = asyncio.ensure_future(a.m.send("text", "once"))
    await b.inbound.until(1)
    await asyncio.sleep(0.2)
    assert not sending.done()  # the ack came on a channel a no longer listens to
    b.m.on_message = b.inbound
    await restart(a, b)
    await asyncio.wait_for(sending, WAIT)  # resent on the new channel, acked again ...
    assert b.inbound.got == [("text", "once")]  # ... but delivered only the first time
    assert b.m.inbox.floor == 1


# ------------------------------------------------------------ an older peer
async def test_an_offer_without_a_data_channel_is_a_call_without_messages(sides: Callable[..., Side]) -> None:
    older, ours = sides(440, messenger=False), sides(660)
    await connect(older, ours)
    assert not has_data_channel(older.peer.pc.localDescription.sdp)
    with pytest.raises(MessageError) as err:
        await ours.m.send("text", "hello?")
    assert str(err.value) == "the peer does not take messages in this call (the peer's offer has no data channel)"
    assert not err.value.usage
    frames = ours.sink.frames
    await until(lambda: ours.sink.frames > frames + 25, "the older peer's audio")
    await until(lambda: older.sink.frames > 25, "our audio at the older peer")


async def test_a_waiting_message_fails_once_the_connection_has_no_channel(sides: Callable[..., Side]) -> None:
    ours = sides(660)
    waiting = asyncio.ensure_future(ours.m.send("text", "to whoever offers"))
    older = sides(550, messenger=False)
    await connect(older, ours)
    with pytest.raises(MessageError, match="the peer's offer has no data channel"):
        await asyncio.wait_for(waiting, WAIT)


async def test_an_answer_refusing_the_data_channel_means_no_messages(sides: Callable[..., Side]) -> None:
    a, b = sides(440), sides(660, messenger=False)
    answer = await b.peer.create_answer(await a.peer.create_offer())
    refused = re.sub(r"(?m)^m=application \d+ ", "m=application 0 ", answer)
    assert has_data_channel(answer) and not has_data_channel(refused)
    await a.peer.apply_answer(refused)
    with pytest.raises(MessageError, match=r"\(the peer's answer has no data channel\)$"):
        await a.m.send("json", {})


# ---------------------------------------------------------------------- SDP
async def test_check_sdp_takes_a_data_channel_and_refuses_other_application_sections() -> None:
    side = Side(440)
    try:
        offer = await side.peer.create_offer()
    finally:
        await side.close()
    check_sdp(offer)
    assert has_data_channel(offer)
    assert "m=application" in offer and "webrtc-datachannel" in offer

    def variant(old: str, new: str) -> str:
        assert old in offer
        return offer.replace(old, new)

    legacy = variant("UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP 5000").replace(
        "a=sctp-port:5000", "a=sctpmap:5000 webrtc-datachannel 65535")
    check_sdp(legacy)
    refused = {
        "not a data channel": variant("UDP/DTLS/SCTP webrtc-datachannel", "UDP/DTLS/SCTP webrtc"),
        "no SCTP port": variant("a=sctp-port:5000\r\n", ""),
        "legacy, no sctpmap": variant("UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP 5000"),
        "an unknown section": variant("m=application", "m=text"),
        "two data channels": offer + offer[offer.index("m=application"):],
    }
    for name, sdp in refused.items():
        with pytest.raises(BadSdp) as err:
            check_sdp(sdp)
        assert str(err.value), name
    assert "not a WebRTC data channel" in _refusal(refused["not a data channel"])
    assert "'text' section" in _refusal(refused["an unknown section"])
    assert "more than one data channel" in _refusal(refused["two data channels"])
    # a refused data channel section (port 0) is no data channel, and no reason to refuse the call
    off = re.sub(r"(?m)^m=application \d+ ", "m=application 0 ", refused["not a data channel"])
    assert off != refused["not a data channel"]
    check_sdp(off)


def _refusal(sdp: str) -> str:
    try:
        check_sdp(sdp)
    except BadSdp as exc:
        return str(exc)
    raise AssertionError("accepted")


# -------------------------------------------------- framing, dedupe: no channel
def test_the_wire_format() -> None:
    assert encode(7, "text", "hé 👋") == '{"v":1,"id":7,"type":"text","body":"hé 👋"}'
    assert encode(8, "json", {"a": [1, None]}) == '{"v":1,"id":8,"type":"json","body":{"a":[1,null]}}'
    assert encode_ack(7) == '{"v":1,"ack":7}'
    assert decode(encode(7, "text", "hé 👋")) == Message(7, "text", "hé 👋")
    assert decode(encode(9, "json", None)) == Message(9, "json", None)
    assert decode(encode_ack(7)) == Ack(7)
    # a later version's extra fields are ignored; an escaped surrogate pair is fine
    assert decode('{"v":1,"id":2,"type":"text","body":"\\ud83d\\udc4b","extra":[1]}') == Message(2, "text", "👋")
    for frame in garbage():
        with pytest.raises(Garbage):
            decode(frame)


@pytest.mark.parametrize("kind, body, message", [
    ("image", "x", "unknown message kind 'image' (text or json)"),
    ("TEXT", "x", "unknown message kind 'TEXT' (text or json)"),
    ("text", 5, "a text message is a string, not int"),
    ("text", None, "a text message is a string, not NoneType"),
    ("json", {1, 2}, "the body is not JSON: Object of type set is not JSON serializable"),
    ("json", float("nan"), "the body is not JSON: Out of range float values are not JSON compliant"),
    ("json", "\ud800", "the body is not valid Unicode (it holds a lone surrogate)"),
])
async def test_what_send_refuses_before_anything_is_sent(kind: str, body: Any, message: str) -> None:
    messenger = Messenger(lambda kind, body: None)  # no channel: refused all the same
    with pytest.raises(MessageError) as err:
        await messenger.send(kind, body)
    assert str(err.value) == message
    assert "\n" not in str(err.value)
    assert err.value.usage


async def test_a_circular_or_too_deep_body_is_refused() -> None:
    circular: list[Any] = []
    circular.append(circular)
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    messenger = Messenger(lambda kind, body: None)
    for body in (circular, deep):
        with pytest.raises(MessageError, match="^the body is not JSON: "):
            await messenger.send("json", body)


def test_dedupe_delivers_each_id_once_and_stays_bounded() -> None:
    inbox = Inbox(window=100)
    assert [inbox.first_time(n) for n in (1, 2, 2, 1, 3)] == [True, True, False, False, True]
    assert inbox.floor == 3 and len(inbox) == 0  # contiguous ids: nothing but the floor kept
    assert inbox.first_time(5) and not inbox.first_time(5)
    assert inbox.first_time(4)  # the gap filled in
    assert inbox.floor == 5 and len(inbox) == 0
    for n in range(10, 10_000, 2):  # a peer skipping ids
        assert inbox.first_time(n)
    assert len(inbox) <= 100
    assert not inbox.first_time(9_998) and not inbox.first_time(10)
    assert inbox.first_time(10_001)


def test_drops_are_logged_one_line_each_up_to_a_burst_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callctl.media")
    drops = DropLog(burst=3, window_s=0.05)
    for n in range(1000):
        drops.note(f"junk {n}")
    assert [r.getMessage() for r in caplog.records] == [f"peer message dropped: junk {n}" for n in range(3)]
    time.sleep(0.06)
    drops.note("later")
    assert caplog.records[-1].getMessage() == "peer message dropped: later (997 more dropped before this, unlogged)"
    assert drops.dropped == 1001

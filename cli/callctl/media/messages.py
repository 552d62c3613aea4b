"""App messages between the two ends of a call, over a data channel negotiated with the call.

Every peer connection of a call carries one data channel, ``callctl``, made
by both sides out of band (``negotiated``, id 0, ordered, reliable), so no
message or renegotiation opens it.  The ``Messenger`` belongs to the call
and outlives each peer connection: a reconnect or re-offer builds a new
connection, whose channel is attached in place of the old one.

On the channel, each message is one JSON text::

    {"v":1,"id":7,"type":"text","body":"hello"}     type "text" (a string) or "json" (any value)
    {"v":1,"ack":7}                                 the peer's on_message has run for message 7

Ids count up from 1 for each call and direction.  A message not yet
acknowledged is sent again when a new channel opens; the receiver remembers
the ids it delivered, so each message reaches ``on_message`` once and a
duplicate is only acknowledged again.  What arrives malformed, oversized or
of an unknown type is dropped with a (rate-limited) log line: the peer may
be hostile, and nothing it sends raises.

The framing (``encode``, ``encode_ack``, ``decode``) and the dedupe
(``Inbox``) are plain functions and objects, testable without a channel.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from callctl.media.errors import MessageError

log = logging.getLogger("callctl.media")

#: The channel both sides create for the call: same label, same id, no in-band open.
LABEL = "callctl"
CHANNEL_ID = 0
VERSION = 1
KINDS = ("text", "json")
#: A message's encoded size by default (the whole JSON text, in UTF-8 bytes).
MAX_BYTES = 16384
#: Our messages waiting for the peer's ack at once; one more is refused.
MAX_PENDING = 256
#: The highest id: JSON numbers above 2**53 are not exact in a browser.
MAX_ID = 2**53 - 1
#: Delivered ids remembered above the contiguous run (a legitimate peer leaves no gaps).
SEEN_WINDOW = 4096
#: Acks queued on a channel the peer does not read, beyond what our own sends can queue:
#: past this, the peer's messages are dropped unanswered instead of queueing more acks.
ACK_BACKLOG_BYTES = 1 << 20
#: Dropped messages: at most this many log lines per window, then one line with the count.
DROP_LOG_BURST = 5
DROP_LOG_WINDOW_S = 10.0


class Garbage(Exception):
    """A frame from the peer that is dropped; the message says why (short, safe to log)."""


@dataclass(frozen=True)
class Message:
    id: int
    kind: str
    body: Any


@dataclass(frozen=True)
class Ack:
    id: int


# ---------------------------------------------------------------- framing
def encode(msg_id: int, kind: str, body: Any) -> str:
    """Message ``msg_id`` as its JSON text on the channel, or MessageError saying why not."""
    if kind not in KINDS:
        raise MessageError(f"unknown message kind {_short(kind)} (text or json)", usage=True)
    if kind == "text" and not isinstance(body, str):
        raise MessageError(f"a text message is a string, not {type(body).__name__}", usage=True)
    frame = {"v": VERSION, "id": msg_id, "type": kind, "body": body}
    try:
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise MessageError("the body is not JSON: it is nested too deeply", usage=True) from None
    except (TypeError, ValueError) as exc:
        raise MessageError(f"the body is not JSON: {exc}", usage=True) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError("the body is not valid Unicode (it holds a lone surrogate)",
                           usage=True) from None
    return text


def encode_ack(msg_id: int) -> str:
    return json.dumps({"v": VERSION, "ack": msg_id}, separators=(",", ":"))


def size(text: str) -> int:
    """A frame's size on the channel: its UTF-8 bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def decode(data: object, max_bytes: int = MAX_BYTES) -> Message | Ack:
    """What the peer sent, or Garbage: anything but a well-formed version-1 frame."""
    if not isinstance(data, str):
        raise Garbage("a binary message" if isinstance(data, bytes) else "not a text")
    if len(data) > max_bytes or size(data) > max_bytes:  # characters <= bytes: cheap first
        raise Garbage(f"{size(data)} bytes; at most {max_bytes}")
    try:
        frame = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Garbage("not JSON") from None
    if not isinstance(frame, dict):
        raise Garbage("not a JSON object")
    version = frame.get("v")
    if type(version) is not int or version != VERSION:
        raise Garbage(f"version {_short(version)}")
    if "ack" in frame:
        return Ack(_id(frame["ack"], "ack"))
    msg_id = _id(frame.get("id"), "id")
    kind = frame.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise Garbage(f"unknown type {_short(kind)}")
    if "body" not in frame:
        raise Garbage("no body")
    body = frame["body"]
    if kind == "text" and not isinstance(body, str):
        raise Garbage(f"a text whose body is a JSON {_json_type(body)}")
    if "\\u" in data:  # an escaped lone surrogate is valid JSON, but not a string to hand on
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Garbage("a lone surrogate") from None
    return Message(msg_id, kind, body)


def _id(value: Any, what: str) -> int:
    if type(value) is not int or not 0 < value <= MAX_ID:
        raise Garbage(f"{what} {_short(value)}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object"


# ----------------------------------------------------------------- dedupe
class Inbox:
    """Which of the peer's message ids were delivered: each is delivered once.

    Ids up to ``floor`` all count as delivered; the ones above it are kept in
    a set, at most ``window`` of them.  A peer that skips ids (a message it
    gave up on) fills the set; once full, the smallest leaves it and the
    floor rises to it, so memory is bounded whatever the peer sends.
    """

    def __init__(self, window: int = SEEN_WINDOW) -> None:
        self.window = window
        self.floor = 0
        self._above: set[int] = set()
        self._heap: list[int] = []

    def first_time(self, msg_id: int) -> bool:
        """Record ``msg_id``; True unless it was delivered before."""
        if msg_id <= self.floor or msg_id in self._above:
            return False
        self._above.add(msg_id)
        heapq.heappush(self._heap, msg_id)
        while len(self._above) > self.window:
            self.floor = heapq.heappop(self._heap)
            self._above.discard(self.floor)
        while self._heap and self._heap[0] == self.floor + 1:
            self.floor = heapq.heappop(self._heap)
            self._above.discard(self.floor)
        return True

    def __len__(self) -> int:
        return len(self._above)


class DropLog:
    """One log line per dropped frame, at most ``burst`` per window; then the count."""

    def __init__(self, burst: int = DROP_LOG_BURST, window_s: float = DROP_LOG_WINDOW_S) -> None:
        self.burst = burst
        self.window_s = window_s
        self.dropped = 0
        self._window_start = -window_s
        self._logged = 0
        self._quiet = 0

    def note(self, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._window_start >= self.window_s:
            self._window_start, self._logged = now, 0
        if self._logged >= self.burst:
            self._quiet += 1
            return
        self._logged += 1
        more = f" ({self._quiet} more dropped before this, unlogged)" if self._quiet else ""
        self._quiet = 0
        log.warning("peer message dropped: %s%s", why, more)


# -------------------------------------------------------------- messenger
def create_channel(pc: Any) -> Any:
    """The call's message channel on aiortc peer connection ``pc``: the peer makes the same one."""
    return pc.createDataChannel(LABEL, negotiated=True, id=CHANNEL_ID, ordered=True)


@dataclass
class _Pending:
    text: str
    done: asyncio.Future[None]


class Messenger:
    """One call's app messages, over whichever peer connection the call has now.

    ``on_message(kind, body)`` runs on the event loop once per message the
    peer sends (``"text"``: a str; ``"json"``: any JSON value); the peer's
    ``send`` returns once it has.  The peer connection ``attach``es each
    data channel it makes, ``detach``es it when the connection goes, and
    calls ``unavailable`` for a connection without one (an older peer).
    """

    def __init__(self, on_message: Callable[[str, Any], None], max_bytes: int = MAX_BYTES) -> None:
        self.on_message = on_message
        self.max_bytes = max_bytes
        self.inbox = Inbox()
        self.drops = DropLog()
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}  # in id order: resent in that order
        self._channel: Any = None
        self._absent: str | None = None  # why this peer connection has no channel
        self._closed = False

    # ------------------------------------------------------------ sending
    async def send(self, kind: str, body: Any, timeout: float = 10.0) -> None:
        """Send a message; returns when the peer acknowledged it, else MessageError."""
        text = encode(self._next_id, kind, body)
        n = size(text)
        if n > self.max_bytes:
            raise MessageError(f"message is {n} bytes; at most {self.max_bytes}", usage=True)
        self._check_open()
        if len(self._pending) >= MAX_PENDING:
            raise MessageError(f"{MAX_PENDING} messages already wait for the peer's acknowledgement")
        msg_id = self._next_id
        self._next_id += 1
        pending = _Pending(text, asyncio.get_running_loop().create_future())
        self._pending[msg_id] = pending
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            self._transmit(channel, msg_id, pending)
        try:
            await asyncio.wait_for(pending.done, timeout)
        except TimeoutError:
            raise MessageError(
                f"the peer did not acknowledge the message within {timeout:g} s") from None
        finally:
            self._pending.pop(msg_id, None)

    def _check_open(self) -> None:
        if self._closed:
            raise MessageError("the call ended")
        if self._absent is not None:
            raise MessageError(f"the peer does not take messages in this call ({self._absent})")

    def _transmit(self, channel: Any, msg_id: int, pending: _Pending) -> None:
        from aiortc.exceptions import InvalidStateError

        try:
            channel.send(pending.text)
        except InvalidStateError:
            pass  # the channel is closing: sent again on the next one
        except ValueError:  # the peer advertised a smaller maximum message size
            self._fail(msg_id, MessageError(
                f"the peer's data channel refuses a message of {size(pending.text)} bytes"))

    def _fail(self, msg_id: int, error: MessageError) -> None:
        pending = self._pending.get(msg_id)
        if pending is not None and not pending.done.done():
            pending.done.set_exception(error)

    def _fail_all(self, error: MessageError) -> None:
        for msg_id in list(self._pending):
            self._fail(msg_id, error)

    # ------------------------------------------------------------ channels
    def attach(self, channel: Any) -> None:
        """The data channel of the call's new peer connection: messages go over it from now on."""
        if self._closed:
            return
        self._channel = channel
        self._absent = None
        channel.on("open", lambda: self._opened(channel))
        channel.on("message", lambda data: self._received(channel, data))
        if channel.readyState == "open":
            self._opened(channel)

    def detach(self, channel: Any) -> None:
        """That channel's peer connection is gone: unacknowledged messages wait for the next."""
        if self._channel is channel:
            self._channel = None

    def unavailable(self, why: str) -> None:
        """The call's peer connection has no data channel (``why``: which description said so)."""
        self._channel = None
        self._absent = why
        self._fail_all(MessageError(f"the peer does not take messages in this call ({why})"))

    def close(self) -> None:
        """The call ended: waiting sends fail, and so does any later one."""
        self._closed = True
        self._channel = None
        self._fail_all(MessageError("the call ended"))

    def _opened(self, channel: Any) -> None:
        if channel is not self._channel:
            return
        for msg_id, pending in list(self._pending.items()):  # not acked on the old channel
            if not pending.done.done():
                self._transmit(channel, msg_id, pending)

    # ----------------------------------------------------------- receiving
    def _received(self, channel: Any, data: object) -> None:
        """A frame from the peer; never raises (this runs inside aiortc's SCTP receive)."""
        if channel is not self._channel:
            return  # a replaced connection's: the peer sends it again on the new one
        try:
            self._handle(channel, data)
        except Exception:
            log.exception("handling a peer message failed")

    def _handle(self, channel: Any, data: object) -> None:
        try:
            frame = decode(data, self.max_bytes)
        except Garbage as exc:
            self.drops.note(str(exc))
            return
        if isinstance(frame, Ack):
            pending = self._pending.get(frame.id)
            if pending is not None and not pending.done.done():
                pending.done.set_result(None)
            return
        if channel.bufferedAmount > MAX_PENDING * self.max_bytes + ACK_BACKLOG_BYTES:
            self.drops.note("the peer does not read our acknowledgements")
            return
        if self.inbox.first_time(frame.id):
            try:
                self.on_message(frame.kind, frame.body)
            except Exception:
                log.exception("on_message failed for a peer message")
        self._ack(channel, frame.id)

    @staticmethod
    def _ack(channel: Any, msg_id: int) -> None:
        from aiortc.exceptions import InvalidStateError

        try:
            channel.send(encode_ack(msg_id))
        except (InvalidStateError, ValueError):
            pass  # the channel is closing: the peer sends the message again on the next

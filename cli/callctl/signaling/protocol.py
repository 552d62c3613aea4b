"""The signaling wire protocol: every request, response and event, defined once.

The server and the client both import these msgspec structs, so a message has
exactly one definition.  Events travel as Server-Sent Events whose ``data`` is
the JSON of one of the ``*Event`` structs below (tagged by its ``event`` field);
the SSE ``id`` carries the event id used for ``Last-Event-ID`` replay.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

import msgspec

API_VERSION = "v1"

#: User, service and device ids: short, printable, no separators that would
#: need escaping in URLs, logs or Redis keys.  ``\Z``, not ``$``: ``$`` also
#: matches before a trailing newline ("bob\n" would pass and split log lines).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z"
ID_PATTERN_RE = re.compile(ID_PATTERN)
Ident = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]

#: Event ids: ``EPOCH-SEQUENCE`` (the memory store) or ``EPOCH-MS-SEQUENCE`` (a Redis stream's
#: entry id); ASCII only: ``str.isdigit`` takes "²", ``int`` does not.
EVENT_ID_RE = re.compile(r"[0-9a-z]{1,32}-[0-9]{1,18}(?:-[0-9]{1,18})?")
#: How deep the JSON ``data`` of a signal may nest (real signals: 1 or 2).
MAX_SIGNAL_DEPTH = 8
#: ``GET /v1/events?allow=``: at most this many user ids.
MAX_ALLOW = 256


def valid_id(value: object) -> bool:
    """A user, service or device id, whole (the one check every edge uses)."""
    return isinstance(value, str) and ID_PATTERN_RE.fullmatch(value) is not None


def valid_event_id(value: object) -> bool:
    return isinstance(value, str) and EVENT_ID_RE.fullmatch(value) is not None


def depth(value: object, limit: int) -> int:
    """How deep ``value`` nests (lists and dicts), counting no further than ``limit + 1``.

    Iterative, so a hostile 100,000-level document cannot exhaust the stack.
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > limit:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest

#: The request header that names the sending device (HTTP headers are case-insensitive).
DEVICE_HEADER = "X-Callctl-Device"

#: An SDP blob is capped at 64 KiB; real offers are 1-5 KiB.
MAX_SDP_BYTES = 64 * 1024
Sdp = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SDP_BYTES)]

#: A whole request body may not exceed this (SDP plus a little JSON).
MAX_BODY_BYTES = MAX_SDP_BYTES + 4 * 1024


class Media(str, enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"


class CallState(str, enum.Enum):
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


class EndReason(str, enum.Enum):
    """Why a call ended.  The client adds device-side reasons of its own."""

    HANGUP = "hangup"
    DECLINED = "declined"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    NETWORK_LOST = "network_lost"
    SERVER_UNREACHABLE = "server_unreachable"
    AUTH_FAILED = "auth_failed"
    DEVICE_ERROR = "device_error"
    MAX_DURATION = "max_duration"
    BAD_SDP = "bad_sdp"
    INTERNAL_ERROR = "internal_error"


#: Reasons a party may give when it hangs up a call itself.
HANGUP_REASONS = frozenset(
    {
        EndReason.HANGUP,
        EndReason.NETWORK_LOST,
        EndReason.DEVICE_ERROR,
        EndReason.MAX_DURATION,
        EndReason.BAD_SDP,
        EndReason.INTERNAL_ERROR,
    }
)


def hangup_reason(reason: EndReason, *, ringing: bool, by_caller: bool) -> EndReason:
    """How a party's hangup ends a call (the rule both the server and the client keep).

    Before an answer, a plain hangup is the caller cancelling or the callee
    declining; any other reason (max_duration, device_error, ...) stands.
    """
    if ringing and reason is EndReason.HANGUP:
        return EndReason.CANCELLED if by_caller else EndReason.DECLINED
    return reason


class Party(str, enum.Enum):
    """Who did something to a call, seen from the server."""

    CALLER = "caller"
    CALLEE = "callee"
    SERVER = "server"


class ErrorCode(str, enum.Enum):
    """Stable error codes of ``{"error": code, "message": text}`` bodies (statuses: ``STATUS``)."""

    MALFORMED = "malformed"  # body is not JSON
    INVALID = "invalid"  # JSON of the wrong shape, bad ids, unknown fields
    TOO_LARGE = "too_large"  # body over MAX_BODY_BYTES
    UNAUTHORIZED = "unauthorized"  # token missing, expired, forged
    FORBIDDEN = "forbidden"  # valid token, not allowed
    NOT_FOUND = "not_found"  # no such call (or route)
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CALL_ENDED = "call_ended"  # the call is over
    ALREADY_ANSWERED = "already_answered"  # another device answered first
    WRONG_STATE = "wrong_state"  # e.g. decline of a connected call
    TOO_MANY_DEVICES = "too_many_devices"  # the user's device cap is reached
    RATE_LIMITED = "rate_limited"  # slow down, see Retry-After
    UNAVAILABLE = "unavailable"  # server shutting down
    INTERNAL = "internal"  # a bug


#: The HTTP status of each error code: the one place they are paired.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.INVALID: 422,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CALL_ENDED: 409,
    ErrorCode.ALREADY_ANSWERED: 409,
    ErrorCode.WRONG_STATE: 409,
    ErrorCode.TOO_MANY_DEVICES: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
assert set(STATUS) == set(ErrorCode), "every error code has a status"


class Error(msgspec.Struct, forbid_unknown_fields=True):
    error: ErrorCode
    message: str


class IceServer(msgspec.Struct, omit_defaults=True):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServers(msgspec.Struct):
    """``GET /v1/ice-servers``: this user's STUN/TURN servers, TURN credentials fresh."""

    ice_servers: list[IceServer] = []
    #: When the TURN credentials stop working (Unix time; none: they do not expire).
    expires_at: float | None = None


# --------------------------------------------------------------------- requests


class Request(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of request bodies: unknown fields are an error, not ignored."""


class CreateCall(Request):
    to: Ident
    sdp: Sdp
    media: Media = Media.AUDIO
    #: Ask for a shorter ring timeout than the server's (never a longer one).
    ring_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None


class AnswerCall(Request):
    sdp: Sdp


class DeclineCall(Request):
    #: Decline because this device is in another call: the caller sees ``busy``.
    busy: bool = False
    #: Decline because this device's own ring timeout ran out: the caller sees ``no_answer``.
    no_answer: bool = False


class HangupCall(Request):
    reason: EndReason = EndReason.HANGUP


class CreateTicket(Request):
    """``POST /v1/stream-tickets`` takes an empty body."""


class SignalCall(Request):
    """An in-call message relayed verbatim to the other party."""

    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,63}\Z")]
    data: dict[str, Any] = {}


# -------------------------------------------------------------------- responses


class CallInfo(msgspec.Struct, omit_defaults=True):
    """A call as ``GET /v1/calls/{id}`` and the POSTs return it."""

    call_id: str
    caller: str
    callee: str
    media: Media
    state: CallState
    created_at: float
    ring_expires_at: float
    answered_at: float | None = None
    ended_at: float | None = None
    reason: EndReason | None = None
    ended_by: Party | None = None
    #: The callee's answer SDP, once answered.
    answer_sdp: str | None = None
    ice_servers: list[IceServer] = []


class StreamTicket(msgspec.Struct):
    """A single-use pass for ``GET /v1/events?ticket=...`` (browsers' EventSource)."""

    ticket: str
    expires_in: float


class Health(msgspec.Struct):
    status: str
    version: str
    streams: int
    calls_active: int


# ----------------------------------------------------------------------- events


class Event(msgspec.Struct, tag_field="event", omit_defaults=True):
    """Base of every event on ``GET /v1/events``."""


class Registered(Event, tag="registered"):
    """First event of every stream: this device is online."""

    user: str
    service: str
    device: str
    devices_online: int
    heartbeat_s: float
    server_id: str
    ice_servers: list[IceServer] = []
    #: When the TURN credentials in ``ice_servers`` stop working (Unix time; none: never).
    ice_expires_at: float | None = None
    #: How many events follow at once (replayed after Last-Event-ID, pending rings).
    replayed: int = 0
    #: Resume point for a client that has no event id yet: replaying from it
    #: yields only events published after this stream opened.
    cursor: str | None = None


class CallIncoming(Event, tag="call.incoming"):
    """The ring: someone calls this user (sent to every device of the callee)."""

    call_id: str
    caller: str
    media: Media
    sdp: str
    ring_expires_at: float


class CallRinging(Event, tag="call.ringing"):
    """To the caller: a device of the callee is ringing (ringback)."""

    call_id: str
    devices: int


class CallAnswered(Event, tag="call.answered"):
    """To the caller: the callee answered with this SDP."""

    call_id: str
    sdp: str


class CallEnded(Event, tag="call.ended"):
    call_id: str
    reason: EndReason
    by: Party


class CallMissed(Event, tag="call.missed"):
    """To the callee: a call that never rang here (every device was in another call: busy)."""

    call_id: str
    caller: str
    media: Media
    reason: EndReason


class CallSignal(Event, tag="call.signal"):
    """An in-call message from the other party (mute, renegotiation, ...)."""

    call_id: str
    sender: str
    kind: str
    data: dict[str, Any] = {}


class StreamClosing(Event, tag="stream.closing"):
    """The server ends this stream (shutdown, token expiry, replaced device)."""

    reason: Literal["shutdown", "token_expired", "replaced", "overflow"]


ServerEvent = (Registered | CallIncoming | CallRinging | CallAnswered | CallEnded | CallMissed | CallSignal
               | StreamClosing)

_event_decoder = msgspec.json.Decoder(ServerEvent)
_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes | str) -> Event:
    return _event_decoder.decode(data)


def event_name(event: Event) -> str:
    return str(type(event).__struct_config__.tag)

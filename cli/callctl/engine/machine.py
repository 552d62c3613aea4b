"""The call as a pure state machine: events in, actions out (no asyncio, no aiortc).

Everything that decides a call's state lives here.  ``Call.handle(event)``
looks up ``(role, state, type(event))`` in ``TRANSITIONS``; a pair that is not
in the table raises ``LocalProtocolError`` (our own command made no sense in
this state) or ``RemoteProtocolError`` (the network told us something that no
longer applies) and leaves the state unchanged.  The session that executes
the actions lives in ``session.py``.

    caller:  idle ─Dial─▶ outgoing ─Answered─▶ connecting ─MediaUp─▶ connected ─▶ ended
    callee:  idle ─Ring─▶ incoming ─Accept──▶ connecting ─MediaUp─▶ connected ─▶ ended
    either:  connected ─MediaLost─▶ reconnecting ─MediaUp─▶ connected
                                    reconnecting ─ReconnectTimeout─▶ ended (network_lost)

Reconnecting: the caller negotiates a fresh media path through the server
(``Reoffer`` with a new attempt number, again every ``ArmReconnectRetry``
until one connects); the callee answers each and asks the caller to start
when it noticed the loss first (``RequestReconnect``).  The call's id, timers,
mute and video state carry over.  A server that has no record of the call
(``CallForgotten``: it restarted) ends it: ``server_unreachable``, or the
peer's ``hangup`` when the reconnect began with the peer closing the media
path (its hangup had no server to reach us through).

Callee preparation: the media path may come up while still ringing
(``MediaUp`` in outgoing/incoming only sets ``media_up``), so that answering
moves straight to connected.  The caller applies a prepared answer early
(``Prepared``); if a *different* device then answers, the answer differs
from the prepared one and the caller negotiates afresh (``Reoffer``).

Every end reason is decided here, from an event; the one exception is
``Failed(reason)``, whose reason comes from ``reasons.reason_for`` (a request
or a device that raised).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from msgspec import Struct, field

from callctl.engine.events import VIDEO_STATES, Ev
from callctl.signaling.protocol import EndReason, Media, hangup_reason


#: Reconnecting: a re-offer that has not connected after this long is replaced by the next.
RETRY_S = 2.0
#: Reconnecting: asked for a fresh attempt sooner than this after the last one: it is on its way.
MIN_ATTEMPT_GAP_S = 0.5


class Role(str, enum.Enum):
    CALLER = "caller"
    CALLEE = "callee"


class State(str, enum.Enum):
    IDLE = "idle"
    OUTGOING = "outgoing"
    INCOMING = "incoming"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


class Source(str, enum.Enum):
    """Who ended the call, seen from this device."""

    LOCAL = "local"
    REMOTE = "remote"
    SERVER = "server"


class ProtocolError(Exception):
    pass


class LocalProtocolError(ProtocolError):
    """We asked for something this state does not allow (e.g. accept while idle)."""


class RemoteProtocolError(ProtocolError):
    """The other side or the server reported something that does not apply now."""


# ---------------------------------------------------------------------- events


class Dial(Struct, frozen=True):
    peer: str
    media: Media = Media.AUDIO


class Created(Struct, frozen=True):
    """The server took our call and gave it an id; it rings for ``ring_s`` at most."""

    call_id: str
    ring_s: float | None = None


class Ringing(Struct, frozen=True):
    """The callee's device rings (ringback for the caller)."""


class Answered(Struct, frozen=True):
    """The callee answered with this SDP."""

    sdp: str


class Ring(Struct, frozen=True):
    """An incoming call."""

    call_id: str
    peer: str
    media: Media
    sdp: str
    #: How long the server lets it ring from now.
    ring_s: float | None = None


class Accept(Struct, frozen=True):
    pass


class AnswerSent(Struct, frozen=True):
    """The server confirmed our answer: we are the device that has the call."""


class Decline(Struct, frozen=True):
    busy: bool = False
    #: The callee's own ``--ring-timeout`` ran out: the caller sees ``no_answer``.
    no_answer: bool = False


class MediaUp(Struct, frozen=True):
    """ICE and DTLS are connected."""


class Hangup(Struct, frozen=True):
    """End the call from here; ``reason`` for device-side ends (max_duration, ...)."""

    reason: EndReason = EndReason.HANGUP


class RemoteEnded(Struct, frozen=True):
    reason: EndReason
    by_server: bool = False


class Failed(Struct, frozen=True):
    """Something on this device ended the call: media lost, server gone, device error."""

    reason: EndReason


class ConnectTimeout(Struct, frozen=True):
    """ICE/DTLS did not complete in time after answer/accept (only counts while connecting)."""

    seconds: float = 0.0
    #: What the session knows of why (e.g. no relay candidate was gathered).
    detail: str = ""


class ReconnectRequested(Struct, frozen=True):
    """Caller: the callee lost the media path and asks us to negotiate a new one.

    ``attempt``: the last re-offer the callee had answered.  A request that
    names an older one than ours was held up by the outage: its loss is over.
    """

    attempt: int = 0


class SignalingBack(Struct, frozen=True):
    """Our event stream is back while the media path is down: the peer can be reached again."""


class ReconnectRetry(Struct, frozen=True):
    """Caller: re-offer attempt ``attempt`` did not connect in time; try again."""

    attempt: int


class ReconnectTimeout(Struct, frozen=True):
    """The media path did not come back within the reconnect timeout (of reconnect ``epoch``)."""

    epoch: int
    seconds: float = 0.0


class TalkTimeUp(Struct, frozen=True):
    """``--hangup-after`` passed: a normal hangup."""


class MaxDurationReached(Struct, frozen=True):
    """``--max-duration`` passed."""


class RingExpired(Struct, frozen=True):
    """Our own ring deadline passed and the server said nothing (it may have been lost)."""


class CallForgotten(Struct, frozen=True):
    """After a reconnect the server has no record of the call (it restarted)."""


class MediaLost(Struct, frozen=True):
    """The media path failed, or the peer stopped sending."""

    #: The peer closed it (DTLS close, RTCP BYE) and no hangup came for it within a grace: a
    #: hangup that could not reach us through the server, or a peer starting a reconnect.
    closed_by_peer: bool = False


class SignalingLost(Struct, frozen=True):
    """The server stayed unreachable for the grace time before the call connected."""


class AnswerRefused(Struct, frozen=True):
    """The server refused our answer: another device was first, or the call ended meanwhile."""

    already_answered: bool
    #: How the call ended, when the server could tell us.
    reason: EndReason | None = None
    by_server: bool = False


class Prepared(Struct, frozen=True):
    """Caller: a device of the callee prepared its answer while ringing."""

    sdp: str
    device: str


class Reoffered(Struct, frozen=True):
    """Callee: the caller negotiates afresh (another device had prepared, or the media path broke)."""

    sdp: str
    attempt: int = 0


class Reanswered(Struct, frozen=True):
    """Caller: the callee's answer to our re-offer number ``attempt``."""

    sdp: str
    attempt: int = 0


class ReofferRefused(Struct, frozen=True):
    """Caller: the callee found our re-offer unusable."""


class PeerMuted(Struct, frozen=True):
    muted: bool


class PeerHeld(Struct, frozen=True):
    """The peer put the call on hold (``held``) or took it off."""

    held: bool


class PeerVideo(Struct, frozen=True):
    """The peer's video changed: paused, resumed, enabled or disabled."""

    state: str


CallEvent = (
    ConnectTimeout | Dial | Created | Ringing | Answered | Ring | Accept | AnswerSent | Decline | MediaUp
    | Hangup | RemoteEnded | Failed | MediaLost | SignalingLost | AnswerRefused | Prepared | Reoffered
    | Reanswered | ReofferRefused | PeerMuted | PeerHeld | PeerVideo | RingExpired | CallForgotten | TalkTimeUp
    | MaxDurationReached | ReconnectRequested | ReconnectRetry | ReconnectTimeout | SignalingBack
)

# --------------------------------------------------------------------- actions


class CreateCall(Struct, frozen=True):
    peer: str
    media: Media


class ApplyAnswer(Struct, frozen=True):
    sdp: str


class Prepare(Struct, frozen=True):
    """Callee: build the answer and bring the media path up while ringing."""

    sdp: str


class SendAnswer(Struct, frozen=True):
    pass


class SendDecline(Struct, frozen=True):
    busy: bool
    no_answer: bool = False


class SendHangup(Struct, frozen=True):
    reason: EndReason


class StartMedia(Struct, frozen=True):
    """Start sending our source and playing the peer."""


class Release(Struct, frozen=True):
    """Close the media path and stop timers: the call is over."""


class ApplyEarlyAnswer(Struct, frozen=True):
    """Caller: apply a prepared answer now, so the media path comes up while ringing."""

    sdp: str


class Reoffer(Struct, frozen=True):
    """Caller: a fresh peer connection and offer, sent as a ``reoffer`` signal."""

    attempt: int = 0


class AnswerReoffer(Struct, frozen=True):
    """Callee: a fresh peer connection answering ``sdp``; ``start`` it if media already runs."""

    sdp: str
    start: bool
    attempt: int = 0


class ApplyReanswer(Struct, frozen=True):
    sdp: str
    attempt: int = 0


class ArmCallTimers(Struct, frozen=True):
    """The call is connected: ``--hangup-after`` and ``--max-duration`` count from now."""


class ArmReconnectDeadline(Struct, frozen=True):
    """The media path must come back within the reconnect timeout (ends reconnect ``epoch``)."""

    epoch: int


class ArmReconnectRetry(Struct, frozen=True):
    """Caller: if re-offer ``attempt`` has not connected after the retry interval, try again."""

    attempt: int


class RefreshSignaling(Struct, frozen=True):
    """Reconnect the event stream now: the network that broke the media may have broken it too."""


class RequestReconnect(Struct, frozen=True):
    """Callee: ask the caller (``reconnect`` signal) to negotiate a new media path.

    ``attempt``: the last re-offer we answered (the caller drops a request older than its own).
    """

    attempt: int = 0


class ArmConnectTimeout(Struct, frozen=True):
    """ICE and DTLS must complete within the connect timeout from now."""


class ArmRingDeadline(Struct, frozen=True):
    """Keep our own deadline for the ring: the server's, plus a grace."""

    seconds: float


class Notify(Struct, frozen=True):
    """Tell the user: an event name and its fields (see docs/EVENTS.md)."""

    event: Ev
    fields: dict[str, object] = field(default_factory=dict)


Action = (
    CreateCall | ApplyAnswer | Prepare | SendAnswer | SendDecline | SendHangup | StartMedia
    | Release | Notify | ApplyEarlyAnswer | Reoffer | AnswerReoffer | ApplyReanswer
    | ArmConnectTimeout | ArmRingDeadline | ArmCallTimers | ArmReconnectDeadline | ArmReconnectRetry
    | RefreshSignaling | RequestReconnect
)


# ----------------------------------------------------------------------- call


class Outcome(Struct, frozen=True):
    """How an ended call ended."""

    reason: EndReason
    source: Source
    call_id: str | None
    duration_s: float



class Call(Struct):
    role: Role
    state: State = State.IDLE
    call_id: str | None = None
    peer: str | None = None
    media: Media = Media.AUDIO
    media_up: bool = False
    accepted: bool = False
    #: Caller: a device of the callee rings (the ringback plays).
    rang: bool = False
    #: Caller: the answer a callee's device prepared (applied early), and that device.
    early_answer: str | None = None
    prepared_by: str | None = None
    #: Caller: we sent a re-offer (so a refusal of one is news about ours), and its number.
    reoffered: bool = False
    attempt: int = 0
    #: Times the media path broke and a reconnect began; when the current one began.
    reconnects: int = 0
    lost_at: float | None = None
    #: The current reconnect began with the peer closing the media path (not with it breaking).
    peer_closed: bool = False
    #: Caller: when the current re-offer attempt started (or got its answer).
    attempt_at: float | None = None
    #: Callee: the last re-offer attempt we answered.
    answered_attempt: int = 0
    peer_muted: bool = False
    #: The peer holds the call (``peer.held``): no media either way until it takes it off.
    peer_held: bool = False
    peer_video: str | None = None
    reason: EndReason | None = None
    source: Source | None = None
    #: Clock readings (seconds, whatever clock the session feeds in).
    started_at: float | None = None
    connected_at: float | None = None
    ended_at: float | None = None

    def handle(self, event: CallEvent, now: float) -> list[Action]:
        handler = TRANSITIONS.get((self.role, self.state, type(event)))
        if handler is None:
            error = LocalProtocolError if type(event) in LOCAL_EVENTS else RemoteProtocolError
            raise error(
                f"{type(event).__name__} is not possible for a {self.role.value} in state "
                f"{self.state.value}"
            )
        return handler(self, event, now)

    def outcome(self) -> Outcome:
        assert self.reason is not None and self.source is not None, "the call has not ended"
        return Outcome(self.reason, self.source, self.call_id, self.duration_s)

    def can(self, event_type: type) -> bool:
        return (self.role, self.state, event_type) in TRANSITIONS

    @property
    def duration_s(self) -> float:
        if self.connected_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else self.connected_at
        return round(end - self.connected_at, 3)

    # ----------------------------------------------------------- helpers
    def _ids(self) -> dict[str, object]:
        return {"call_id": self.call_id, "peer": self.peer, "media": self.media.value}

    def _connect_if_ready(self, now: float) -> list[Action]:
        if self.media_up and self.accepted:
            self.state = State.CONNECTED
            self.connected_at = now
            setup_ms = round((now - (self.started_at or now)) * 1000, 1)
            return [ArmCallTimers(), Notify(Ev.CALL_CONNECTED, {**self._ids(), "setup_ms": setup_ms})]
        return []

    def _end(
        self, now: float, reason: EndReason, source: Source, *extra: Action
    ) -> list[Action]:
        self.state = State.ENDED
        self.reason, self.source, self.ended_at = reason, source, now
        return [
            *extra,
            Release(),
            Notify(
                Ev.CALL_ENDED,
                {
                    **self._ids(),
                    "reason": reason.value,
                    "source": source.value,
                    "duration_s": self.duration_s,
                },
            ),
        ]


# ------------------------------------------------------------- transitions

#: A handler takes the event its row names (typed per handler; the table erases it).
Handler = Callable[[Call, Any, float], list[Action]]


def _dial(c: Call, e: Dial, now: float) -> list[Action]:
    c.state, c.peer, c.media, c.started_at = State.OUTGOING, e.peer, e.media, now
    return [CreateCall(e.peer, e.media), Notify(Ev.CALL_OUTGOING, c._ids())]


def _created(c: Call, e: Created, now: float) -> list[Action]:
    c.call_id = e.call_id
    deadline: list[Action] = [ArmRingDeadline(e.ring_s)] if e.ring_s is not None else []
    return [*deadline, Notify(Ev.CALL_CREATED, c._ids())]


def _ringing(c: Call, e: Ringing, now: float) -> list[Action]:
    c.rang = True
    return [Notify(Ev.CALL_RINGBACK, c._ids())]


def _prepared(c: Call, e: Prepared, now: float) -> list[Action]:
    if c.early_answer is not None:
        return []  # the first device to prepare is the one we connect to early
    c.early_answer, c.prepared_by = e.sdp, e.device
    return [ApplyEarlyAnswer(e.sdp)]


def _answered(c: Call, e: Answered, now: float) -> list[Action]:
    c.state, c.accepted = State.CONNECTING, True
    # another device prepared, this one answered: negotiate afresh with it
    c.reoffered = c.early_answer not in (None, e.sdp)
    if c.reoffered:
        c.attempt += 1
    negotiate: Action = Reoffer(c.attempt) if c.reoffered else ApplyAnswer(e.sdp)
    return [negotiate, ArmConnectTimeout(), StartMedia(), Notify(Ev.CALL_CONNECTING, c._ids()),
            *c._connect_if_ready(now)]


def _reanswered(c: Call, e: Reanswered, now: float) -> list[Action]:
    if not c.reoffered or e.attempt != c.attempt:
        return []  # an answer to a re-offer we never sent, answered already, or an older one
    if c.state == State.RECONNECTING:
        c.attempt_at = now  # the answer is here: give ICE a whole retry interval from now
        return [ApplyReanswer(e.sdp, e.attempt), ArmReconnectRetry(e.attempt)]
    c.reoffered = False
    return [ApplyReanswer(e.sdp, e.attempt)]


def _ring(c: Call, e: Ring, now: float) -> list[Action]:
    c.state, c.call_id, c.peer, c.media, c.started_at = (
        State.INCOMING, e.call_id, e.peer, e.media, now,
    )
    deadline: list[Action] = [ArmRingDeadline(e.ring_s)] if e.ring_s is not None else []
    return [Prepare(e.sdp), *deadline, Notify(Ev.CALL_INCOMING, c._ids())]


def _accept(c: Call, e: Accept, now: float) -> list[Action]:
    c.state = State.CONNECTING
    c.started_at = now  # the callee's set-up time runs from accept
    # media starts with the accept, not after the server confirms the answer:
    # the caller plays nothing until it is answered, so nothing leaks early
    return [SendAnswer(), ArmConnectTimeout(), StartMedia(), Notify(Ev.CALL_CONNECTING, c._ids())]


def _answer_sent(c: Call, e: AnswerSent, now: float) -> list[Action]:
    c.accepted = True
    return c._connect_if_ready(now)


def _answer_refused(c: Call, e: AnswerRefused, now: float) -> list[Action]:
    if e.already_answered:
        return c._end(now, EndReason.ANSWERED_ELSEWHERE, Source.REMOTE)
    source = Source.SERVER if e.by_server else Source.REMOTE
    return c._end(now, e.reason or EndReason.CANCELLED, source)


def _reoffered(c: Call, e: Reoffered, now: float) -> list[Action]:
    c.answered_attempt = max(c.answered_attempt, e.attempt)
    answer = AnswerReoffer(e.sdp, start=c.state != State.INCOMING, attempt=e.attempt)
    if c.state == State.CONNECTED:  # the caller found the media path broken before we did
        return [*_reconnecting(c, now), answer]
    return [answer]


def _reconnecting(c: Call, now: float) -> list[Action]:
    c.state, c.lost_at = State.RECONNECTING, now
    c.reconnects += 1
    return [Notify(Ev.CALL_RECONNECTING, {"call_id": c.call_id, "peer": c.peer}),
            ArmReconnectDeadline(c.reconnects)]


def _caller_reoffers(c: Call, now: float) -> list[Action]:
    c.attempt += 1
    c.reoffered, c.attempt_at = True, now
    return [Reoffer(c.attempt), ArmReconnectRetry(c.attempt)]


def _attempt_now(c: Call, e: ReconnectRequested | SignalingBack, now: float) -> list[Action]:
    """The peer is reachable again (it asked, or our stream is back): a fresh attempt now."""
    if isinstance(e, ReconnectRequested) and e.attempt >= c.attempt:
        return []  # it has our current attempt: its answer is on its way
    if c.attempt_at is not None and now - c.attempt_at < MIN_ATTEMPT_GAP_S:
        return []  # one is on its way
    return _caller_reoffers(c, now)


def _lost_connected(c: Call, e: MediaLost | ReconnectRequested, now: float) -> list[Action]:
    """The media path of a connected call broke: reconnect instead of hanging up."""
    if isinstance(e, ReconnectRequested) and e.attempt < c.attempt:
        return []  # about a media path we have replaced since
    actions = _reconnecting(c, now)
    c.peer_closed = isinstance(e, MediaLost) and e.closed_by_peer
    if isinstance(e, MediaLost):
        actions.append(RefreshSignaling())  # the network that broke media may have broken the stream
    if c.role == Role.CALLER:
        return [*actions, *_caller_reoffers(c, now)]
    return [*actions, RequestReconnect(c.answered_attempt)]


def _retry(c: Call, e: ReconnectRetry, now: float) -> list[Action]:
    if e.attempt != c.attempt or (c.attempt_at is not None and now - c.attempt_at < RETRY_S - 0.1):
        return []  # an older attempt's timer, or this one got its answer lately: let ICE work
    return _caller_reoffers(c, now)


def _callee_signaling_back(c: Call, e: SignalingBack, now: float) -> list[Action]:
    return [RequestReconnect(c.answered_attempt)]  # the caller's re-offers may have gone nowhere while we were away


def _reconnected(c: Call, e: MediaUp, now: float) -> list[Action]:
    c.state, c.media_up, c.reoffered, c.peer_closed = State.CONNECTED, True, False, False
    down_ms = round((now - (c.lost_at or now)) * 1000, 1)
    return [Notify(Ev.CALL_RECONNECTED, {"call_id": c.call_id, "peer": c.peer, "down_ms": down_ms})]


def _reconnect_timeout(c: Call, e: ReconnectTimeout, now: float) -> list[Action]:
    if e.epoch != c.reconnects:
        return []  # the deadline of a reconnect that succeeded
    message = f"the media path did not come back within {e.seconds:g} s"
    return [Notify(Ev.ERROR, {"call_id": c.call_id, "message": message}),
            *_fail(c, EndReason.NETWORK_LOST, now)]


def _connect_timeout(c: Call, e: ConnectTimeout, now: float) -> list[Action]:
    message = f"the media path could not be established in {e.seconds:g} s"
    if e.detail:
        message += f": {e.detail}"
    return [Notify(Ev.ERROR, {"call_id": c.call_id, "message": message}),
            *_fail(c, EndReason.NETWORK_LOST, now)]


def _ignore(c: Call, e: object, now: float) -> list[Action]:
    return []


def _decline(c: Call, e: Decline, now: float) -> list[Action]:
    reason = EndReason.BUSY if e.busy else EndReason.NO_ANSWER if e.no_answer else EndReason.DECLINED
    return c._end(now, reason, Source.LOCAL, SendDecline(e.busy, e.no_answer))


def _media_up(c: Call, e: MediaUp, now: float) -> list[Action]:
    c.media_up = True
    return c._connect_if_ready(now) if c.state == State.CONNECTING else []


def _peer_muted(c: Call, e: PeerMuted, now: float) -> list[Action]:
    if e.muted == c.peer_muted:
        return []  # told twice (a repeated signal): nothing changed
    c.peer_muted = e.muted
    return [Notify(Ev.PEER_MUTED if e.muted else Ev.PEER_UNMUTED, {"call_id": c.call_id})]


def _peer_held(c: Call, e: PeerHeld, now: float) -> list[Action]:
    if e.held == c.peer_held:
        return []  # told twice: nothing changed
    c.peer_held = e.held
    return [Notify(Ev.PEER_HELD if e.held else Ev.PEER_UNHELD, {"call_id": c.call_id})]


def _peer_video(c: Call, e: PeerVideo, now: float) -> list[Action]:
    if e.state not in VIDEO_STATES:
        return []  # a state this version does not know: nothing to show
    c.peer_video = e.state
    return [Notify(VIDEO_STATES[e.state][1], {"call_id": c.call_id})]


def _hangup(c: Call, e: Hangup, now: float) -> list[Action]:
    reason = hangup_reason(e.reason, ringing=c.state == State.OUTGOING, by_caller=True)
    return c._end(now, reason, Source.LOCAL, SendHangup(e.reason))


def _remote_ended(c: Call, e: RemoteEnded, now: float) -> list[Action]:
    source = Source.SERVER if e.by_server else Source.REMOTE
    return c._end(now, e.reason, source)


def _fail(c: Call, reason: EndReason, now: float) -> list[Action]:
    # tell the server (and so the peer) when we still can; it may be the server that failed
    extra: list[Action] = []
    if c.call_id is not None and reason not in (EndReason.SERVER_UNREACHABLE, EndReason.AUTH_FAILED):
        extra.append(SendHangup(reason))
    return c._end(now, reason, Source.LOCAL, *extra)


def _failed(c: Call, e: Failed, now: float) -> list[Action]:
    return _fail(c, e.reason, now)


def _media_lost(c: Call, e: MediaLost, now: float) -> list[Action]:
    return _fail(c, EndReason.NETWORK_LOST, now)


def _signaling_lost(c: Call, e: SignalingLost, now: float) -> list[Action]:
    return _fail(c, EndReason.SERVER_UNREACHABLE, now)


def _reoffer_refused(c: Call, e: ReofferRefused, now: float) -> list[Action]:
    if not c.reoffered:
        return []  # a refusal of a re-offer we never sent: nothing of ours
    return _fail(c, EndReason.BAD_SDP, now)


def _talk_time_up(c: Call, e: TalkTimeUp, now: float) -> list[Action]:
    return _hangup(c, Hangup(EndReason.HANGUP), now)


def _max_duration(c: Call, e: MaxDurationReached, now: float) -> list[Action]:
    return _hangup(c, Hangup(EndReason.MAX_DURATION), now)


def _ring_expired(c: Call, e: RingExpired, now: float) -> list[Action]:
    # the server's own timeout would have ended it before ours: it is gone, tell nobody
    return c._end(now, EndReason.NO_ANSWER, Source.LOCAL)


def _forgotten(c: Call, e: CallForgotten, now: float) -> list[Action]:
    if c.state == State.RECONNECTING and c.peer_closed:
        # the peer closed the media path, and the (restarted) server has no record of the call:
        # the peer hung up, and its hangup had no server to go through (a reconnect would need one).
        # The call ended when the media path closed
        return c._end(c.lost_at if c.lost_at is not None else now, EndReason.HANGUP, Source.REMOTE)
    return c._end(now, EndReason.SERVER_UNREACHABLE, Source.SERVER)


def _hangup_while_ringing(c: Call, e: Hangup, now: float) -> list[Action]:
    return _decline(c, Decline(), now)


LOCAL_EVENTS = frozenset({Dial, Accept, Decline, Hangup})

_CALLER, _CALLEE = Role.CALLER, Role.CALLEE
_O, _I, _CG, _CD = State.OUTGOING, State.INCOMING, State.CONNECTING, State.CONNECTED
_RC = State.RECONNECTING

TRANSITIONS: dict[tuple[Role, State, type], Handler] = {
    (_CALLER, State.IDLE, Dial): _dial,
    (_CALLER, _O, Created): _created,
    (_CALLER, _O, Ringing): _ringing,
    (_CALLER, _O, Prepared): _prepared,
    (_CALLER, _O, Answered): _answered,
    (_CALLER, _O, MediaUp): _media_up,
    (_CALLER, _CG, MediaUp): _media_up,
    (_CALLER, _CG, Reanswered): _reanswered,
    (_CALLER, _CD, Reanswered): _reanswered,
    (_CALLER, _CG, ReofferRefused): _reoffer_refused,
    (_CALLER, _CD, ReofferRefused): _reoffer_refused,
    (_CALLEE, State.IDLE, Ring): _ring,
    (_CALLEE, _I, Accept): _accept,
    (_CALLEE, _I, Decline): _decline,
    (_CALLEE, _I, Hangup): _hangup_while_ringing,
    (_CALLEE, _I, MediaUp): _media_up,
    (_CALLEE, _CG, AnswerSent): _answer_sent,
    (_CALLEE, _CG, AnswerRefused): _answer_refused,
    (_CALLEE, _CG, MediaUp): _media_up,
    (_CALLER, _CG, ConnectTimeout): _connect_timeout,
    (_CALLEE, _CG, ConnectTimeout): _connect_timeout,
    (_CALLER, _RC, Reanswered): _reanswered,
    (_CALLER, _RC, ReofferRefused): _reoffer_refused,
    (_CALLER, _CD, ReconnectRequested): _lost_connected,
    (_CALLER, _RC, ReconnectRequested): _attempt_now,
    (_CALLER, _RC, SignalingBack): _attempt_now,
    (_CALLEE, _RC, SignalingBack): _callee_signaling_back,
    (_CALLER, _RC, ReconnectRetry): _retry,
}
for _state in (_I, _CG, _CD, _RC):
    TRANSITIONS[(_CALLEE, _state, Reoffered)] = _reoffered
for _role in (_CALLER, _CALLEE):
    TRANSITIONS[(_role, _CD, MediaLost)] = _lost_connected
    TRANSITIONS[(_role, _RC, MediaLost)] = _ignore  # an attempt failed: the retries go on
    TRANSITIONS[(_role, _RC, MediaUp)] = _reconnected
    TRANSITIONS[(_role, _RC, ReconnectTimeout)] = _reconnect_timeout
    TRANSITIONS[(_role, _RC, CallForgotten)] = _forgotten  # no server to reconnect through
TRANSITIONS[(_CALLER, _O, RingExpired)] = _ring_expired
TRANSITIONS[(_CALLEE, _I, RingExpired)] = _ring_expired
for _role, _states in ((_CALLER, (_O, _CG, _CD, _RC)), (_CALLEE, (_I, _CG, _CD, _RC))):
    for _state in _states:
        TRANSITIONS.setdefault((_role, _state, Hangup), _hangup)
        TRANSITIONS[(_role, _state, RemoteEnded)] = _remote_ended
        TRANSITIONS[(_role, _state, Failed)] = _failed
        TRANSITIONS.setdefault((_role, _state, MediaLost), _media_lost)
        TRANSITIONS[(_role, _state, PeerMuted)] = _peer_muted
        TRANSITIONS[(_role, _state, PeerHeld)] = _peer_held
        TRANSITIONS[(_role, _state, PeerVideo)] = _peer_video
        if _state in (_CG, _CD, _RC):  # the call timers start once connected
            TRANSITIONS[(_role, _state, TalkTimeUp)] = _talk_time_up
            TRANSITIONS[(_role, _state, MaxDurationReached)] = _max_duration
        if _state not in (_CD, _RC):  # a connected call outlives the server (media is peer to peer)
            TRANSITIONS[(_role, _state, SignalingLost)] = _signaling_lost
            TRANSITIONS[(_role, _state, CallForgotten)] = _forgotten


def describe() -> str:
    """The transition table as text, one row a transition (used in docs)."""
    rows = []
    for (role, state, event), handler in sorted(
        TRANSITIONS.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value, kv[0][2].__name__)
    ):
        rows.append(f"{role.value:7} {state.value:12} {event.__name__:18} {handler.__name__}")
    return "\n".join(rows)

"""The call state machine, driven by tables of events: no sockets, no asyncio."""

from __future__ import annotations

import pytest

from callctl.engine import machine as m
from callctl.signaling.protocol import EndReason, Media

R = EndReason


def run(role: m.Role, events: list[m.CallEvent]) -> tuple[m.Call, list[m.Action]]:
    call = m.Call(role)
    actions: list[m.Action] = []
    for t, event in enumerate(events):
        actions += call.handle(event, now=float(t))
    return call, actions


def notified(actions: list[m.Action]) -> list[str]:
    return [a.event for a in actions if isinstance(a, m.Notify)]


CALLER_START = [m.Dial("bob"), m.Created("c1")]
CALLEE_START = [m.Ring("c1", "alice", Media.AUDIO, "offer")]

# (name, role, events, final state, end reason, source)
FLOWS = [
    ("caller connects after answer and media", m.Role.CALLER,
     [*CALLER_START, m.Ringing(), m.Answered("ans"), m.MediaUp()], m.State.CONNECTED, None, None),
    ("caller with prepared media connects on answer", m.Role.CALLER,
     [*CALLER_START, m.MediaUp(), m.Answered("ans")], m.State.CONNECTED, None, None),
    ("caller cancels while ringing", m.Role.CALLER,
     [*CALLER_START, m.Ringing(), m.Hangup()], m.State.ENDED, R.CANCELLED, m.Source.LOCAL),
    ("caller hangs up a connected call", m.Role.CALLER,
     [*CALLER_START, m.Answered("a"), m.MediaUp(), m.Hangup()], m.State.ENDED, R.HANGUP, m.Source.LOCAL),
    ("callee declines", m.Role.CALLER,
     [*CALLER_START, m.RemoteEnded(R.DECLINED)], m.State.ENDED, R.DECLINED, m.Source.REMOTE),
    ("server says no answer", m.Role.CALLER,
     [*CALLER_START, m.RemoteEnded(R.NO_ANSWER, by_server=True)], m.State.ENDED, R.NO_ANSWER, m.Source.SERVER),
    ("max duration", m.Role.CALLER,
     [*CALLER_START, m.Answered("a"), m.MediaUp(), m.MaxDurationReached()], m.State.ENDED,
     R.MAX_DURATION, m.Source.LOCAL),
    ("hangup-after is a normal hangup", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp(), m.TalkTimeUp()], m.State.ENDED,
     R.HANGUP, m.Source.LOCAL),
    ("media lost mid-call", m.Role.CALLER,
     [*CALLER_START, m.Answered("a"), m.MediaUp(), m.Failed(R.NETWORK_LOST)], m.State.ENDED,
     R.NETWORK_LOST, m.Source.LOCAL),
    ("callee accepts, media already prepared", m.Role.CALLEE,
     [*CALLEE_START, m.MediaUp(), m.Accept(), m.AnswerSent()], m.State.CONNECTED, None, None),
    ("callee accepts before media is up", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp()], m.State.CONNECTED, None, None),
    ("callee declines", m.Role.CALLEE,
     [*CALLEE_START, m.Decline()], m.State.ENDED, R.DECLINED, m.Source.LOCAL),
    ("callee busy", m.Role.CALLEE,
     [*CALLEE_START, m.Decline(busy=True)], m.State.ENDED, R.BUSY, m.Source.LOCAL),
    ("hangup while ringing is a decline", m.Role.CALLEE,
     [*CALLEE_START, m.Hangup()], m.State.ENDED, R.DECLINED, m.Source.LOCAL),
    ("media lost while connecting (an event, not a reason)", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.MediaLost()], m.State.ENDED, R.NETWORK_LOST, m.Source.LOCAL),
    ("media lost when connected: reconnecting", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp(), m.MediaLost()], m.State.RECONNECTING,
     None, None),
    ("the media path does not come back", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp(), m.MediaLost(), m.ReconnectTimeout(1, 20)],
     m.State.ENDED, R.NETWORK_LOST, m.Source.LOCAL),
    ("media never came up", m.Role.CALLER,
     [*CALLER_START, m.Answered("a"), m.ConnectTimeout()], m.State.ENDED, R.NETWORK_LOST, m.Source.LOCAL),
    ("server lost while ringing", m.Role.CALLER,
     [*CALLER_START, m.Ringing(), m.SignalingLost()], m.State.ENDED,
     R.SERVER_UNREACHABLE, m.Source.LOCAL),
    ("server lost while connecting", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.SignalingLost()], m.State.ENDED,
     R.SERVER_UNREACHABLE, m.Source.LOCAL),
    ("another device answered first", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerRefused(already_answered=True)], m.State.ENDED,
     R.ANSWERED_ELSEWHERE, m.Source.REMOTE),
    ("answer refused: the call was cancelled meanwhile", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerRefused(already_answered=False)], m.State.ENDED,
     R.CANCELLED, m.Source.REMOTE),
    ("answer refused: the server ended it", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerRefused(False, R.NO_ANSWER, by_server=True)], m.State.ENDED,
     R.NO_ANSWER, m.Source.SERVER),
    ("our own ring deadline (the server said nothing)", m.Role.CALLER,
     [*CALLER_START, m.Ringing(), m.RingExpired()], m.State.ENDED, R.NO_ANSWER, m.Source.LOCAL),
    ("the callee's own ring deadline", m.Role.CALLEE,
     [*CALLEE_START, m.RingExpired()], m.State.ENDED, R.NO_ANSWER, m.Source.LOCAL),
    ("the restarted server forgot the ringing call", m.Role.CALLER,
     [*CALLER_START, m.Ringing(), m.CallForgotten()], m.State.ENDED, R.SERVER_UNREACHABLE, m.Source.SERVER),
    ("the restarted server forgot the call we were accepting", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.CallForgotten()], m.State.ENDED, R.SERVER_UNREACHABLE, m.Source.SERVER),
    ("answered elsewhere", m.Role.CALLEE,
     [*CALLEE_START, m.RemoteEnded(R.ANSWERED_ELSEWHERE)], m.State.ENDED,
     R.ANSWERED_ELSEWHERE, m.Source.REMOTE),
    ("caller hangs up a connected call", m.Role.CALLEE,
     [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp(), m.RemoteEnded(R.HANGUP)],
     m.State.ENDED, R.HANGUP, m.Source.REMOTE),
]


@pytest.mark.parametrize("name,role,events,state,reason,source", FLOWS, ids=[f[0] for f in FLOWS])
def test_flows(name: str, role: m.Role, events: list[m.CallEvent], state: m.State,
               reason: EndReason | None, source: m.Source | None) -> None:
    call, actions = run(role, events)
    assert call.state == state
    assert call.reason == reason and call.source == source
    if state == m.State.ENDED:
        assert isinstance(actions[-2], m.Release)
        ended = actions[-1]
        assert isinstance(ended, m.Notify) and ended.event == "call.ended"
        assert ended.fields["reason"] == reason.value  # type: ignore[union-attr]
    if state == m.State.CONNECTED:
        assert notified(actions).count("call.connected") == 1
        assert sum(isinstance(a, m.StartMedia) for a in actions) == 1


def test_caller_actions_in_order() -> None:
    _, actions = run(m.Role.CALLER, [*CALLER_START, m.Ringing(), m.Answered("ans"), m.MediaUp()])
    kinds = [type(a).__name__ for a in actions if not isinstance(a, m.Notify)]
    assert kinds == ["CreateCall", "ApplyAnswer", "ArmConnectTimeout", "StartMedia", "ArmCallTimers"]
    assert notified(actions) == ["call.outgoing", "call.created", "call.ringback",
                                 "call.connecting", "call.connected"]


def test_callee_prepares_on_ring_and_answers_on_accept() -> None:
    _, actions = run(m.Role.CALLEE, [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp()])
    kinds = [type(a).__name__ for a in actions if not isinstance(a, m.Notify)]
    assert kinds == ["Prepare", "SendAnswer", "ArmConnectTimeout", "StartMedia", "ArmCallTimers"]


def test_connected_duration_and_setup_time() -> None:
    call = m.Call(m.Role.CALLER)
    call.handle(m.Dial("bob"), 10.0)
    call.handle(m.Created("c1"), 10.01)
    call.handle(m.Answered("a"), 10.05)
    connected = call.handle(m.MediaUp(), 10.08)
    assert connected[-1].fields["setup_ms"] == 80.0  # type: ignore[union-attr]
    ended = call.handle(m.Hangup(), 25.08)
    assert ended[-1].fields["duration_s"] == 15.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "role,events,bad,error",
    [
        (m.Role.CALLEE, [], m.Accept(), m.LocalProtocolError),
        (m.Role.CALLER, [*CALLER_START], m.Accept(), m.LocalProtocolError),
        (m.Role.CALLER, [], m.Hangup(), m.LocalProtocolError),
        (m.Role.CALLER, [*CALLER_START, m.Hangup()], m.Hangup(), m.LocalProtocolError),
        (m.Role.CALLER, [*CALLER_START, m.Hangup()], m.Answered("late"), m.RemoteProtocolError),
        (m.Role.CALLEE, [*CALLEE_START, m.Decline()], m.RemoteEnded(R.CANCELLED), m.RemoteProtocolError),
        (m.Role.CALLEE, [*CALLEE_START], m.Ring("c2", "carol", Media.AUDIO, "x"), m.RemoteProtocolError),
    ],
)
def test_illegal_events_raise_and_leave_state_unchanged(
    role: m.Role, events: list[m.CallEvent], bad: m.CallEvent, error: type
) -> None:
    call, _ = run(role, events)
    before = (call.state, call.reason, call.source)
    with pytest.raises(error):
        call.handle(bad, 99.0)
    assert (call.state, call.reason, call.source) == before


def test_every_reachable_state_can_end() -> None:
    for (role, state, _), _h in m.TRANSITIONS.items():
        if state not in (m.State.IDLE, m.State.ENDED):
            assert m.Call(role, state=state).can(m.RemoteEnded)
            assert m.Call(role, state=state).can(m.Hangup)


def non_notify(actions: list[m.Action]) -> list[m.Action]:
    return [a for a in actions if not isinstance(a, m.Notify)]


@pytest.mark.parametrize(
    "name,events,negotiation",
    [
        ("no preparation: the answer is applied", [m.Answered("A")], m.ApplyAnswer("A")),
        ("the device that prepared answered", [m.Prepared("A", "kiosk"), m.Answered("A")],
         m.ApplyAnswer("A")),
        ("another device answered: re-offer", [m.Prepared("A", "kiosk"), m.Answered("B")], m.Reoffer(1)),
    ],
)
def test_the_machine_decides_when_to_reoffer(name: str, events: list[m.CallEvent],
                                             negotiation: m.Action) -> None:
    _, actions = run(m.Role.CALLER, [*CALLER_START, *events])
    assert negotiation in non_notify(actions)
    assert (m.ApplyAnswer in map(type, actions)) != (m.Reoffer in map(type, actions))


def test_only_the_first_prepared_answer_is_applied_early() -> None:
    call, actions = run(m.Role.CALLER, [*CALLER_START, m.Prepared("A", "kiosk"), m.Prepared("B", "phone")])
    assert non_notify(actions)[-1] == m.ApplyEarlyAnswer("A")
    assert [type(a) for a in non_notify(actions)].count(m.ApplyEarlyAnswer) == 1
    assert (call.early_answer, call.prepared_by) == ("A", "kiosk")


@pytest.mark.parametrize(
    "events,start",
    [
        ([], False),  # still ringing: the new peer waits for accept
        ([m.Accept()], True),  # media already runs: the new peer starts at once
        ([m.Accept(), m.AnswerSent(), m.MediaUp()], True),
    ],
)
def test_callee_answers_a_reoffer_and_starts_media_only_once_accepted(
    events: list[m.CallEvent], start: bool
) -> None:
    call, actions = run(m.Role.CALLEE, [*CALLEE_START, *events, m.Reoffered("O2")])
    assert actions[-1] == m.AnswerReoffer("O2", start=start)
    assert call.state != m.State.RECONNECTING or events[-1] == m.MediaUp()


def test_peer_mute_and_video_are_tracked_and_notified() -> None:
    call, actions = run(m.Role.CALLER, [*CALLER_START, m.Answered("a"), m.MediaUp(), m.PeerMuted(True),
                                        m.PeerVideo("paused"), m.PeerVideo("sideways")])
    assert (call.peer_muted, call.peer_video) == (True, "paused")
    assert call.handle(m.PeerMuted(True), 9.0) == []  # the same again: no second peer.muted
    assert notified(actions)[-2:] == ["peer.muted", "peer.video.paused"]


def test_a_connected_call_outlives_the_server() -> None:
    call, _ = run(m.Role.CALLER, [*CALLER_START, m.Answered("a"), m.MediaUp()])
    with pytest.raises(m.RemoteProtocolError):
        call.handle(m.SignalingLost(), 9.0)
    assert call.state == m.State.CONNECTED


def test_the_documented_transition_table_is_the_code() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "CALLS.md").read_text()
    assert m.describe() in doc


def test_a_refused_reoffer_ends_the_call_only_if_we_sent_one() -> None:
    call, _ = run(m.Role.CALLER, [*CALLER_START, m.Answered("a"), m.MediaUp()])
    assert call.handle(m.ReofferRefused(), 5.0) == []
    assert call.state == m.State.CONNECTED
    call, _ = run(m.Role.CALLER, [*CALLER_START, m.Prepared("A", "kiosk"), m.Answered("B")])
    call.handle(m.ReofferRefused(), 5.0)
    assert (call.state, call.reason) == (m.State.ENDED, R.BAD_SDP)


def test_ring_deadlines_are_armed_from_the_servers_ring_length() -> None:
    _, actions = run(m.Role.CALLER, [m.Dial("bob"), m.Created("c1", ring_s=60.0)])
    assert m.ArmRingDeadline(60.0) in actions
    _, actions = run(m.Role.CALLEE, [m.Ring("c1", "alice", Media.AUDIO, "offer", ring_s=12.5)])
    assert m.ArmRingDeadline(12.5) in actions


def test_a_connected_call_ignores_ring_deadlines_and_a_forgetful_server() -> None:
    call, _ = run(m.Role.CALLER, [*CALLER_START, m.Answered("a"), m.MediaUp()])
    for late in (m.RingExpired(), m.CallForgotten()):
        with pytest.raises(m.RemoteProtocolError):
            call.handle(late, 9.0)
    assert call.state == m.State.CONNECTED


def test_only_an_answer_to_our_reoffer_is_applied_and_only_once() -> None:
    call, _ = run(m.Role.CALLER, [*CALLER_START, m.Answered("a"), m.MediaUp()])
    assert call.handle(m.Reanswered("hostile"), 5.0) == []  # we never re-offered
    call, _ = run(m.Role.CALLER, [*CALLER_START, m.Prepared("A", "kiosk"), m.Answered("B")])
    assert call.handle(m.Reanswered("R0", attempt=0), 5.0) == []  # not the attempt we sent
    assert call.handle(m.Reanswered("R1", attempt=1), 5.0) == [m.ApplyReanswer("R1", 1)]
    assert call.handle(m.Reanswered("R2", attempt=1), 6.0) == []


CONNECTED_CALLER = [*CALLER_START, m.Answered("a"), m.MediaUp()]
CONNECTED_CALLEE = [*CALLEE_START, m.Accept(), m.AnswerSent(), m.MediaUp()]


def test_call_timers_count_from_connected_not_from_connecting() -> None:
    _, actions = run(m.Role.CALLER, [*CALLER_START, m.Answered("a")])
    assert m.ArmCallTimers() not in actions  # a call that never connects never "hangs up" as if it had
    call, actions = run(m.Role.CALLER, CONNECTED_CALLER)
    assert actions.count(m.ArmCallTimers()) == 1
    call.handle(m.MediaLost(), 10.0)
    assert m.ArmCallTimers() not in call.handle(m.MediaUp(), 11.0)  # reconnected: the same timers run on


def test_a_call_that_never_connects_says_why() -> None:
    call, actions = run(m.Role.CALLER, [*CALLER_START, m.Answered("a"), m.ConnectTimeout(15, "no relay")])
    assert (call.state, call.reason) == (m.State.ENDED, R.NETWORK_LOST)
    errors = [a.fields["message"] for a in actions if isinstance(a, m.Notify) and a.event == "error"]
    assert errors == ["the media path could not be established in 15 s: no relay"]


def test_the_caller_reoffers_until_one_attempt_connects() -> None:
    call, _ = run(m.Role.CALLER, CONNECTED_CALLER)
    lost = call.handle(m.MediaLost(), 10.0)
    assert call.state == m.State.RECONNECTING
    assert notified(lost) == ["call.reconnecting"]
    assert non_notify(lost) == [m.ArmReconnectDeadline(1), m.RefreshSignaling(), m.Reoffer(1),
                                m.ArmReconnectRetry(1)]
    assert call.handle(m.ReconnectRetry(1), 12.0) == [m.Reoffer(2), m.ArmReconnectRetry(2)]
    assert call.handle(m.ReconnectRetry(1), 12.5) == []  # an old attempt's timer
    assert call.handle(m.Reanswered("old", attempt=1), 12.6) == []  # the answer to a replaced offer
    assert call.handle(m.Reanswered("new", attempt=2), 12.7) == [m.ApplyReanswer("new", 2),
                                                                m.ArmReconnectRetry(2)]
    assert call.handle(m.ReconnectRetry(2), 14.0) == []  # the answer came at 12.7: ICE gets until 14.7
    assert call.handle(m.MediaLost(), 12.8) == []  # an attempt failing: the retries go on
    back = call.handle(m.MediaUp(), 13.5)
    assert call.state == m.State.CONNECTED
    assert [(a.event, a.fields["down_ms"]) for a in back if isinstance(a, m.Notify)] == [
        ("call.reconnected", 3500.0)]
    for stale in (m.ReconnectTimeout(1, 20), m.ReconnectRetry(2)):  # timers of the reconnect that worked
        with pytest.raises(m.RemoteProtocolError):
            call.handle(stale, 30.0)
    assert call.state == m.State.CONNECTED
    assert call.connected_at == 3.0  # the call's duration runs on through the reconnect


def test_the_callee_asks_the_caller_and_answers_each_reoffer() -> None:
    call, _ = run(m.Role.CALLEE, CONNECTED_CALLEE)
    lost = call.handle(m.MediaLost(), 10.0)
    assert non_notify(lost) == [m.ArmReconnectDeadline(1), m.RefreshSignaling(), m.RequestReconnect()]
    assert call.handle(m.Reoffered("O1", attempt=1), 11.0) == [m.AnswerReoffer("O1", True, 1)]
    assert call.handle(m.Reoffered("O2", attempt=2), 12.0) == [m.AnswerReoffer("O2", True, 2)]
    call.handle(m.MediaUp(), 12.5)
    assert call.state == m.State.CONNECTED


def test_a_reoffer_in_a_connected_call_means_the_caller_is_reconnecting() -> None:
    call, _ = run(m.Role.CALLEE, CONNECTED_CALLEE)
    actions = call.handle(m.Reoffered("O1", attempt=1), 10.0)
    assert call.state == m.State.RECONNECTING
    assert notified(actions) == ["call.reconnecting"]
    assert actions[-1] == m.AnswerReoffer("O1", True, 1)


def test_the_caller_reconnects_when_the_callee_asks() -> None:
    call, _ = run(m.Role.CALLER, CONNECTED_CALLER)
    actions = call.handle(m.ReconnectRequested(), 10.0)
    assert call.state == m.State.RECONNECTING
    assert m.Reoffer(1) in actions and m.RefreshSignaling() not in actions  # our stream works
    assert call.handle(m.ReconnectRequested(), 10.2) == []  # already at it
    assert call.handle(m.ReconnectRequested(), 11.0) == [m.Reoffer(2), m.ArmReconnectRetry(2)]


def test_signaling_back_while_reconnecting_starts_a_fresh_attempt_at_once() -> None:
    call, _ = run(m.Role.CALLER, [*CONNECTED_CALLER, m.MediaLost()])  # attempt 1 at t=3
    assert call.handle(m.SignalingBack(), 8.0) == [m.Reoffer(2), m.ArmReconnectRetry(2)]
    call, _ = run(m.Role.CALLEE, [*CONNECTED_CALLEE, m.MediaLost()])
    assert call.handle(m.SignalingBack(), 8.0) == [m.RequestReconnect()]  # the caller re-offers


def test_a_reconnecting_call_can_be_hung_up_and_outlives_signaling() -> None:
    call, _ = run(m.Role.CALLER, [*CONNECTED_CALLER, m.MediaLost()])
    with pytest.raises(m.RemoteProtocolError):
        call.handle(m.SignalingLost(), 11.0)  # the retries go on until the reconnect timeout
    call.handle(m.Hangup(), 12.0)
    assert (call.state, call.reason) == (m.State.ENDED, R.HANGUP)
    call, _ = run(m.Role.CALLEE, [*CONNECTED_CALLEE, m.MediaLost()])
    call.handle(m.CallForgotten(), 11.0)  # no server to reconnect through
    assert call.state == m.State.ENDED
    call, actions = run(m.Role.CALLER, [*CONNECTED_CALLER, m.MediaLost(), m.ReconnectTimeout(1, 20)])
    assert (call.state, call.reason) == (m.State.ENDED, R.NETWORK_LOST)
    assert m.SendHangup(R.NETWORK_LOST) in actions  # the peer is told, through the server


def test_a_peer_that_closed_the_media_path_of_a_call_the_server_forgot_hung_up() -> None:
    """A restarted server has no record of the call: the peer's hangup could not come through it."""
    for role, connected in ((m.Role.CALLEE, CONNECTED_CALLEE), (m.Role.CALLER, CONNECTED_CALLER)):
        call, _ = run(role, [*connected, m.MediaLost(closed_by_peer=True)])  # reconnecting from t=4
        actions = call.handle(m.CallForgotten(), 9.0)
        assert (call.state, call.reason, call.source) == (m.State.ENDED, R.HANGUP, m.Source.REMOTE)
        assert call.duration_s == call.lost_at - call.connected_at  # type: ignore[operator]
        assert not any(isinstance(a, m.SendHangup) for a in actions)  # nobody to tell
    # a path that broke (not closed by the peer), or one closed before a reconnect that worked
    for lost in ([m.MediaLost()], [m.MediaLost(closed_by_peer=True), m.MediaUp(), m.MediaLost()]):
        call, _ = run(m.Role.CALLEE, [*CONNECTED_CALLEE, *lost])
        call.handle(m.CallForgotten(), 20.0)
        assert (call.reason, call.source) == (R.SERVER_UNREACHABLE, m.Source.SERVER)

"""Call rules over real HTTP against a real server process."""

from __future__ import annotations

import asyncio

import pytest

from callctl.signaling import protocol as p
from callctl.signaling.client import Conflict, Forbidden, NotFound
from tests.helpers import Events, ServerProcess

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def online(server: ServerProcess, events: list[Events], user: str, device: str = "default",
                 service: str = "default") -> Events:
    ev = Events(server.client(user, device, service))
    events.append(ev)
    await ev.wait(p.Registered)
    return ev


async def test_ring_fans_out_and_first_answer_wins(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    phone = await online(server, events, "bob", "phone")
    desk = await online(server, events, "bob", "desk")
    call = await alice.client.create_call("bob", OFFER)
    assert call.state == p.CallState.RINGING
    for dev in (phone, desk):
        ring = await dev.wait(p.CallIncoming, call_id=call.call_id)
        assert (ring.caller, ring.media, ring.sdp) == ("alice", p.Media.AUDIO, OFFER)
    ringing = await alice.wait(p.CallRinging, call_id=call.call_id)
    assert ringing.devices == 2

    results = await asyncio.gather(
        phone.client.answer(call.call_id, ANSWER + "a=phone\r\n"),
        desk.client.answer(call.call_id, ANSWER + "a=desk\r\n"),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, p.CallInfo)]
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert losers[0].code == "already_answered"
    winner, loser = (phone, desk) if results[0] is winners[0] else (desk, phone)

    answered = await alice.wait(p.CallAnswered, call_id=call.call_id)
    assert answered.sdp == winners[0].answer_sdp
    ended = await loser.wait(p.CallEnded, call_id=call.call_id)
    assert ended.reason == p.EndReason.ANSWERED_ELSEWHERE
    assert winner.events(p.CallEnded, call.call_id) == []
    assert (await alice.client.get_call(call.call_id)).state == p.CallState.CONNECTED


async def test_stranger_cannot_answer_hang_up_or_read(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    await online(server, events, "bob")
    call = await alice.client.create_call("bob", OFFER)
    async with server.client("mallory") as mallory:
        for attempt in (
            mallory.answer(call.call_id, ANSWER),
            mallory.hangup(call.call_id),
            mallory.decline(call.call_id),
            mallory.get_call(call.call_id),
            mallory.signal(call.call_id, "mute"),
        ):
            with pytest.raises(Forbidden):
                await attempt
    # same user name in another service is a stranger too
    async with server.client("bob", service="other") as other_bob:
        with pytest.raises(Forbidden):
            await other_bob.answer(call.call_id, ANSWER)
    # the caller may not answer its own call
    with pytest.raises(Forbidden):
        await alice.client.answer(call.call_id, ANSWER)
    assert (await alice.client.get_call(call.call_id)).state == p.CallState.RINGING
    with pytest.raises(NotFound):
        await alice.client.get_call("0" * 32)


async def test_other_service_is_unavailable_like_a_missing_user(server: ServerProcess, events: list[Events]) -> None:
    await online(server, events, "bob", service="acme")
    alice = await online(server, events, "alice")
    to_other_service = await alice.client.create_call("bob", OFFER, ring_timeout=1)
    to_nobody = await alice.client.create_call("nobody", OFFER, ring_timeout=1)
    for call in (to_other_service, to_nobody):
        ended = await alice.wait(p.CallEnded, call_id=call.call_id)
        assert (ended.reason, ended.by) == (p.EndReason.UNAVAILABLE, p.Party.SERVER)
    assert alice.events(p.CallRinging) == []


async def test_callee_coming_online_late_still_rings(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    call = await alice.client.create_call("bob", OFFER)
    bob = await online(server, events, "bob")
    ring = await bob.wait(p.CallIncoming, call_id=call.call_id)
    assert ring.caller == "alice"
    await alice.wait(p.CallRinging, call_id=call.call_id)
    await bob.client.answer(call.call_id, ANSWER)
    await alice.wait(p.CallAnswered, call_id=call.call_id)


async def test_ring_timeout_is_no_answer_for_both(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    call = await alice.client.create_call("bob", OFFER, ring_timeout=1)
    await bob.wait(p.CallIncoming, call_id=call.call_id)
    for side in (alice, bob):
        ended = await side.wait(p.CallEnded, call_id=call.call_id)
        assert (ended.reason, ended.by) == (p.EndReason.NO_ANSWER, p.Party.SERVER)
    info = await alice.client.get_call(call.call_id)
    assert (info.state, info.reason) == (p.CallState.ENDED, p.EndReason.NO_ANSWER)


async def test_callee_in_a_connected_call_is_busy(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    first = await alice.client.create_call("bob", OFFER)
    await bob.client.answer(first.call_id, ANSWER)
    async with server.client("carol") as carol:
        second = await carol.create_call("bob", OFFER)
    assert (second.state, second.reason) == (p.CallState.ENDED, p.EndReason.BUSY)
    assert bob.events(p.CallIncoming, second.call_id) == []


async def test_decline_ends_the_call_for_both(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    call = await alice.client.create_call("bob", OFFER)
    await bob.wait(p.CallIncoming, call_id=call.call_id)
    info = await bob.client.decline(call.call_id)
    assert (info.reason, info.ended_by) == (p.EndReason.DECLINED, p.Party.CALLEE)
    ended = await alice.wait(p.CallEnded, call_id=call.call_id)
    assert (ended.reason, ended.by) == (p.EndReason.DECLINED, p.Party.CALLEE)
    with pytest.raises(Conflict) as err:
        await bob.client.answer(call.call_id, ANSWER)
    assert err.value.code == "call_ended"


async def test_caller_hangup_before_answer_cancels(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    phone = await online(server, events, "bob", "phone")
    desk = await online(server, events, "bob", "desk")
    call = await alice.client.create_call("bob", OFFER)
    await phone.wait(p.CallIncoming, call_id=call.call_id)
    info = await alice.client.hangup(call.call_id)
    assert (info.reason, info.ended_by) == (p.EndReason.CANCELLED, p.Party.CALLER)
    for dev in (phone, desk):
        ended = await dev.wait(p.CallEnded, call_id=call.call_id)
        assert ended.reason == p.EndReason.CANCELLED
    # hanging up again reports the same end (idempotent)
    again = await alice.client.hangup(call.call_id)
    assert again.reason == p.EndReason.CANCELLED


async def test_hangup_of_a_connected_call_and_signal_relay(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    call = await alice.client.create_call("bob", OFFER, media=p.Media.VIDEO)
    await bob.client.answer(call.call_id, ANSWER)
    await alice.client.signal(call.call_id, "mute", {"audio": True})
    got = await bob.wait(p.CallSignal, call_id=call.call_id)
    assert (got.sender, got.kind, got.data) == ("alice", "mute", {"audio": True})
    await bob.client.signal(call.call_id, "video.paused")
    assert (await alice.wait(p.CallSignal, call_id=call.call_id)).kind == "video.paused"

    info = await bob.client.hangup(call.call_id)
    assert (info.reason, info.ended_by) == (p.EndReason.HANGUP, p.Party.CALLEE)
    ended = await alice.wait(p.CallEnded, call_id=call.call_id)
    assert (ended.reason, ended.by) == (p.EndReason.HANGUP, p.Party.CALLEE)
    with pytest.raises(Conflict):
        await alice.client.signal(call.call_id, "mute")


async def test_party_that_vanishes_ends_its_call_after_the_grace(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    call = await alice.client.create_call("bob", OFFER)
    await bob.client.answer(call.call_id, ANSWER)
    events.remove(bob)
    await bob.close()  # bob's device drops off and does not come back
    ended = await alice.wait(p.CallEnded, call_id=call.call_id)
    assert (ended.reason, ended.by) == (p.EndReason.NETWORK_LOST, p.Party.SERVER)
    # and bob is no longer busy
    async with server.client("carol") as carol:
        again = await carol.create_call("bob", OFFER)
    assert again.state == p.CallState.RINGING


async def test_device_cap(tmp_path, events: list[Events]) -> None:
    from tests.helpers import ServerProcess

    srv = ServerProcess(tmp_path, ["--max-devices", "2"]).start()
    try:
        await online(srv, events, "bob", "one")
        await online(srv, events, "bob", "two")
        third = Events(srv.client("bob", "three"))
        events.append(third)
        err = await third.wait_error()
        assert isinstance(err, Conflict) and err.code == "too_many_devices"
        # the same device reconnecting replaces its old stream instead
        again = await online(srv, events, "bob", "two")
        assert (await again.wait(p.Registered)).devices_online == 2
    finally:
        for e in events:
            await e.close()
        events.clear()
        srv.stop()


async def test_rate_limit_answers_429_with_retry_after(tmp_path) -> None:
    from callctl.signaling.client import RateLimited

    srv = ServerProcess(tmp_path, ["--calls-per-minute", "6"]).start()
    try:
        async with srv.client("alice") as alice:
            for _ in range(10):  # the burst
                await alice.create_call("bob", OFFER)
            with pytest.raises(RateLimited) as err:
                await alice.create_call("bob", OFFER)
            assert err.value.status == 429 and 1 <= err.value.retry_after <= 10
            async with srv.client("carol") as carol:  # the limit is per caller
                await carol.create_call("bob", OFFER)
    finally:
        srv.stop()


async def test_a_user_in_a_call_cannot_start_or_answer_another(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    first = await alice.client.create_call("bob", OFFER)
    async with server.client("carol") as carol:
        waiting = await carol.create_call("bob", OFFER)  # rings while bob is still free
        await bob.client.answer(first.call_id, ANSWER)
        with pytest.raises(Conflict) as err:
            await bob.client.answer(waiting.call_id, ANSWER)
        assert err.value.code == "wrong_state"
        with pytest.raises(Conflict) as err:
            await alice.client.create_call("carol", OFFER)
        assert err.value.code == "wrong_state"
    with pytest.raises(Conflict) as err:
        await bob.client.decline(first.call_id)
    assert err.value.code == "wrong_state"


async def test_offline_grace_runs_from_the_latest_disconnect(server: ServerProcess, events: list[Events]) -> None:
    """The server runs with --offline-grace 2: an early drop's timer must not end the call."""
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    call = await alice.client.create_call("bob", OFFER)
    await bob.client.answer(call.call_id, ANSWER)
    events.remove(bob)
    await bob.close()                      # first drop: a grace timer starts
    await asyncio.sleep(1.0)
    bob = await online(server, events, "bob")  # back within the grace
    await asyncio.sleep(0.5)
    events.remove(bob)
    await bob.close()                      # second drop, 1.5 s after the first
    await asyncio.sleep(1.0)               # the first timer has fired by now (2 s)
    assert (await alice.client.get_call(call.call_id)).state == p.CallState.CONNECTED
    ended = await alice.wait(p.CallEnded, call_id=call.call_id)
    assert ended.reason == p.EndReason.NETWORK_LOST

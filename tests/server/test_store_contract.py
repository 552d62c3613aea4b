"""The Store contract: every implementation must pass these (memory, and Redis on a real redis-server).

Add an implementation to ``STORES`` and the whole suite runs against it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from callctl.signaling.protocol import CallState, EndReason, Media, Party
from callctl.server.store import (
    LOG_BYTES,
    SUBSCRIPTION_BYTES,
    SUBSCRIPTION_QUEUE,
    CallRecord,
    Close,
    MemoryStore,
    Store,
    StoredEvent,
)
from callctl.server.store_redis import RedisStore

STORES = ("memory", "redis")


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    else:  # a real redis-server; each test has its own keys
        redis = request.getfixturevalue("redis_server")
        s = RedisStore(redis.url, prefix=f"t{secrets.token_hex(4)}:")
    await s.start()
    yield s
    await s.close()


def record(call_id: str = "c1", caller: str = "alice", callee: str = "bob") -> CallRecord:
    now = time.time()
    return CallRecord(
        call_id=call_id, service="svc", caller=caller, callee=callee, media=Media.AUDIO,
        offer_sdp="v=0", state=CallState.RINGING, created_at=now, ring_expires_at=now + 60,
        caller_device="d1",
    )


async def test_update_call_is_compare_and_set(store: Store) -> None:
    await store.create_call(record())
    results = await asyncio.gather(*(
        store.update_call("c1", CallState.RINGING, {"state": CallState.CONNECTED, "callee_device": f"dev{i}"})
        for i in range(5)
    ))
    applied = [rec for rec, ok in results if ok]
    assert len(applied) == 1
    final = await store.get_call("c1")
    assert final is not None and final.callee_device == applied[0].callee_device
    rec, ok = await store.update_call("c1", CallState.RINGING, {"state": CallState.ENDED})
    assert not ok and rec is not None and rec.state == CallState.CONNECTED
    assert await store.update_call("nope", CallState.RINGING, {}) == (None, False)


async def test_returned_records_are_copies(store: Store) -> None:
    await store.create_call(record())
    rec = await store.get_call("c1")
    assert rec is not None
    rec.state = CallState.ENDED
    again = await store.get_call("c1")
    assert again is not None and again.state == CallState.RINGING


async def test_ringing_and_connected_indexes_follow_state(store: Store) -> None:
    await store.create_call(record("c1"))
    await store.create_call(record("c2", caller="carol"))
    assert [c.call_id for c in await store.ringing_calls_for("svc/bob")] == ["c1", "c2"]
    assert await store.count_active_calls() == 2
    await store.update_call("c1", CallState.RINGING, {"state": CallState.CONNECTED})
    assert [c.call_id for c in await store.ringing_calls_for("svc/bob")] == ["c2"]
    assert await store.connected_call_of("svc/bob") == "c1"
    assert await store.connected_call_of("svc/alice") == "c1"
    await store.update_call("c1", CallState.CONNECTED, {
        "state": CallState.ENDED, "reason": EndReason.HANGUP, "ended_by": Party.CALLER,
    })
    await store.update_call("c2", CallState.RINGING, {"state": CallState.ENDED})
    assert await store.connected_call_of("svc/bob") is None
    assert await store.ringing_calls_for("svc/bob") == []
    assert await store.count_active_calls() == 0


async def test_replay_returns_what_came_after_an_id(store: Store) -> None:
    await store.register_device("svc/bob", "phone", "s1", cap=8)  # a user who has been online
    ids = [await store.publish("svc/bob", "e", b'{"n":%d}' % i) for i in range(5)]
    later = await store.replay("svc/bob", ids[1])
    assert [e.id for e in later] == ids[2:]
    assert all(store.is_after(b, a) for a, b in zip(ids, ids[1:]))
    assert not store.is_after(ids[0], ids[3])
    # an id this store never issued (another epoch): everything retained
    assert [e.id for e in await store.replay("svc/bob", "zzzz-99999")] == ids
    assert await store.replay("svc/nobody", ids[0]) == []
    cursor = await store.cursor("svc/bob")
    new = await store.publish("svc/bob", "e", b"{}")
    assert [e.id for e in await store.replay("svc/bob", cursor)] == [new]


async def test_live_events_reach_only_targeted_devices(store: Store) -> None:
    phone = store.subscribe("svc/bob", "phone")
    desk = store.subscribe("svc/bob", "desk")
    other = store.subscribe("svc/carol", "phone")
    await store.publish("svc/bob", "all", b"{}")
    await store.publish("svc/bob", "only-desk", b"{}", only_device="desk")
    await store.publish("svc/bob", "not-desk", b"{}", except_device="desk")

    def drain(sub) -> list[str]:  # type: ignore[no-untyped-def]
        items = sub.drain()
        assert all(isinstance(item, StoredEvent) for item in items)
        return [item.name for item in items]

    assert drain(phone) == ["all", "not-desk"]
    assert drain(desk) == ["all", "only-desk"]
    assert drain(other) == []
    store.unsubscribe(phone)
    await store.publish("svc/bob", "after", b"{}")
    assert drain(phone) == []
    assert drain(desk) == ["after"]


async def test_events_for_a_user_never_online_are_not_kept(store: Store) -> None:
    ring = await store.publish("svc/ghost", "call.incoming", b"x" * 60_000)
    assert ring  # an id all the same: the call record refers to it
    assert await store.replay("svc/ghost", "zzzz-0") == []


async def test_a_user_log_is_bounded_in_bytes(store: Store) -> None:
    await store.register_device("svc/bob", "phone", "s1", cap=8)
    for _ in range(100):
        await store.publish("svc/bob", "call.signal", b"x" * 60_000)
    kept = await store.replay("svc/bob", "zzzz-0")
    assert 0 < len(kept) < 100
    assert sum(len(e.data) for e in kept) <= LOG_BYTES


async def test_a_subscription_full_of_bytes_is_closed(store: Store) -> None:
    sub = store.subscribe("svc/bob", "phone")
    for _ in range(SUBSCRIPTION_BYTES // 60_000 + 2):
        await store.publish("svc/bob", "call.signal", b"x" * 60_000)
    assert sub.closed
    assert isinstance(sub.drain()[-1], Close)


async def test_a_full_subscription_is_closed_not_grown(store: Store) -> None:
    sub = store.subscribe("svc/bob", "phone")
    for i in range(SUBSCRIPTION_QUEUE + 10):
        await store.publish("svc/bob", "e", b"{}")
    assert sub.closed
    assert len(sub) <= SUBSCRIPTION_QUEUE
    items = sub.drain()
    assert isinstance(items[-1], Close) and items[-1].reason == "overflow"


async def test_presence_cap_and_replacement(store: Store) -> None:
    assert await store.register_device("svc/bob", "a", "s1", cap=2) == 1
    assert await store.register_device("svc/bob", "b", "s2", cap=2) == 2
    assert await store.register_device("svc/bob", "c", "s3", cap=2) is None
    # the same device re-registering is a replacement, not a third device
    assert await store.register_device("svc/bob", "a", "s4", cap=2) == 2
    # the replaced stream going away must not take the new one offline
    await store.unregister_device("svc/bob", "a", "s1")
    assert await store.devices_online("svc/bob") == {"a", "b"}
    await store.unregister_device("svc/bob", "a", "s4")
    await store.unregister_device("svc/bob", "b", "s2")
    assert await store.devices_online("svc/bob") == set()


async def test_opening_a_stream_registers_and_reads_what_it_sends_first(store: Store) -> None:
    # a user who has been online, with events in the log and calls for it
    await store.register_device("svc/bob", "phone", "s1", cap=2)
    ids = [await store.publish("svc/bob", "e", b'{"n":%d}' % i, only_device="desk" if i == 3 else None)
           for i in range(5)]
    for call_id, caller, callee in (("c1", "alice", "bob"), ("c2", "carol", "bob"), ("c3", "alice", "dave")):
        await store.create_call(record(call_id, caller=caller, callee=callee))
    await store.update_call("c2", CallState.RINGING, {"state": CallState.ENDED})
    opening = await store.open_device("svc/bob", "desk", "s2", cap=2, last_id=ids[1])
    assert opening is not None and opening.online == 2
    assert await store.devices_online("svc/bob") == {"phone", "desk"}
    assert [e.id for e in opening.backlog] == ids[2:]
    assert [e.only_device for e in opening.backlog] == [None, "desk", None]
    assert opening.backlog[0].data == b'{"n":2}' and opening.backlog[0].name == "e"
    assert [c.call_id for c in opening.ringing] == ["c1"]
    assert opening.ringing[0] == await store.get_call("c1")
    # its cursor: what comes after the registration is replayed from it
    new = await store.publish("svc/bob", "e", b"{}")
    assert [e.id for e in await store.replay("svc/bob", opening.cursor)] == [new]
    # no Last-Event-ID: nothing replayed; an id of another epoch: all the log
    again = await store.open_device("svc/bob", "desk", "s3", cap=2, last_id=None)
    assert again is not None and again.online == 2 and again.backlog == []
    other = await store.open_device("svc/bob", "desk", "s4", cap=2, last_id="zzzz-99999")
    assert other is not None and [e.id for e in other.backlog] == [*ids, new]
    # over the cap: nothing registered
    assert await store.open_device("svc/bob", "tv", "s5", cap=2, last_id=None) is None
    assert await store.devices_online("svc/bob") == {"phone", "desk"}
    fresh = await store.open_device("svc/nobody", "desk", "s6", cap=2, last_id=None)
    assert fresh is not None and fresh.online == 1 and fresh.backlog == [] and fresh.ringing == []


async def test_token_bucket(store: Store) -> None:
    assert [await store.take_token("k", 1.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await store.take_token("k", 1.0, 3)
    assert 0 < wait <= 1.0
    assert await store.take_token("other", 1.0, 3) == 0.0


async def test_purge_drops_old_ended_calls_only(store: Store) -> None:
    await store.create_call(record("old"))
    await store.create_call(record("live", caller="carol"))
    await store.update_call("old", CallState.RINGING, {"state": CallState.ENDED, "ended_at": 1.0})
    await store.purge(time.time())
    assert await store.get_call("old") is None
    assert await store.get_call("live") is not None


async def test_a_waiting_stream_wakes_on_the_next_event(store: Store) -> None:
    sub = store.subscribe("svc/bob", "phone")
    waiting = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    await store.publish("svc/bob", "ring", b"{}")
    item = await asyncio.wait_for(waiting, 5)
    assert isinstance(item, StoredEvent) and item.name == "ring"


async def test_a_timer_fires_once_whoever_claims_it(store: Store) -> None:
    now = time.time()
    await store.schedule("ring:c1", now - 5)
    await store.schedule("ring:c2", now - 2)
    await store.schedule("ring:c3", now + 60)
    # the node that set c2 fires it itself; c1's node is gone: the sweep takes it, once
    assert await store.claim("ring:c2") is True
    assert await store.claim("ring:c2") is False
    swept = await asyncio.gather(store.overdue(now), store.overdue(now))
    assert sorted(swept[0] + swept[1]) == ["ring:c1"]
    assert await store.claim("ring:c1") is False
    assert await store.overdue(now) == []
    assert await store.claim("ring:c3") is True  # answered: nobody fires it later
    assert await store.overdue(now + 120) == []


async def test_a_timer_scheduled_again_is_not_claimed_at_its_old_time(store: Store) -> None:
    first = time.time() + 5
    await store.schedule("offline:svc/bob|kiosk", first)
    later = first + 10  # the device came back and left again
    await store.schedule("offline:svc/bob|kiosk", later)
    assert await store.claim("offline:svc/bob|kiosk", first) is False
    assert await store.claim("offline:svc/bob|kiosk", later) is True
    assert await store.claim("offline:svc/bob|kiosk", later) is False

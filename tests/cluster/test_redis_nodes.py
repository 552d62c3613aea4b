"""Two RedisStore nodes on one real redis-server: what one node does, the other sees."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest

from callctl.harness.redis import RedisServer
from callctl.server.store import CallRecord, Close, StoredEvent
from callctl.server.store_redis import NODE_TTL_S, RedisStore
from callctl.signaling.protocol import CallState, Media


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    prefix = f"t{secrets.token_hex(4)}:"
    a, b = RedisStore(redis_server.url, prefix=prefix), RedisStore(redis_server.url, prefix=prefix)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


def record(call_id: str = "c1") -> CallRecord:
    now = time.time()
    return CallRecord(call_id=call_id, service="svc", caller="alice", callee="bob",
                      media=Media.AUDIO, offer_sdp="v=0", state=CallState.RINGING,
                      created_at=now, ring_expires_at=now + 60, caller_device="d1")


async def test_an_event_published_on_one_node_reaches_a_stream_on_the_other(
    nodes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = nodes
    assert a.epoch == b.epoch
    await b.register_device("svc/bob", "kiosk", "s1", cap=8)
    sub = b.subscribe("svc/bob", "kiosk")
    other = b.subscribe("svc/bob", "desk")  # not the device it is for
    event_id = await a.publish("svc/bob", "call.incoming", b'{"n":1}', only_device="kiosk")
    item = await asyncio.wait_for(sub.get(), 5)
    assert isinstance(item, StoredEvent)
    assert (item.id, item.name, item.data) == (event_id, "call.incoming", b'{"n":1}')
    # the same event, replayed from the other node, has the same id: clients deduplicate by it
    assert [e.id for e in await b.replay("svc/bob", f"{b.epoch}-0-0")] == [event_id]
    assert len(other) == 0


async def test_a_device_that_moves_to_another_node_ends_its_old_stream(
    nodes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = nodes
    assert await a.register_device("svc/bob", "kiosk", "s1", cap=8) == 1
    old = a.subscribe("svc/bob", "kiosk")
    assert await b.register_device("svc/bob", "kiosk", "s2", cap=8) == 1
    await b.stream_started("svc/bob", "kiosk", "s2")  # its client got the first bytes
    item = await asyncio.wait_for(old.get(), 5)
    assert isinstance(item, Close) and item.reason == "replaced"
    # the old stream's unregistering does not take the moved device offline
    await a.unregister_device("svc/bob", "kiosk", "s1")
    assert await a.devices_online("svc/bob") == {"kiosk"}


async def test_first_answer_wins_across_nodes(nodes: tuple[RedisStore, RedisStore]) -> None:
    a, b = nodes
    await a.create_call(record())
    results = await asyncio.gather(*(
        node.update_call("c1", CallState.RINGING,
                         {"state": CallState.CONNECTED, "callee_device": f"{name}{i}"})
        for i in range(10) for name, node in (("a", a), ("b", b))
    ))
    winners = [rec for rec, applied in results if applied]
    assert len(winners) == 1
    final = await b.get_call("c1")
    assert final is not None and final.callee_device == winners[0].callee_device
    assert await a.connected_call_of("svc/bob") == "c1"
    assert await b.ringing_calls_for("svc/bob") == []


async def test_rate_limits_hold_across_nodes(nodes: tuple[RedisStore, RedisStore]) -> None:
    a, b = nodes
    assert [await node.take_token("alice", 0.1, 2) for node in (a, b)] == [0.0, 0.0]
    assert await a.take_token("alice", 0.1, 2) > 0
    assert await b.take_token("alice", 0.1, 2) > 0


async def test_a_dead_nodes_devices_go_offline(redis_server: RedisServer) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    a, b = RedisStore(redis_server.url, prefix=prefix), RedisStore(redis_server.url, prefix=prefix)
    await a.start()
    await b.start()
    try:
        await b.register_device("svc/bob", "kiosk", "s1", cap=1)
        assert await a.devices_online("svc/bob") == {"kiosk"}
        # b stops renewing its liveness, as a SIGKILLed node does (its key is left to expire)
        for task in b._tasks:
            task.cancel()
        await asyncio.gather(*b._tasks, return_exceptions=True)
        b._tasks, b._started = [], False
        deadline = time.monotonic() + NODE_TTL_S + 3
        while await a.devices_online("svc/bob") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await a.devices_online("svc/bob") == set()
        # and its place is free: the cap of one device admits the device again elsewhere
        assert await a.register_device("svc/bob", "kiosk", "s2", cap=1) == 1
    finally:
        await a.close()
        await b.close()


async def test_a_dead_nodes_devices_are_reaped_once_with_an_offline_timer_each(
    redis_server: RedisServer,
) -> None:
    prefix = f"t{secrets.token_hex(4)}:"
    a, b, c = (RedisStore(redis_server.url, prefix=prefix) for _ in range(3))
    for node in (a, b, c):
        await node.start()
    try:
        await b.register_device("svc/bob", "kiosk", "s1", cap=8)
        await b.register_device("svc/carol", "desk", "s2", cap=8)
        await b.register_device("svc/dan", "phone", "s3", cap=8)
        await b.unregister_device("svc/dan", "phone", "s3")  # left before b died: not b's
        await c.register_device("svc/carol", "desk", "s4", cap=8)  # moved to c: not b's any more
        for task in b._tasks:  # b dies: no more renewals
            task.cancel()
        await asyncio.gather(*b._tasks, return_exceptions=True)
        b._tasks, b._started = [], False
        deadline = time.monotonic() + NODE_TTL_S * 2 + 3
        while await a.devices_online("svc/bob") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # asked before the reaper came: offline, and still reaped
        reaped: list[int] = []
        while sum(reaped) == 0 and time.monotonic() < deadline:
            reaped += await asyncio.gather(a.reap_dead_nodes(2.0), c.reap_dead_nodes(2.0))
            await asyncio.sleep(0.3)
        assert sum(reaped) == 1  # bob's kiosk only, and by one node
        assert await a.reap_dead_nodes(2.0) == 0
        assert await a.devices_online("svc/bob") == set()
        assert await a.devices_online("svc/carol") == {"desk"}
        due = await a.overdue(time.time() + 3)
        assert due == ["offline:svc/bob|kiosk"]
    finally:
        for node in (a, b, c):
            await node.close()


async def test_an_open_given_up_before_it_started_leaves_the_older_stream_be(
    nodes: tuple[RedisStore, RedisStore],
) -> None:
    """A client that gave up on a slow open reconnected elsewhere: the open it left behind
    finishes late, and must neither end the newer stream nor take the device offline."""
    a, b = nodes
    await a.register_device("svc/bob", "kiosk", "s1", cap=8)
    live = a.subscribe("svc/bob", "kiosk")
    assert await b.register_device("svc/bob", "kiosk", "late", cap=8) == 1
    await b.unregister_device("svc/bob", "kiosk", "late")  # its first write found nobody
    assert await a.devices_online("svc/bob") == {"kiosk"}
    event_id = await b.publish("svc/bob", "call.incoming", b"{}")  # and rings reach s1 on a
    item = await asyncio.wait_for(live.get(), 5)
    assert isinstance(item, StoredEvent) and item.id == event_id
    assert not live.closed

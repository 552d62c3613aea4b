"""``GET /metrics``: the Prometheus text of a real server process, after real calls between real clients."""

from __future__ import annotations

import asyncio
import time

import httpx
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from callctl.server.app import create_app
from callctl.signaling import protocol as p
from tests.helpers import WAIT, Events, ServerProcess
from tests.signaling.test_calls import ANSWER, OFFER, online

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(server: ServerProcess) -> Samples:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/metrics")  # no token: like /healthz
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    return parse(r.text)


def value(samples: Samples, name: str, node: str, **labels: str) -> float:
    return samples[(name, frozenset({"node": node, **labels}.items()))]


async def test_one_call_created_rung_answered_and_hung_up(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    node = (await alice.wait(p.Registered)).server_id
    m = await scrape(server)
    health = httpx.get(f"{server.url}/healthz").json()
    assert value(m, "callctl_event_streams_open", node) == 2 == health["streams"]
    assert value(m, "callctl_devices_online", node) == 2
    assert value(m, "callctl_calls_created_total", node) == 0
    assert value(m, "callctl_ring_delivery_seconds_count", node) == 0
    # the standard process metrics are on the same registry
    assert m[("process_cpu_seconds_total", frozenset())] > 0
    assert any(name == "python_info" for name, _ in m)

    started = time.time()
    call = await alice.client.create_call("bob", OFFER)
    await bob.wait(p.CallIncoming, call_id=call.call_id)
    await alice.wait(p.CallRinging, call_id=call.call_id)
    rung = time.time()
    m = await scrape(server)
    assert value(m, "callctl_calls_created_total", node) == 1
    assert value(m, "callctl_calls_active", node, state="ringing") == 1
    assert value(m, "callctl_calls_active", node, state="connected") == 0
    assert value(m, "callctl_rings_delivered_total", node) == 1
    assert value(m, "callctl_ring_delivery_seconds_count", node) == 1
    assert 0 <= value(m, "callctl_ring_delivery_seconds_sum", node) <= rung - started
    assert value(m, "callctl_ring_delivery_seconds_bucket", node, le="+Inf") == 1

    await bob.client.answer(call.call_id, ANSWER)
    await alice.wait(p.CallAnswered, call_id=call.call_id)
    m = await scrape(server)
    assert value(m, "callctl_calls_active", node, state="ringing") == 0
    assert value(m, "callctl_calls_active", node, state="connected") == 1

    await alice.client.hangup(call.call_id)
    await bob.wait(p.CallEnded, call_id=call.call_id)
    m = await scrape(server)
    assert value(m, "callctl_calls_created_total", node) == 1
    assert value(m, "callctl_calls_ended_total", node, reason="hangup") == 1
    assert sum(v for (name, _), v in m.items() if name == "callctl_calls_ended_total") == 1
    assert value(m, "callctl_calls_active", node, state="ringing") == 0
    assert value(m, "callctl_calls_active", node, state="connected") == 0
    assert value(m, "callctl_rings_delivered_total", node) == 1
    assert value(m, "callctl_ring_delivery_seconds_count", node) == 1
    assert value(m, "callctl_store_errors_total", node) == 0
    assert value(m, "callctl_event_streams_open", node) == 2 == len(events)

    # a stream that closes is no longer counted
    await events.pop().close()
    deadline = time.monotonic() + WAIT
    while value(m := await scrape(server), "callctl_event_streams_open", node) != 1:
        assert time.monotonic() < deadline, "the closed stream is still counted"
        await asyncio.sleep(0.05)
    assert value(m, "callctl_devices_online", node) == 1


async def test_declined_and_busy_calls_count_by_reason(server: ServerProcess, events: list[Events]) -> None:
    alice = await online(server, events, "alice")
    bob = await online(server, events, "bob")
    carol = await online(server, events, "carol")
    node = (await alice.wait(p.Registered)).server_id

    declined = await alice.client.create_call("bob", OFFER)
    await bob.wait(p.CallIncoming, call_id=declined.call_id)
    await bob.client.decline(declined.call_id)
    answered = await alice.client.create_call("bob", OFFER)
    await bob.wait(p.CallIncoming, call_id=answered.call_id)
    await bob.client.answer(answered.call_id, ANSWER)
    busy = await carol.client.create_call("bob", OFFER)  # bob is in a call: ended at once
    assert busy.state == p.CallState.ENDED

    m = await scrape(server)
    assert value(m, "callctl_calls_created_total", node) == 3
    assert value(m, "callctl_calls_ended_total", node, reason="declined") == 1
    assert value(m, "callctl_calls_ended_total", node, reason="busy") == 1
    assert value(m, "callctl_calls_ended_total", node, reason="hangup") == 0
    assert value(m, "callctl_calls_active", node, state="ringing") == 0
    assert value(m, "callctl_calls_active", node, state="connected") == 1
    assert value(m, "callctl_rings_delivered_total", node) == 2  # the busy call rang nobody


async def test_two_apps_in_one_process_keep_their_own_metrics() -> None:
    apps = [create_app(b"x" * 32), create_app(b"y" * 32)]
    nodes = [app.state.hub.server_id for app in apps]
    for app, node in zip(apps, nodes, strict=True):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            r = await http.get("/metrics")
        assert r.status_code == 200
        m = parse(r.text)
        assert {dict(labels)["node"] for name, labels in m if name.startswith("callctl_")} == {node}
    # and nothing of ours in the process-wide default registry
    assert not [f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("callctl_")]

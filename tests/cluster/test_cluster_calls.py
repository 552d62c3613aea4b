"""Calls across server nodes that share one real redis-server (``callctl server --store``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from callctl.harness.redis import RedisMissing, RedisServer
from callctl.signaling import protocol as p
from callctl.signaling.client import ServerUnreachable
from tests.cli import Callctl
from tests.helpers import Events, ServerProcess
from tests.signaling.test_calls import OFFER, online


@contextlib.contextmanager
def running_fleet(tmp_path: Path, redis_url: str, names: tuple[str, ...],
                  args: tuple[str, ...] = ()) -> Iterator[list[ServerProcess]]:
    """Server processes on one Redis and one signing secret; stopped, their logs free of
    tracebacks."""
    started: list[ServerProcess] = []
    try:
        for name in names:
            (tmp_path / name).mkdir()
            node = ServerProcess(tmp_path / name, ["--store", redis_url, *args])
            if started:  # one fleet, one signing secret
                shutil.copy(started[0].secret_file, node.secret_file)
            started.append(node.start())
        yield started
    finally:
        for node in started:
            node.stop()
    for node in started:
        assert "Traceback" not in node.stderr_text(), node.stderr_text()


@contextlib.contextmanager
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to stop and start again."""
    try:
        redis = RedisServer(tmp_path / "redis")
    except RedisMissing as exc:
        pytest.skip(f"needs redis-server: {exc}")
    with redis:
        yield redis


@contextlib.asynccontextmanager
async def clients(node: ServerProcess, workdir: Path) -> AsyncIterator[Callctl]:
    """callctl processes against ``node``, all stopped at the end."""
    runner = Callctl(node, workdir)
    try:
        yield runner
    finally:
        await runner.close()


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    """Three server processes on one Redis (a fresh key prefix is not needed: calls are new)."""
    with running_fleet(tmp_path, redis_server.url, ("a", "b", "c"), ("--ring-timeout", "30")) as started:
        yield started


@pytest.fixture
def fleet(nodes: list[ServerProcess], tmp_path: Path) -> Iterator[Callctl]:
    (tmp_path / "cli").mkdir()
    yield Callctl(nodes[0], tmp_path / "cli")


async def test_a_ring_reaches_devices_on_two_other_nodes_and_the_first_answer_wins(
    nodes: list[ServerProcess], fleet: Callctl,
) -> None:
    a, b, c = nodes
    try:
        kiosk = await fleet.start("bob", "listen", "--device", "kiosk", "--auto-accept",
                                  "--audio-out", "null", "--audio-in", "tone:660", server=b.url)
        desk = await fleet.start("bob", "listen", "--device", "desk", "--auto-accept",
                                 "--audio-out", "null", "--audio-in", "tone:660", server=c.url)
        await kiosk.wait_event("registered")
        await desk.wait_event("registered")
        alice = await fleet.call("alice", "bob", "--hangup-after", "1", server=a.url)
        await alice.wait_event("call.ringback")
        assert await alice.exit_code() == 0
        await kiosk.wait_event("call.incoming")
        await desk.wait_event("call.incoming")
        ends = [(await cli.wait_event("call.ended"))["reason"] for cli in (kiosk, desk)]
        # both answered at once: exactly one got the call, the other was told where it went
        assert sorted(ends) == ["answered_elsewhere", "hangup"], ends
    finally:
        await fleet.close()


async def test_a_callee_that_comes_online_on_another_node_still_gets_the_ring(
    nodes: list[ServerProcess], fleet: Callctl,
) -> None:
    a, b, _ = nodes
    try:
        alice = await fleet.call("alice", "carol", "--hangup-after", "0.5", server=a.url)
        await alice.wait_event("call.outgoing")
        carol = await fleet.start("carol", "listen", "--device", "kiosk", "--auto-accept",
                                  "--audio-out", "null", "--audio-in", "tone:660", server=b.url)
        incoming = await carol.wait_event("call.incoming")
        assert incoming["peer"] == "alice"
        assert await alice.exit_code() == 0
        assert (await carol.wait_event("call.ended"))["reason"] == "hangup"
    finally:
        await fleet.close()


async def test_a_ring_timeout_fires_once_when_the_node_that_created_the_call_is_killed(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    (tmp_path / "cli").mkdir()
    with running_fleet(tmp_path, redis_server.url, ("a", "b"), ("--ring-timeout", "2")) as (a, b):
        async with clients(a, tmp_path / "cli") as fleet:
            bob = await fleet.start("bob", "listen", "--device", "kiosk", "--audio-out", "null",
                                    "--audio-in", "tone:660", server=b.url)
            await bob.wait_event("registered")
            alice = await fleet.call("alice", "bob", server=a.url)  # through a: its ring timer
            await bob.wait_event("call.incoming")
            a.stop(signal.SIGKILL)  # mid-ring
            ended = await bob.wait_event("call.ended")
            assert ended["reason"] == "no_answer"
            assert "ring timeout taken over from another node" in b.stderr_text()
            missed = await bob.wait_event("call.missed")
            assert missed["reason"] == "no_answer"
            await alice.stop()
            # once: no second end reached bob, and b's log says it once
            assert len(bob.named("call.ended")) == 1
            assert b.stderr_text().count("ring timeout taken over") == 1


async def test_a_stream_resumed_on_another_node_replays_what_it_missed_exactly_once(
    nodes: list[ServerProcess], events: list[Events],
) -> None:
    a, b, _ = nodes
    alice = await online(a, events, "alice")
    bob = await online(a, events, "bob", "kiosk")
    first = await alice.client.create_call("bob", OFFER)
    await bob.wait(p.CallIncoming, call_id=first.call_id)
    await alice.client.hangup(first.call_id)
    await bob.wait(p.CallEnded, call_id=first.call_id)
    seen_on_a = bob.stream.last_id
    assert seen_on_a is not None
    await bob.close()
    # offline now: a second call rings nobody, and is over before bob comes back
    missed = await alice.client.create_call("bob", OFFER)
    await alice.client.hangup(missed.call_id)
    # back, on node b, from where it left off on node a
    resumed = Events(b.client("bob", "kiosk"))
    resumed.stream.last_id = seen_on_a
    events.append(resumed)
    registered = await resumed.wait(p.Registered)
    assert registered.server_id != (await alice.wait(p.Registered)).server_id
    await resumed.wait(p.CallEnded, call_id=missed.call_id)
    replayed = resumed.events()[1:1 + registered.replayed]
    assert {getattr(e, "call_id", None) for e in replayed} == {missed.call_id}
    assert len(resumed.events(p.CallIncoming, call_id=missed.call_id)) == 1
    assert resumed.events(p.CallIncoming, call_id=first.call_id) == []


async def _health(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        return await http.get("/healthz")


async def _until_health(url: str, status: int, timeout: float = 15.0) -> httpx.Response:
    """/healthz until it answers ``status`` (each answer is an event of the node's own)."""
    deadline = time.monotonic() + timeout
    while True:
        r = await _health(url)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.2)


async def test_redis_restarted_mid_run_is_503s_then_service_without_restarting_nodes(
    tmp_path: Path,
) -> None:
    (tmp_path / "cli").mkdir()
    with private_redis(tmp_path) as redis, running_fleet(tmp_path, redis.url, ("a", "b")) as started:
        a, b = started
        async with clients(a, tmp_path / "cli") as fleet:
            bob = await fleet.start("bob", "listen", "--device", "kiosk", "--auto-accept",
                                    "--audio-out", "null", "--audio-in", "tone:660", server=b.url)
            await bob.wait_event("registered")

            redis.stop(signal.SIGKILL)
            down = await _until_health(a.url, 503)
            assert down.status_code == 503 and down.headers["retry-after"] == "2", down.text
            assert down.json()["status"] == "store_unavailable"
            alice = a.client("alice", "desk")
            async with httpx.AsyncClient(base_url=a.url, timeout=5) as http:
                refused = await http.post("/v1/calls", json={"to": "bob", "sdp": OFFER},
                                          headers={"Authorization": f"Bearer {a.token('alice')}"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "2"
            assert refused.json()["error"] == "unavailable"
            await alice.aclose()

            redis.start()  # same port, no data: what a Redis without persistence is after a crash
            # at once: the nodes may not have told the new Redis about bob yet (they do within a
            # second, and ring him then); bob's stream stayed open all along
            call = await fleet.call("alice", "bob", "--hangup-after", "0.5", server=a.url)
            assert await call.exit_code() == 0, call.stderr
            for node in started:
                assert (await _until_health(node.url, 200)).status_code == 200
            assert (await bob.wait_event("call.ended"))["reason"] == "hangup"
            assert bob.named("server.lost") == []
            assert "store unavailable" in a.stderr_text()


async def test_a_node_that_dies_in_a_call_and_whose_device_never_returns_ends_the_call_once(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    """bob's node is SIGKILLed mid-call and bob cannot reach another one: the node's devices
    are reaped by a surviving node, bob's offline grace runs out there, and alice hears of it
    from the server (network_lost), once."""
    (tmp_path / "cli").mkdir()
    with running_fleet(tmp_path, redis_server.url, ("a", "b"), ("--offline-grace", "1")) as started:
        a, b = started
        async with clients(a, tmp_path / "cli") as fleet:
            bob = await fleet.start("bob", "listen", "--device", "kiosk", "--auto-accept",
                                    "--audio-out", "null", "--audio-in", "tone:660", server=b.url)
            await bob.wait_event("registered")
            alice = await fleet.call("alice", "bob", server=a.url)
            await alice.wait_event("call.connected")
            b.stop(signal.SIGKILL)
            bob.signal(signal.SIGKILL)  # and bob's kiosk is gone with it (power cut)
            ended = await alice.wait_event("call.ended", timeout=30)
            assert ended["reason"] == "network_lost", ended
            assert await alice.exit_code() == 9
            assert "a node died: 1 of its devices are offline" in a.stderr_text()
            assert a.stderr_text().count("ended reason=network_lost by=server") == 1


async def test_a_call_made_the_moment_redis_is_back_still_rings(tmp_path: Path) -> None:
    """The nodes tell a restarted (empty) Redis about their devices within a second; a call
    made before that finds nobody online, and its ring is sent again once they have."""
    (tmp_path / "cli").mkdir()
    with private_redis(tmp_path) as redis, running_fleet(tmp_path, redis.url, ("a", "b")) as started:
        a, b = started
        async with clients(a, tmp_path / "cli") as fleet:
            bob = await fleet.start("bob", "listen", "--device", "kiosk", "--audio-out", "null",
                                    "--audio-in", "tone:660", server=b.url)
            await bob.wait_event("registered")
            redis.stop(signal.SIGKILL)
            await _until_health(b.url, 503)
            redis.start()
            async with a.client("alice", "desk") as alice:
                call = None
                deadline = time.monotonic() + 10
                while call is None:  # the first POST the new Redis answers
                    try:
                        call = await alice.create_call("bob", OFFER)
                    except ServerUnreachable:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)
                # the ring reached bob's kiosk: it read the offer (a bare one, which it refuses)
                ended = await bob.wait_event("call.ended")
                assert (ended["call_id"], ended["reason"]) == (call.call_id, "bad_sdp"), ended
                assert (await alice.get_call(call.call_id)).state == p.CallState.ENDED

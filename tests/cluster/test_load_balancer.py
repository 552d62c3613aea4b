"""Three server nodes on one Redis behind a real HAProxy: clients know only the balancer's URL.

The config is the one ``callctl.harness.haproxy`` writes (docs/SCALING.md,
"Behind a load balancer"): health checks on /healthz, leastconn, retries
with redispatch, long timeouts for the event streams.  Each node's log is
``server-0.log`` in ``tmp_path/<node>``, HAProxy's is ``haproxy/haproxy.log``.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from callctl.harness.haproxy import Haproxy, HaproxyMissing
from callctl.harness.redis import RedisServer
from tests.cli import Callctl, Cli
from tests.helpers import WAIT, ServerProcess

NAMES = ("a", "b", "c")
#: Each test's fleet on a Redis database of its own (the session's Redis is shared with the
#: other cluster tests): no presence, event log or rate-limit bucket of theirs reaches ours.
_DATABASES = itertools.count()


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, ServerProcess]]:
    """Three server processes on one Redis, one signing secret, by name."""
    store = f"{redis_server.url.rsplit('/', 1)[0]}/{1 + next(_DATABASES) % 15}"
    started: dict[str, ServerProcess] = {}
    try:
        for name in NAMES:
            (tmp_path / name).mkdir()
            node = ServerProcess(tmp_path / name, ["--store", store, "--ring-timeout", "30"])
            if started:
                shutil.copy(started["a"].secret_file, node.secret_file)
            started[name] = node.start()
        yield started
    finally:
        for node in started.values():
            node.stop()
    for node in started.values():
        assert "Traceback" not in node.stderr_text(), node.stderr_text()


@pytest.fixture
def balancer(tmp_path: Path, nodes: dict[str, ServerProcess]) -> Iterator[Haproxy]:
    try:
        lb = Haproxy(tmp_path / "haproxy", {name: node.url for name, node in nodes.items()})
    except HaproxyMissing as exc:
        pytest.skip(f"needs haproxy: {exc}")
    with lb:
        yield lb


@pytest.fixture
async def fleet(nodes: dict[str, ServerProcess], tmp_path: Path) -> AsyncIterator[Callctl]:
    (tmp_path / "cli").mkdir()
    runner = Callctl(nodes["a"], tmp_path / "cli")  # the fleet's secret; URLs are the balancer's
    yield runner
    await runner.close()
    for cli in runner.running:
        assert "Traceback" not in cli.stderr, cli.stderr


async def listen(fleet: Callctl, lb: Haproxy, user: str) -> Cli:
    cli = await fleet.start(user, "listen", "--device", "kiosk", "--auto-accept",
                            "--audio-out", "null", "--audio-in", "tone:660", server=lb.url)
    await cli.wait_event("registered")
    return cli


async def streams(nodes: dict[str, ServerProcess]) -> dict[str, int]:
    """Each running node's open event streams (its /healthz ``streams``)."""
    counts = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for name, node in nodes.items():
            if node.proc is not None:
                counts[name] = (await http.get(f"{node.url}/healthz")).json()["streams"]
    return counts


async def holder(nodes: dict[str, ServerProcess], timeout: float = WAIT) -> str:
    """The node holding the one event stream open in the fleet (once there is exactly one)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await streams(nodes)
        if sorted(counts.values()) == [0] * (len(counts) - 1) + [1]:
            return next(name for name, n in counts.items() if n == 1)
        if time.monotonic() > deadline:
            raise AssertionError(f"not exactly one stream open in the fleet: {counts}")
        await asyncio.sleep(0.1)  # each look is a request answered; this only paces them


async def test_a_call_through_haproxy_connects(
    nodes: dict[str, ServerProcess], balancer: Haproxy, fleet: Callctl,
) -> None:
    bob = await listen(fleet, balancer, "bob")
    assert (await bob.wait_event("registered"))["server"] == balancer.url
    bobs_node = await holder(nodes)
    alice = await fleet.call("alice", "bob", "--hangup-after", "1", server=balancer.url)
    await alice.wait_event("call.ringback")
    await bob.wait_event("call.incoming")
    assert await alice.exit_code() == 0, alice.stderr
    assert (await bob.wait_event("call.ended"))["reason"] == "hangup"
    # leastconn put alice's stream on another node than bob's: the call crossed nodes
    streams_to = {r["request"].split("device=")[1].split()[0]: r["server"]
                  for r in balancer.requests() if r["request"].startswith("GET /v1/events")}
    assert streams_to["kiosk"] == bobs_node
    assert streams_to["desk"] != bobs_node, balancer.requests()
    assert all(int(r["status"]) < 500 for r in balancer.requests()), balancer.requests()
    # all three nodes are up and checked as such
    assert balancer.server_states() == dict.fromkeys(NAMES, "UP"), balancer.log()[-2000:]


async def test_with_every_node_gone_haproxy_answers_as_a_node_does_while_its_store_is_away(
    nodes: dict[str, ServerProcess], balancer: Haproxy, fleet: Callctl,
) -> None:
    for node in nodes.values():
        node.stop()
    for name in nodes:
        await asyncio.to_thread(balancer.wait_state, name, "DOWN")
    async with httpx.AsyncClient(base_url=balancer.url, timeout=5) as http:
        refused = await http.post("/v1/calls", json={"to": "bob", "sdp": "v=0"},
                                  headers={"Authorization": f"Bearer {nodes['a'].token('alice')}"})
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"] == "unavailable"
    code, _, err = await fleet.run("alice", "call", "bob", "--audio-out", "null",
                                   "--audio-in", "tone:440", server=balancer.url)
    assert code == 10, err  # docs/EXIT-CODES.md: the server is unreachable
    assert "no server node is available" in err and "<html>" not in err, err


async def test_a_listener_whose_node_is_killed_comes_back_through_haproxy_and_rings(
    nodes: dict[str, ServerProcess], balancer: Haproxy, fleet: Callctl,
) -> None:
    bob = await listen(fleet, balancer, "bob")
    dead = await holder(nodes)

    killed_at = time.time()
    nodes[dead].stop(signal.SIGKILL)
    # haproxy's health checks take the node out; meanwhile bob reconnects by himself
    marked_down, lost, restored = await asyncio.gather(
        asyncio.to_thread(balancer.wait_state, dead, "DOWN"),
        bob.wait_event("server.lost"),
        bob.wait_event("server.restored"),
    )
    now_on = await holder(nodes)
    assert now_on != dead

    alice = await fleet.call("alice", "bob", "--hangup-after", "1", server=balancer.url)
    await alice.wait_event("call.ringback")
    incoming = await bob.wait_event("call.incoming")
    assert await alice.exit_code() == 0, alice.stderr
    assert (await bob.wait_event("call.ended"))["reason"] == "hangup"
    assert len(bob.named("call.incoming")) == 1
    assert len(bob.named("server.restored")) == 1
    assert bob.proc.returncode is None  # still listening

    print(f"\nbob's stream was on node {dead} (SIGKILLed), resumed on node {now_on}:"
          f"\n  server.lost      {lost['ts'] - killed_at:6.3f} s after the kill"
          f"\n  server.restored  {restored['ts'] - killed_at:6.3f} s after the kill"
          f" (bob reachable again; lost: {lost.get('message')!r}, retry in {lost.get('retry_in_s')} s)"
          f"\n  haproxy DOWN     {marked_down:6.3f} s after the kill"
          f"\n  next call rang   {incoming['ts'] - killed_at:6.3f} s after the kill"
          f" (a new `callctl call` process started after the restore)")
    assert f"Server nodes/{dead} is DOWN" in balancer.log()


async def test_a_new_connection_to_a_dead_node_not_yet_marked_down_goes_to_another(
    tmp_path: Path, nodes: dict[str, ServerProcess], fleet: Callctl,
) -> None:
    """``retries`` + ``option redispatch 1``: what covers the second or so before the checks.

    ``balance first`` sends every request to node b first.  Checks 30 s apart
    (the first one of b, the first server, at start-up; once it passed, two
    failures are needed to take b out) leave b UP for the whole test after it
    is killed.
    """
    try:
        lb = Haproxy(tmp_path / "haproxy-first", {name: nodes[name].url for name in ("b", "a", "c")},
                     balance="first", check_interval="30s")
    except HaproxyMissing as exc:
        pytest.skip(f"needs haproxy: {exc}")
    with lb:
        deadline = time.monotonic() + WAIT
        while (row := lb.stats()["b"])["check_status"] != "L7OK":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.1)  # paces the looks at the stats page
        nodes["b"].stop(signal.SIGKILL)
        bob = await listen(fleet, lb, "bob")
        alice = await fleet.call("alice", "bob", "--hangup-after", "0.5", server=lb.url)
        await bob.wait_event("call.incoming")
        assert await alice.exit_code() == 0, alice.stderr
        assert lb.server_states()["b"].startswith("UP")  # taken for alive: only retries helped
        served = [r for r in lb.requests() if r["request"].startswith(("GET /v1", "POST /v1"))]
        assert served and all(r["server"] == "a" and r["retries"] == "+1"
                              and int(r["status"]) < 500 for r in served), served

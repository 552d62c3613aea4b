"""The NAT test network and coturn: what the harness promises calls across NATs will meet.

Needs root, ``ip`` and ``nft`` (skipped with the reason otherwise).  The ICE
peers are aioice Connections run by this interpreter inside a host's
namespace; they exchange their candidates through files in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callctl.harness.child import Child
from callctl.harness.netns import (
    HOSTS_WITH_C,
    PUBLIC,
    Host,
    NetnsError,
    Router,
    Topology,
    available,
    namespaces,
    remove_stale,
)
from callctl.harness.turn import (
    Coturn,
    StunError,
    parse_binding_response,
    rest_credentials,
    stun_binding,
)

WAIT = 10.0
#: How long a datagram that should not arrive gets: it is dropped (or not) while it is sent,
#: in the sender's softirq, so this is slack, not a guess at a delivery time.
SILENCE = 0.3


def skip_unless_available() -> None:
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def net() -> Iterator[Topology]:
    skip_unless_available()
    with Topology() as topology:
        yield topology


def skip_unless_coturn() -> None:
    if shutil.which("turnserver") is None:
        pytest.skip("no turnserver on PATH (the coturn package)")


@pytest.fixture
def turn(net: Topology, tmp_path: Path) -> Iterator[Coturn]:
    skip_unless_coturn()
    with Coturn(tmp_path / "coturn", net.address("pub"), netns=net.ns("pub")) as server:
        yield server


def receive(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, tuple[str, int]] | None:
    """The next datagram on ``sock`` and its source, or None after ``timeout``."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return None
    data, source = sock.recvfrom(2048)
    return data, source


def udp(net: Topology, node: str, address: str = "0.0.0.0", port: int = 0) -> socket.socket:
    sock = net.socket(node)
    sock.bind((address, port))
    return sock


# ------------------------------------------------------------------ the network


def test_a_reaches_the_public_segment_but_nothing_from_there_reaches_b(net: Topology) -> None:
    with udp(net, "pub", PUBLIC, 5000) as pub, udp(net, "a", port=4000) as a, \
            udp(net, "b", port=6000) as b:
        a.sendto(b"hello", (PUBLIC, 5000))
        got = receive(pub)
        assert got is not None and got[0] == b"hello"
        assert got[1][0] == net.address("nat_a")  # NATed: the LAN address never shows
        # b opens a flow to pub: nat_b maps it to some public port
        b.sendto(b"out", (PUBLIC, 5000))
        got = receive(pub)
        assert got is not None and got[1][0] == net.address("nat_b")
        mapped = got[1][1]
        # a tries b's own port and the port nat_b mapped for pub: both are dropped
        for port in {6000, mapped}:
            a.sendto(b"from a", (net.address("nat_b"), port))
        pub.sendto(b"marker", (net.address("nat_b"), mapped))  # the flow's peer gets through
        got = receive(b)
        assert got is not None and got[0] == b"marker" and got[1] == (PUBLIC, 5000)
        assert receive(b, SILENCE) is None


def test_nat_a_keeps_the_port_nat_b_maps_each_destination_anew(net: Topology) -> None:
    seen: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
    receivers = [udp(net, "pub", PUBLIC, 5000 + i) for i in range(4)]
    try:
        for host in seen:
            with udp(net, host, port=4000) as sender:
                for rx in receivers:
                    sender.sendto(host.encode(), rx.getsockname())
                    got = receive(rx)
                    assert got is not None and got[0] == host.encode()
                    seen[host].append(got[1])
    finally:
        for rx in receivers:
            rx.close()
    assert set(seen["a"]) == {(net.address("nat_a"), 4000)}  # endpoint-independent mapping
    assert {ip for ip, _ in seen["b"]} == {net.address("nat_b")}
    assert len({port for _, port in seen["b"]}) > 1  # symmetric: a new port per destination


def test_a_third_host_shares_nat_b_and_its_lan() -> None:
    skip_unless_available()
    with Topology(HOSTS_WITH_C) as net, udp(net, "pub", PUBLIC, 5000) as pub, \
            udp(net, "b", port=7000) as b, udp(net, "c") as c:
        assert net.address("c") == "10.2.0.3"
        c.sendto(b"c", (PUBLIC, 5000))
        got = receive(pub)
        assert got is not None and got[1][0] == net.address("nat_b")
        c.sendto(b"neighbour", (net.address("b"), 7000))  # the LAN is bridged, not NATed
        got = receive(b)
        assert got is not None and got[1][0] == "10.2.0.3"


def test_a_host_on_the_public_segment_is_reached_directly() -> None:
    skip_unless_available()
    hosts = {"a": Host("nat_a", "10.1.0.2"), "p": Host("pub", "203.0.113.10")}
    with Topology(hosts) as net, udp(net, "p", port=5000) as p, udp(net, "a") as a:
        a.sendto(b"to p", ("203.0.113.10", 5000))
        got = receive(p)
        assert got is not None and got[1][0] == net.address("nat_a")
        p.sendto(b"reply", got[1])
        assert receive(a) is not None


def test_link_down_drops_everything_until_link_up(net: Topology) -> None:
    with udp(net, "pub", PUBLIC, 5000) as pub, udp(net, "a", port=4000) as a:
        a.sendto(b"before", (PUBLIC, 5000))
        assert receive(pub) is not None
        net.link_down("a")
        a.sendto(b"while down", (PUBLIC, 5000))  # no error: the host does not know
        pub.sendto(b"to a while down", (net.address("nat_a"), 4000))
        assert receive(pub, SILENCE) is None
        assert receive(a, SILENCE) is None
        # the host keeps its address and routes, only marked linkdown
        routes = json.loads(net.run("a", "ip", "-j", "route", "show", "default").stdout)
        assert routes and "linkdown" in routes[0]["flags"]
        assert net.address("a") in net.run("a", "ip", "-br", "addr", "show", "eth0").stdout
        net.link_up("a")
        a.sendto(b"after", (PUBLIC, 5000))
        # the carrier loss flushed a's ARP entry for its router: "while down" waited in the
        # neighbour queue (about 3 s of ARP retries), and goes out first if the link is back by then
        got = receive(pub)
        if got is not None and got[0] == b"while down":
            got = receive(pub)
        assert got is not None and got[0] == b"after"
        pub.sendto(b"back", got[1])
        got = receive(a)  # the same the other way: the router's neighbour queue held "to a while down"
        if got is not None and got[0] == b"to a while down":
            got = receive(a)
        assert got is not None and got[0] == b"back"
        connected = net.run("nat_a", "ip", "route", "show", "dev", "lan").stdout
        assert "10.1.0.0/24" in connected and "linkdown" not in connected


def test_change_address_moves_the_host_to_a_new_address(net: Topology) -> None:
    old = net.address("a")
    new = net.change_address("a")
    assert (old, new) == ("10.1.0.2", "10.1.0.12")
    assert net.address("a") == new
    shown = net.run("a", "ip", "-br", "-4", "addr", "show", "eth0").stdout
    assert new in shown and old + "/" not in shown
    with net.socket("a") as stale, pytest.raises(OSError):
        stale.bind((old, 0))  # sockets on the old address are gone for good
    with udp(net, "pub", PUBLIC, 5000) as pub, udp(net, "a", new) as a:
        a.sendto(b"renumbered", (PUBLIC, 5000))
        got = receive(pub)
        assert got is not None and got[1][0] == net.address("nat_a")
        pub.sendto(b"reply", got[1])
        assert receive(a) is not None
    assert net.change_address("a") == "10.1.0.22"  # never the old one again


def test_close_leaves_no_namespace_and_a_failed_build_none_either() -> None:
    skip_unless_available()
    with Topology() as net:
        created = net.created
        assert set(created) <= set(namespaces()) and len(created) == 5
    assert not set(created) & set(namespaces())
    broken = Topology(routers={"nat_a": Router("203.0.113.2", "10.1.0.1/99")},
                      hosts={"a": Host("nat_a", "10.1.0.2")})
    with pytest.raises(NetnsError, match="10.1.0.1/99"), broken:
        pass
    assert not [ns for ns in namespaces() if ns.startswith(broken.name_prefix)]


def test_two_topologies_coexist() -> None:
    skip_unless_available()
    with Topology() as one, Topology() as two, udp(one, "pub", PUBLIC, 5000) as pub1, \
            udp(two, "pub", PUBLIC, 5000) as pub2, udp(two, "a") as a2:
        a2.sendto(b"two", (PUBLIC, 5000))
        got = receive(pub2)
        assert got is not None and got[0] == b"two"
        assert receive(pub1, SILENCE) is None


def test_close_kills_what_still_runs_in_a_namespace() -> None:
    skip_unless_available()
    net = Topology().build()
    child = Child([*net.prefix("a"), "sleep", "60"], name="sleep")
    try:
        deadline = time.monotonic() + WAIT
        while str(child.pid) not in in_namespace(net.ns("a")):  # once `ip netns exec` has exec'd
            assert time.monotonic() < deadline, child.describe()
        with pytest.warns(ResourceWarning, match="killed"):
            net.close()
        assert child.wait_exit(WAIT) is not None
    finally:
        child.stop(grace=0)
        net.close()


def in_namespace(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()


def test_remove_stale_deletes_what_a_dead_run_left_and_nothing_else() -> None:
    skip_unless_available()
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now: the run that "made" the namespace has died
    stale, live = f"cc{gone.pid}-0-a", f"cc{os.getpid()}-99-a"
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        assert stale in remove_stale()
        assert stale not in namespaces() and live in namespaces()
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


# ------------------------------------------------------------------------ STUN


def test_a_binding_response_gives_the_xor_mapped_address() -> None:
    tid = bytes(range(12))
    port, address = 4000 ^ 0x2112, int.from_bytes(socket.inet_aton("203.0.113.2")) ^ 0x2112A442
    attr = b"\x00\x20\x00\x08\x00\x01" + port.to_bytes(2) + address.to_bytes(4)
    response = b"\x01\x01" + len(attr).to_bytes(2) + b"\x21\x12\xa4\x42" + tid + attr
    assert parse_binding_response(response, tid) == ("203.0.113.2", 4000)
    assert parse_binding_response(response, bytes(12)) is None  # another transaction
    error = b"\x00\x09\x00\x08\x00\x00\x04\x01Unau"
    with pytest.raises(StunError, match="401"):
        parse_binding_response(b"\x01\x11\x00\x0c\x21\x12\xa4\x42" + tid + error, tid)


def test_rest_credentials_are_expiry_user_and_the_hmac_of_it() -> None:
    assert rest_credentials("s3cret", "alice", ttl=60, now=1000) == (
        "1060:alice", "D17GpvatkiCXfrPWU3YLqLQaBvo=")


# ------------------------------------------------------------------------ TURN

PEER = """
import asyncio, json, os, sys, time
import aioice

role, host, port, username, password, policy, remote = sys.argv[1:]

def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)

async def main():
    conn = aioice.Connection(
        ice_controlling=role == "controlling", stun_server=(host, int(port)),
        turn_server=(host, int(port)), turn_username=username, turn_password=password,
        use_ipv6=False, transport_policy=getattr(aioice.TransportPolicy, policy))
    try:
        await conn.gather_candidates()
        emit("local", username=conn.local_username, password=conn.local_password,
             candidates=[c.to_sdp() for c in conn.local_candidates])
        if remote == "-":
            return
        deadline = time.monotonic() + 20
        while not os.path.exists(remote):  # the test writes it once it has both sides
            if time.monotonic() > deadline:
                emit("failed", reason="no remote description")
                return
            await asyncio.sleep(0.02)
        with open(remote) as f:
            desc = json.load(f)
        conn.remote_username, conn.remote_password = desc["username"], desc["password"]
        for line in desc["candidates"]:
            await conn.add_remote_candidate(aioice.Candidate.from_sdp(line))
        await conn.add_remote_candidate(None)
        await asyncio.wait_for(conn.connect(), 20)
        pair = conn._nominated[1]  # aioice has no public "selected pair"; aiortc reads this too
        emit("connected", local=pair.local_candidate.type, remote=pair.remote_candidate.type)
        if role == "controlling":
            await conn.send(b"hello over the relay")
            data = await asyncio.wait_for(conn.recv(), 10)
        else:
            data = await asyncio.wait_for(conn.recv(), 10)
            await conn.send(b"ack")
        emit("received", data=data.decode())
    except Exception as exc:
        emit("failed", reason=repr(exc))
    finally:
        await conn.close()

asyncio.run(main())
"""


def peer(net: Topology, host: str, role: str, turn: Coturn, credentials: tuple[str, str],
         policy: str = "ALL", remote: Path | None = None) -> Child:
    """An aioice Connection in ``host``'s namespace; prints local/connected/received/failed."""
    argv = [*net.prefix(host), sys.executable, "-c", PEER, role, turn.address, str(turn.port),
            *credentials, policy, str(remote) if remote is not None else "-"]
    return Child(argv, name=f"peer-{host}-{role}")


def ice(net: Topology, turn: Coturn, tmp_path: Path, policy: str,
        hosts: tuple[str, str] = ("a", "b")) -> list[dict[str, Any]]:
    """ICE from ``hosts[0]`` (controlling) to ``hosts[1]`` and a datagram each way.

    Each side's ``connected`` event, with its local candidates added.
    """
    files = [tmp_path / f"remote-{i}.json" for i in range(2)]
    peers = [peer(net, host, role, turn, turn.credentials(host), policy, file)
             for host, role, file in zip(hosts, ("controlling", "controlled"), files)]
    try:
        local = [p.wait_event("local", timeout=WAIT, fail_on="failed") for p in peers]
        for file, other in zip(files, reversed(local)):
            desc = {k: other[k] for k in ("username", "password", "candidates")}
            file.with_suffix(".tmp").write_text(json.dumps(desc))
            file.with_suffix(".tmp").rename(file)  # seen whole or not at all
        connected = [p.wait_event("connected", timeout=WAIT, fail_on="failed") for p in peers]
        received = [p.wait_event("received", timeout=WAIT, fail_on="failed")["data"] for p in peers]
        assert received == ["ack", "hello over the relay"]
        for p in peers:
            assert p.wait_exit(WAIT) == 0, p.describe()
        return [{**c, "candidates": lo["candidates"]} for c, lo in zip(connected, local)]
    finally:
        for p in peers:
            p.stop()


def test_two_relays_on_one_coturn_carry_a_datagram_between_the_nats(
        net: Topology, turn: Coturn, tmp_path: Path) -> None:
    for side in ice(net, turn, tmp_path, "RELAY"):
        assert side["local"] == side["remote"] == "relay"
        assert all(" typ relay" in c for c in side["candidates"])


@pytest.mark.parametrize("deny_private_peers", [True, False], ids=["deny-private", "allow-private"])
def test_with_every_candidate_only_a_relay_connects_the_two_nats(
        net: Topology, tmp_path: Path, deny_private_peers: bool) -> None:
    """Host and srflx candidates are offered and fail; a relay carries the call.

    Each side's private host candidate is paired with its relay too.  With
    private peers allowed, coturn does send to 10.x: ``pub``'s default route
    must swallow that (without one the send fails and coturn drops the whole
    allocation).
    """
    skip_unless_coturn()
    with Coturn(tmp_path / "coturn", PUBLIC, netns=net.ns("pub"),
                deny_private_peers=deny_private_peers) as turn:
        sides = ice(net, turn, tmp_path, "ALL")
    offered = {typ for side in sides for c in side["candidates"]
               for typ in ("host", "srflx", "relay") if f" typ {typ}" in c}
    assert offered == {"host", "srflx", "relay"}
    a = sides[0]
    assert "relay" in (a["local"], a["remote"]), sides


@pytest.mark.parametrize("case", ["wrong secret", "expired"])
def test_bad_credentials_give_no_relay_candidate(net: Topology, turn: Coturn, case: str) -> None:
    if case == "wrong secret":
        credentials = rest_credentials("not-" + turn.secret, "a")
    else:
        credentials = turn.credentials("a", ttl=-60)
    child = peer(net, "a", "controlling", turn, credentials)
    try:
        local = child.wait_event("local", timeout=WAIT, fail_on="failed")
        assert child.wait_exit(WAIT) == 0, child.describe()
    finally:
        child.stop()
    candidates = local["candidates"]
    assert any(" typ srflx" in c for c in candidates)  # coturn answered; it only refused to relay
    assert not [c for c in candidates if " typ relay" in c], candidates


def test_coturn_answers_stun_from_behind_each_nat(net: Topology, turn: Coturn) -> None:
    assert turn.url == f"turn:{PUBLIC}:3478?transport=udp"
    assert turn.stun_url == f"stun:{PUBLIC}:3478"
    with udp(net, "a", port=4000) as a, udp(net, "b", port=4000) as b:
        assert stun_binding(a, turn.server) == (net.address("nat_a"), 4000)
        assert stun_binding(b, turn.server)[0] == net.address("nat_b")


def test_coturn_on_loopback_relays_between_its_own_allocations(net: Topology, tmp_path: Path) -> None:
    """On 127.0.0.1 its relays are loopback peers: the config allows those, or nothing relays."""
    skip_unless_coturn()
    with Coturn(tmp_path / "lo", "127.0.0.1", netns=net.ns("pub")) as lo:
        for side in ice(net, lo, tmp_path, "RELAY", hosts=("pub", "pub")):
            assert side["local"] == side["remote"] == "relay"

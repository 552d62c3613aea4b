"""Real calls between two private networks behind real NATs, through coturn (docs/NETWORK.md).

Every call here is between callctl processes in network namespaces; the far
end records what it hears and the test reads the tone back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callctl.harness import netns
from callctl.harness.turn import Coturn
from tests.audio import tone_fraction
from tests.net.conftest import CALLEE_HZ, CALLER_HZ, NetCallctl, server_in_pub, turn_args

WAIT = 20.0


async def connected_pair(cli: NetCallctl, tmp_path: Path, *caller_args: str,
                         kiosk_args: tuple[str, ...] = ()) -> tuple[object, object, Path, Path]:
    """``bob`` (a kiosk on ``a``) called by ``alice`` on ``b``; both connected; their recordings."""
    bob_rec, alice_rec = tmp_path / "bob.wav", tmp_path / "alice.wav"
    bob = await cli.kiosk("a", "bob", "--record", str(bob_rec), *kiosk_args)
    alice = await cli.dial("b", "alice", "bob", "--record", str(alice_rec), *caller_args)
    await alice.wait_event("call.connected", timeout=WAIT)
    await bob.wait_event("call.connected", timeout=WAIT)
    return alice, bob, alice_rec, bob_rec


async def test_kiosks_behind_two_nats_talk_through_turn(cli: NetCallctl, tmp_path: Path) -> None:
    alice, bob, alice_rec, bob_rec = await connected_pair(cli, tmp_path, "--hangup-after", "3")
    assert await alice.exit_code(timeout=WAIT) == 0
    for side in (alice, bob):
        route = side.named("call.connected")[0]["route"]
        assert route["via"] == "relay", route  # a symmetric NAT: no direct pair can work
    assert not alice.named("warning") and not bob.named("warning")
    ended = await bob.wait_event("call.ended")
    assert (ended["reason"], ended["source"]) == ("hangup", "remote")
    for rec, hz in ((alice_rec, CALLEE_HZ), (bob_rec, CALLER_HZ)):
        duration, fraction = tone_fraction(rec, hz)
        assert duration > 2.0 and fraction > 0.8, (rec.name, duration, fraction)


async def test_without_turn_the_call_fails_cleanly_and_says_why(
        net: netns.Topology, tmp_path: Path) -> None:
    srv = server_in_pub(net, tmp_path / "srv")  # no --stun, no --turn
    runner = NetCallctl(srv, tmp_path, net)
    try:
        bob = await runner.kiosk("a", "bob", "--connect-timeout", "4")
        alice = await runner.dial("b", "alice", "bob", "--hangup-after", "30", "--connect-timeout", "4")
        assert await alice.exit_code(timeout=WAIT) == 9  # network_lost, never a "successful" 0
        assert not alice.named("call.connected")
        ended = alice.named("call.ended")[0]
        assert ended["reason"] == "network_lost", ended
        bob_end = await bob.wait_event("call.ended", timeout=WAIT)
        assert bob_end["reason"] == "network_lost", bob_end
        # each side's connect timer runs from its own start: the one that fires first says why
        message = " ".join(e["message"] for side in (alice, bob) for e in side.named("error"))
        assert "could not be established" in message and "TURN" in message, message
    finally:
        await runner.close()
        srv.stop()


@pytest.mark.parametrize("trouble", ["wrong secret", "coturn stopped"])
async def test_a_turn_server_that_fails_is_said_and_the_call_ends_network_lost(
        net: netns.Topology, turn: Coturn, tmp_path: Path, trouble: str) -> None:
    if trouble == "wrong secret":
        args = turn_args(turn, tmp_path, secret="not-the-secret-coturn-has")
        expect = "refused our credentials"
    else:
        dead = Coturn(tmp_path / "dead", netns.PUBLIC, port=3479, netns=net.ns("pub")).start()
        dead.stop()  # it was there, now it is not
        args = ["--turn", dead.url, "--turn-secret-file", str(_secret(tmp_path, dead.secret))]
        expect = "unreachable"
    srv = server_in_pub(net, tmp_path / "srv", *args)
    runner = NetCallctl(srv, tmp_path, net)
    try:
        bob = await runner.kiosk("a", "bob", "--connect-timeout", "4")
        alice = await runner.dial("b", "alice", "bob", "--connect-timeout", "4")
        warning = await alice.wait_event("warning", timeout=WAIT)
        assert expect in warning["message"] and "TURN server turn:" in warning["message"], warning
        await alice.proc.await_stderr(expect)  # one line on stderr too, whatever reads stdout
        assert await alice.exit_code(timeout=WAIT) == 9
        assert alice.named("call.ended")[0]["reason"] == "network_lost"
        assert expect in (await bob.wait_event("warning"))["message"]
    finally:
        await runner.close()
        srv.stop()


def _secret(tmp_path: Path, secret: str) -> Path:
    path = tmp_path / "dead-secret"
    path.write_text(secret + "\n")
    return path


async def _talk_after(side: object, reconnected: dict[str, object]) -> None:
    """Wait until two more seconds of call have passed after the reconnect (level reports)."""
    levels = len(side.named("media.level"))  # type: ignore[attr-defined]
    await side.wait_event("media.level", count=levels + 4, timeout=WAIT)  # type: ignore[attr-defined]


def assert_tone_at_the_end(rec: Path, hz: float) -> None:
    """The last 1.5 s of the recording (two seconds of call after the reconnect) hold the tone.

    The recording has no audio for the outage (nothing was played), so the
    end of the file is what came after the reconnect.
    """
    duration, _ = tone_fraction(rec, hz)
    _, fraction = tone_fraction(rec, hz, start_s=duration - 1.5)
    assert duration >= 1.5 and fraction > 0.8, (rec.name, duration, fraction)


async def test_a_five_second_cable_pull_is_a_hiccup_not_a_hang_up(
        net: netns.Topology, cli: NetCallctl, tmp_path: Path) -> None:
    alice, bob, alice_rec, bob_rec = await connected_pair(cli, tmp_path)
    net.link_down("a")
    try:
        for side in (alice, bob):
            await side.wait_event("call.reconnecting", timeout=WAIT)
        await asyncio.sleep(5.0)  # the outage itself: 5 s without a cable
    finally:
        net.link_up("a")
    for side in (alice, bob):
        back = await side.wait_event("call.reconnected", timeout=WAIT)
        assert back["route"]["via"] == "relay", back
    await _talk_after(bob, {})
    hangup = await cli.start("alice", "hangup", "--device", "phone-b")
    assert await hangup.exit_code() == 0
    assert await alice.exit_code(timeout=WAIT) == 0
    assert (await bob.wait_event("call.ended"))["reason"] == "hangup"
    for rec, hz in ((alice_rec, CALLEE_HZ), (bob_rec, CALLER_HZ)):
        assert_tone_at_the_end(rec, hz)


async def test_a_cable_out_for_longer_than_the_reconnect_timeout_ends_the_call_on_both_sides(
        net: netns.Topology, cli: NetCallctl, tmp_path: Path) -> None:
    alice, bob, _, _ = await connected_pair(cli, tmp_path, "--reconnect-timeout", "3",
                                            kiosk_args=("--reconnect-timeout", "3"))
    net.link_down("a")
    try:
        assert await alice.exit_code(timeout=WAIT) == 9
        bob_end = await bob.wait_event("call.ended", timeout=WAIT)
    finally:
        net.link_up("a")
    assert alice.named("call.ended")[0]["reason"] == "network_lost"
    assert bob_end["reason"] == "network_lost", bob_end
    assert any("did not come back" in e["message"] for e in alice.named("error"))


async def test_a_kiosk_that_gets_a_new_address_mid_call_reconnects(
        net: netns.Topology, cli: NetCallctl, tmp_path: Path) -> None:
    alice, bob, alice_rec, _ = await connected_pair(cli, tmp_path)
    old = net.address("a")
    new = net.change_address("a")
    assert new != old
    for side in (alice, bob):
        await side.wait_event("call.reconnected", timeout=WAIT)
    await _talk_after(alice, {})
    hangup = await cli.start("alice", "hangup", "--device", "phone-b")
    assert await hangup.exit_code() == 0
    assert await alice.exit_code(timeout=WAIT) == 0
    assert_tone_at_the_end(alice_rec, CALLEE_HZ)


async def test_relay_only_takes_the_relay_even_where_a_direct_path_exists(
        cli: NetCallctl, tmp_path: Path) -> None:
    # b and c share a LAN: without --relay-only they would talk host to host
    bob = await cli.on("c", "bob", "listen", "--auto-accept", "--device", "kiosk-c",
                       "--audio-in", f"tone:{CALLEE_HZ:g}", "--audio-out", "null", "--relay-only")
    await bob.wait_event("registered")
    alice = await cli.dial("b", "alice", "bob", "--hangup-after", "1", "--relay-only")
    assert await alice.exit_code(timeout=WAIT) == 0
    route = alice.named("call.connected")[0]["route"]
    assert route == {"via": "relay", "local": "relay", "remote": "relay"}, route

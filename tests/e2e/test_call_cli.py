"""Real calls between real processes: server, `listen`, `call`, control commands.

Every exit code of docs/EXIT-CODES.md is produced here for real.
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from tests.audio import tone_fraction
from tests.cli import Callctl
from tests.helpers import ServerProcess


async def test_tone_call_is_recorded_at_the_callee(cli: Callctl, tmp_path: Path) -> None:
    rec = tmp_path / "bob.wav"
    bob = await cli.listen("bob", "--auto-accept", "--once", "--record", str(rec))
    alice = await cli.call("alice", "bob", "--hangup-after", "3")
    connected = await alice.wait_event("call.connected")
    assert connected["peer"] == "bob" and connected["setup_ms"] > 0
    assert await alice.exit_code() == 0
    ended = alice.named("call.ended")[0]
    assert (ended["reason"], ended["source"]) == ("hangup", "local")
    assert await bob.exit_code() == 0
    bob_end = bob.named("call.ended")[0]
    assert (bob_end["reason"], bob_end["source"]) == ("hangup", "remote")
    duration, fraction = tone_fraction(rec, 440)
    assert abs(duration - bob_end["duration_s"]) < 0.5, (duration, bob_end)
    assert fraction > 0.9, fraction
    events = [e["event"] for e in alice.events]
    assert events[:2] == ["registered", "call.outgoing"]
    assert "call.ringback" in events
    assert "media.flowing" in events
    assert all(e["v"] == 1 and isinstance(e["ts"], float) for e in alice.events)


async def test_script_accepts_through_the_control_socket(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--once")
    alice = await cli.call("alice", "bob", "--hangup-after", "1")
    ring = await bob.wait_event("call.incoming")
    code, out, err = await cli.run("bob", "status", "--json")
    assert code == 0 and '"state": "incoming"' in out
    code, out, err = await cli.run("bob", "accept", ring["call_id"])
    assert code == 0, err
    await alice.wait_event("call.connected")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0


async def test_decline_from_a_third_process_exits_3(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--once")
    alice = await cli.call("alice", "bob")
    await bob.wait_event("call.incoming")
    code, _, err = await cli.run("bob", "decline")
    assert code == 0, err
    assert await alice.exit_code() == 3
    assert alice.named("call.ended")[0]["reason"] == "declined"
    assert await bob.exit_code() == 3


async def test_busy_exits_4(cli: Callctl) -> None:
    await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.connected")
    carol = await cli.call("carol", "bob", device="other")
    assert await carol.exit_code() == 4
    assert carol.named("call.ended")[0]["reason"] == "busy"


async def test_ring_timeout_exits_5(cli: Callctl) -> None:
    await cli.listen("bob")
    alice = await cli.call("alice", "bob", "--ring-timeout", "1")
    await alice.wait_event("call.ringback")
    assert await alice.exit_code() == 5


async def test_unknown_user_exits_6(cli: Callctl) -> None:
    alice = await cli.call("alice", "nobody", "--ring-timeout", "1")
    assert await alice.exit_code() == 6
    assert alice.named("call.ended")[0]["source"] == "server"


async def test_caller_cancel_exits_7_on_both_sides(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--once")
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.ringback")
    code, _, err = await cli.run("alice", "hangup")
    assert code == 0, err
    assert await alice.exit_code() == 7
    assert await bob.exit_code() == 7


async def test_two_devices_first_accept_wins_other_exits_8(cli: Callctl) -> None:
    phone = await cli.listen("bob", "--once", "--accept-after", "0.5", device="phone")
    desk = await cli.listen("bob", "--once", "--accept-after", "0.5", device="desk-bob")
    alice = await cli.call("alice", "bob", "--hangup-after", "2")
    await alice.wait_event("call.connected")
    codes = sorted([await phone.exit_code(), await desk.exit_code()])
    assert codes == [0, 8]
    assert await alice.exit_code() == 0


async def test_a_callee_killed_mid_call_is_told_by_the_server_not_waited_for(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob", "--reconnect-timeout", "60")
    await alice.wait_event("call.connected")
    await bob.wait_event("call.connected")
    bob.signal(signal.SIGKILL)
    # its kernel closed its event stream: the server ends the call (after a 2 s grace), the
    # caller does not sit out its 60 s reconnect timeout (docs/NETWORK.md, "A peer that really died")
    assert await alice.exit_code(timeout=15) == 9
    ended = alice.named("call.ended")[0]
    assert (ended["reason"], ended["source"]) == ("network_lost", "server"), ended


async def test_nothing_listening_exits_10(cli: Callctl) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alice = await cli.call("alice", "bob", server=f"http://127.0.0.1:{port}")
    assert await alice.exit_code() == 10
    assert "cannot reach the server" in alice.stderr


async def test_bad_token_exits_11(cli: Callctl) -> None:
    alice = await cli.start(None, "call", "bob", "--audio-in", "tone", "--audio-out", "null",
                            env={"CALLCTL_TOKEN": cli.server.token("alice")[:-4] + "AAAA"})
    assert await alice.exit_code() == 11


async def test_missing_microphone_exits_12_before_dialing(cli: Callctl) -> None:
    code, _, err = await cli.run("alice", "call", "bob", "--audio-in", "mic", "--audio-out", "null")
    assert code == 12
    assert "microphone" in err and len(err.strip().splitlines()) == 1


async def test_max_duration_exits_13(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--once")
    alice = await cli.call("alice", "bob", "--max-duration", "1")
    assert await alice.exit_code() == 13
    assert await bob.exit_code() in (0, 13)


async def test_ctrl_c_hangs_up_and_exits_130(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--once")
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.connected")
    alice.signal(signal.SIGINT)
    assert await alice.exit_code() == 130
    assert await bob.exit_code() == 0
    assert bob.named("call.ended")[0]["source"] == "remote"
    assert bob.named("call.ended")[0]["reason"] == "hangup"


async def test_allow_list_refuses_a_stranger_without_ringing(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--allow", "alice")
    mallory = await cli.call("mallory", "bob")
    assert await mallory.exit_code() == 3
    refused = await bob.wait_event("call.refused")
    assert refused["peer"] == "mallory"
    assert bob.named("call.incoming") == []
    # and mallory never heard it ring: no ringback (nor its tone) for a caller bob refuses
    assert mallory.named("call.ringback") == []
    alice = await cli.call("alice", "bob", "--hangup-after", "0.5")
    assert await alice.exit_code() == 0


async def test_listener_survives_a_server_restart(cli: Callctl, server: ServerProcess) -> None:
    bob = await cli.listen("bob", "--auto-accept")
    server.restart()
    await bob.wait_event("server.lost")
    await bob.wait_event("server.restored")
    alice = await cli.call("alice", "bob", "--hangup-after", "0.5")
    assert await alice.exit_code() == 0
    assert bob.proc.returncode is None


async def test_hooks_get_the_call_in_their_environment(cli: Callctl, tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    line = "sh -c 'echo \"$CALLCTL_EVENT $CALLCTL_PEER $CALLCTL_MEDIA $CALLCTL_REASON $CALLCTL_CALL_ID\" >> " + str(log) + "'"
    bob = await cli.listen("bob", "--auto-accept", "--once", "--on-ring", line, "--on-connect", line,
                           "--on-end", line)
    alice = await cli.call("alice", "bob", "--hangup-after", "0.5")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    call_id = alice.named("call.connected")[0]["call_id"]
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted([
        f"call.incoming alice audio  {call_id}",
        f"call.connected alice audio  {call_id}",
        f"call.ended alice audio hangup {call_id}",
    ])


async def test_mute_reaches_the_peer(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.connected")
    code, _, err = await cli.run("alice", "mute")
    assert code == 0, err
    await alice.wait_event("media.muted")
    await bob.wait_event("peer.muted")
    code, _, err = await cli.run("alice", "mute")  # again: nothing new to say
    assert code == 0, err
    code, _, _ = await cli.run("alice", "unmute")
    await bob.wait_event("peer.unmuted")
    assert len(alice.named("media.muted")) == 1 and len(bob.named("peer.muted")) == 1
    code, out, _ = await cli.run("bob", "status")
    assert "connected" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--audio-in", "trumpet"], "unknown audio source"),
        (["--audio-in", "tone:abc"], "bad tone frequency"),
        (["--audio-in", "file:/nonexistent.wav"], "no such file"),
        (["--audio-in", "tone", "--audio-out", "file:/nonexistent/dir/x.wav"], "no such directory"),
        (["--audio-in", "tone", "--audio-out", "file:/tmp/x.xyz"], "unknown extension"),
        (["--audio-in", "tone", "--ring-timeout", "-3"], "--ring-timeout"),
        (["--audio-in", "tone", "--bogus"], "No such option: --bogus"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2_before_any_traffic(
    cli: Callctl, args: list[str], message: str
) -> None:
    # the server URL points nowhere: exit 2 (not 10) proves nothing was sent
    code, _, err = await cli.run("alice", "--server", "http://127.0.0.1:9", "call", "bob", *args)
    assert code == 2, err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


async def test_bad_peer_id_and_no_identity(cli: Callctl) -> None:
    code, _, err = await cli.run("alice", "call", "bad peer", "--audio-in", "tone")
    assert code == 2 and "bad user id" in err
    code, _, err = await cli.run(None, "accept")
    assert code == 2 and "no running callctl" in err


async def test_events_tails_a_running_listener(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--once")
    tail = await cli.start("bob", "events")  # --json is global; events prints NDJSON anyway
    alice = await cli.call("alice", "bob", "--hangup-after", "0.5")
    assert await alice.exit_code() == 0
    ended = await tail.wait_event("call.ended")
    assert ended["peer"] == "alice" and ended["reason"] == "hangup"
    assert [e["event"] for e in tail.events][:1] == ["call.incoming"]
    assert await bob.exit_code() == 0
    assert await tail.exit_code() == 0  # the feed ends when the listener exits


async def test_levels_are_reported_while_connected_and_bitrate_is_configurable(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--once")
    alice = await cli.call("alice", "bob", "--hangup-after", "2", "--bitrate", "16")
    assert await alice.exit_code() == 0
    levels = alice.named("media.level")
    assert 2 <= len(levels) <= 5  # bounded: twice a second
    assert all(0.2 < e["mic"] < 0.4 and 0.2 < e["remote"] < 0.4 for e in levels[1:]), levels
    assert await bob.exit_code() == 0
    code, _, err = await cli.run("alice", "call", "bob", "--audio-in", "tone", "--bitrate", "2")
    assert code == 2 and "--bitrate" in err


async def test_a_call_reports_its_figures_every_5_s_and_sums_them_up_at_the_end(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--auto-accept", "--once")
    alice = await cli.call("alice", "bob", "--hangup-after", "6")
    stats = await alice.wait_event("media.stats", timeout=15)
    # on loopback: nothing lost, a round trip of a few ms, Opus's ~32 kbit/s, a clean MOS
    assert stats["loss_in_pct"] == 0 and stats["packets_lost"] == 0, stats
    assert stats["packets_received"] > 150 and stats["packets_sent"] > 150, stats
    assert 0 <= stats["rtt_ms"] < 50 and 20 < stats["kbps_out"] < 60, stats
    assert stats["mos"] > 4.2, stats
    code, out, _ = await cli.run("alice", "status", "--json")
    assert code == 0 and json.loads(out)["call"]["stats"]["packets_sent"] > 0, out
    assert await alice.exit_code() == 0
    ended = alice.named("call.ended")[-1]
    assert ended["stats"]["packets_sent"] > stats["packets_sent"], ended
    assert ended["stats"]["loss_in_pct"] == 0 and ended["stats"]["mos"] > 4.2, ended
    assert (await bob.wait_event("call.ended"))["stats"]["packets_received"] > 250
    assert await bob.exit_code() == 0


async def test_a_call_past_the_rate_limit_waits_for_the_server_then_rings(tmp_path: Path) -> None:
    """30 calls a minute, a burst of 10: the 11th waits out its Retry-After (2 s) instead of failing."""
    from tests.helpers import running_server
    from tests.signaling.test_calls import OFFER

    servers = running_server(tmp_path, ["--calls-per-minute", "30"])
    server = next(servers)
    (tmp_path / "cli").mkdir()
    cli = Callctl(server, tmp_path / "cli")
    try:
        bob = await cli.listen("bob", "--auto-accept", "--once")
        async with server.client("alice", device="api") as api:
            for _ in range(10):  # the burst, spent on calls to someone else
                info = await api.create_call("carol", OFFER)
                await api.hangup(info.call_id)
        alice = await cli.call("alice", "bob", "--hangup-after", "1")
        assert await alice.exit_code() == 0, alice.stderr
        assert "calling again in" in alice.stderr
        assert await bob.exit_code() == 0
    finally:
        await cli.close()
        next(servers, None)  # stopped, and its log free of tracebacks

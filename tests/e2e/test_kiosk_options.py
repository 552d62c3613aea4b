"""What a kiosk and a script see: listen's timers, hooks on both commands, one-line failures."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from tests.cli import Callctl
from tests.e2e.test_bad_inputs import one_clean_line


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line]
    return {k: v for k, v in pairs if k.startswith("CALLCTL_")}


async def test_calling_yourself_by_token_is_one_line_and_exit_2(cli: Callctl) -> None:
    code, _, err = await cli.run(None, "--token", cli.server.token("alice"), "call", "alice",
                                 "--audio-in", "tone", "--audio-out", "null")
    assert code == 2 and "alice cannot call itself" in err
    one_clean_line(err)


async def test_an_unreachable_server_is_one_line_and_exit_10(cli: Callctl) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = await cli.run("alice", "call", "bob", "--audio-in", "tone", "--audio-out", "null",
                                 server=f"http://127.0.0.1:{port}")
    assert code == 10
    one_clean_line(err)
    assert f"cannot reach the server at http://127.0.0.1:{port} (cannot connect" in err, err


async def test_interrupting_a_ringing_caller_cancels_the_call_and_exits_130(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--once")
    alice = await cli.call("alice", "bob")
    await bob.wait_event("call.incoming")
    alice.signal(signal.SIGTERM)
    assert await alice.exit_code() == 130
    assert alice.named("call.ended")[0]["reason"] == "cancelled"
    assert await bob.exit_code() == 7
    assert (bob.named("call.ended")[0]["reason"], bob.named("call.ended")[0]["source"]) == ("cancelled", "remote")


async def test_listen_ring_timeout_ends_the_call_as_no_answer(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--once", "--ring-timeout", "1")
    alice = await cli.call("alice", "bob")
    assert await alice.exit_code() == 5
    assert alice.named("call.ended")[0]["reason"] == "no_answer"
    assert await bob.exit_code() == 5
    ended = bob.named("call.ended")[0]
    assert (ended["reason"], ended["source"]) == ("no_answer", "local")


async def test_listen_hangup_after_and_max_duration_count_from_connect(cli: Callctl) -> None:
    bob = await cli.listen("bob", "--once", "--auto-accept", "--hangup-after", "1")
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.connected")
    assert await alice.exit_code() == 0
    assert (alice.named("call.ended")[0]["reason"], alice.named("call.ended")[0]["source"]) == ("hangup", "remote")
    assert await bob.exit_code() == 0
    assert bob.named("call.ended")[0]["duration_s"] >= 1.0
    carol = await cli.listen("carol", "--once", "--auto-accept", "--max-duration", "1", device="door")
    alice = await cli.call("alice", "carol")
    assert await alice.exit_code() == 13
    assert await carol.exit_code() == 13
    assert carol.named("call.ended")[0]["reason"] == "max_duration"


async def test_hooks_run_on_call_too_with_who_and_how_long(cli: Callctl, tmp_path: Path) -> None:
    bob = await cli.listen("bob", "--once", "--auto-accept", "--on-end", f"sh -c 'env > {tmp_path}/bob-end'")
    alice = await cli.call("alice", "bob", "--hangup-after", "1",
                           "--on-ring", f"sh -c 'env > {tmp_path}/ringback'",
                           "--on-connect", f"sh -c 'env > {tmp_path}/connect'",
                           "--on-end", f"sh -c 'env > {tmp_path}/end'")
    assert await alice.exit_code() == 0
    assert await bob.exit_code() == 0
    ringback, connect, end = (env_file(tmp_path / n) for n in ("ringback", "connect", "end"))
    assert ringback["CALLCTL_EVENT"] == "call.ringback" and ringback["CALLCTL_PEER"] == "bob"
    assert (connect["CALLCTL_EVENT"], connect["CALLCTL_USER"], connect["CALLCTL_DEVICE"]) == (
        "call.connected", "alice", "desk")
    assert end["CALLCTL_REASON"] == "hangup" and float(end["CALLCTL_DURATION_S"]) >= 1.0
    bob_end = env_file(tmp_path / "bob-end")
    assert (bob_end["CALLCTL_USER"], bob_end["CALLCTL_DEVICE"], bob_end["CALLCTL_PEER"]) == ("bob", "kiosk", "alice")


async def test_device_goes_where_as_goes(cli: Callctl) -> None:
    await cli.listen("bob", device="kiosk")
    await cli.listen("bob", device="door")
    code, _, err = await cli.run("bob", "status")
    assert code == 2 and "pick one with --as/--device" in err
    code, out, err = await cli.run("bob", "--device", "door", "status")
    assert code == 0, err
    assert '"device": "door"' in out or "door" in out


async def test_help_shows_flags_as_flags_examples_and_the_exit_codes(cli: Callctl) -> None:
    for command in ("call", "listen"):
        code, out, err = await cli.run(None, command, "--help", env={"COLUMNS": "120"})
        assert code == 0, err
        assert "<bool>" not in out
        assert "Examples:" in out and "docs/EXIT-CODES.md" in out
    _, out, _ = await cli.run(None, "call", "--help", env={"COLUMNS": "200"})
    assert ".mkv" in out  # --record says it keeps the video too

"""Bad days for a kiosk: months of calls, a server restarted in the middle of a ring or of a call."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from callctl.harness import procfs
from tests.cli import Callctl
from tests.helpers import WAIT, ServerProcess, running_server


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server with a long ring and no limit on new calls worth mentioning."""
    (tmp_path / "roomy").mkdir()
    yield from running_server(tmp_path / "roomy", ["--ring-timeout", "30", "--heartbeat", "1",
                                                   "--calls-per-minute", "100000"])


@pytest.fixture
def roomy_cli(roomy: ServerProcess, tmp_path: Path) -> Iterator[Callctl]:
    (tmp_path / "roomy-cli").mkdir()
    runner = Callctl(roomy, tmp_path / "roomy-cli")
    yield runner


async def test_a_server_restart_during_a_ring_ends_it_on_both_sides(
    roomy_cli: Callctl, roomy: ServerProcess
) -> None:
    bob = await roomy_cli.listen("bob")  # rings; nobody answers
    alice = await roomy_cli.call("alice", "bob", "--hangup-after", "5")
    await bob.wait_event("call.incoming")
    await alice.wait_event("call.ringback")
    try:
        roomy.restart()  # the new server has no such call
        # both reconnect, ask the server about their call (404) and end it: long before the 30 s ring
        assert await alice.exit_code(timeout=WAIT) == 10
        ended = await bob.wait_event("call.ended", timeout=WAIT)
        assert (ended["reason"], ended["source"]) == ("server_unreachable", "server")
        assert alice.named("call.ended")[-1]["reason"] == "server_unreachable"
        # and the kiosk takes the next call as usual
        again = await roomy_cli.call("alice", "bob", "--hangup-after", "0.5")
        await bob.wait_event("call.incoming", count=2)
        code, _, err = await roomy_cli.run("bob", "accept")
        assert code == 0, err
        assert await again.exit_code() == 0
    finally:
        await roomy_cli.close()


async def test_a_call_hung_up_across_a_server_restart_ends_as_the_peers_hangup(
    cli: Callctl, server: ServerProcess
) -> None:
    """The restarted server has no record of the connected call, so the caller's hangup reaches
    nobody through it: the kiosk sees the peer close the media path, and ends the call as its hangup
    once the server (asked again) does not know the call, not as server_unreachable."""
    bob = await cli.listen("bob", "--auto-accept")
    # the caller hangs up while the server is down
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.connected")
    await bob.wait_event("call.connected")
    server.stop(signal.SIGKILL)
    await bob.wait_event("server.lost")
    await alice.wait_event("server.lost")
    alice.signal(signal.SIGINT)
    assert await alice.exit_code() == 130
    await bob.wait_event("call.reconnecting")  # its media path closed, and no hangup could reach us
    server.start()
    ended = await bob.wait_event("call.ended")
    assert (ended["reason"], ended["source"]) == ("hangup", "remote"), bob.proc.describe()
    await bob.wait_event("server.restored")
    # ... and once the server is back (both registered again, the call unknown to it)
    alice = await cli.call("alice", "bob")
    await alice.wait_event("call.connected")
    await bob.wait_event("call.connected", count=2)
    server.stop(signal.SIGKILL)
    server.start()
    await bob.wait_event("server.restored", count=2)
    await alice.wait_event("server.restored")
    alice.signal(signal.SIGINT)
    assert await alice.exit_code() == 130
    ended = await bob.wait_event("call.ended", count=2)
    assert (ended["reason"], ended["source"]) == ("hangup", "remote"), bob.proc.describe()
    assert len(bob.named("server.lost")) == len(bob.named("server.restored")) == 2


async def test_a_stream_reopened_on_purpose_is_neither_lost_nor_restored(cli: Callctl) -> None:
    """A broken media path reopens the event stream at once (the network may have broken it too):
    while the server stays reachable, that is no ``server.lost`` and no ``server.restored``."""
    bob = await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob")
    await bob.wait_event("call.connected")
    alice.signal(signal.SIGSTOP)  # its media stops: the kiosk reconnects the call
    try:
        await bob.wait_event("call.reconnecting")
    finally:
        alice.signal(signal.SIGCONT)
    # the re-offer that brings the media back came over the kiosk's reopened stream
    await bob.wait_event("call.reconnected", timeout=20)
    assert bob.named("server.lost") == [] and bob.named("server.restored") == [], bob.proc.describe()
    alice.signal(signal.SIGINT)
    assert await alice.exit_code() == 130
    assert (await bob.wait_event("call.ended"))["reason"] == "hangup"


async def test_sixty_calls_do_not_grow_the_listener(roomy_cli: Callctl, roomy: ServerProcess) -> None:
    """The leak was ~370 kB a call (every ended call's peer connection kept): 22 MB in 60.
    Without ``malloc_trim`` after each call, glibc's free heap alone grew ~5 MiB in 60; with it, the
    RSS stays within ~0.2 MiB, so 1.5 MiB is a leak of 25 kB a call.

    The long form is ``scripts/soak-calls`` (1,000 calls) and ``scripts/soak``."""
    from callctl.engine.phone import Phone
    from callctl.engine.session import CallLimits
    from callctl.media.adjust import preload
    from callctl.media.assembly import MediaOptions
    from callctl.signaling.protocol import EndReason, Media

    preload()
    bob = await roomy_cli.listen("bob", "--auto-accept")
    alice = Phone(client=roomy.client("alice", "desk"), device="desk",
                  media=MediaOptions(audio_in="tone:440", audio_out="null", video_out="null"))
    alice.start()
    try:
        await alice.registered.wait()

        async def calls(n: int) -> None:
            for _ in range(n):
                session = alice.dial("bob", Media.AUDIO, CallLimits(hangup_after=0.2))
                await session.ended.wait()
                assert session.outcome().reason == EndReason.HANGUP, session.outcome()

        await calls(30)  # warm-up: lazy imports, codecs, thread pools, the allocator settling
        await bob.wait_event("call.ended", count=30)
        before = (procfs.memory_kib(bob.proc.pid)["VmRSS"], procfs.open_fds(bob.proc.pid),
                  procfs.threads(bob.proc.pid))
        await calls(60)
        await bob.wait_event("call.ended", count=90)
        after = (procfs.memory_kib(bob.proc.pid)["VmRSS"], procfs.open_fds(bob.proc.pid),
                 procfs.threads(bob.proc.pid))
    finally:
        await alice.close()
        await roomy_cli.close()
    grown_mib = (after[0] - before[0]) / 1024
    assert grown_mib < 1.5, f"the listener grew {grown_mib:.1f} MiB in 60 calls"
    assert after[1] <= before[1] + 2, f"fds {before[1]} -> {after[1]}"
    assert after[2] <= before[2] + 2, f"threads {before[2]} -> {after[2]}"

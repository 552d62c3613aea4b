"""A hostile or broken peer: unusable offers are refused at once, a bad re-offer leaves the call up."""

from __future__ import annotations

import asyncio

import pytest

from callctl.signaling import protocol as p
from tests.cli import Callctl
from tests.helpers import WAIT, ServerProcess

ICE = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"
FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

GARBAGE = {
    "words": "hello world",
    "v0-alone": "v=0\r\n",
    "no-media": HEAD,
    "binary": "v=0\r\n\x00\x01\x02\xff\xfe" * 20,
    "video-only": HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + ICE + FINGERPRINT + "a=rtpmap:96 VP8/90000\r\n",
    "no-ice": HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + FINGERPRINT + "a=rtpmap:111 opus/48000/2\r\n",
    "no-dtls": HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + ICE + "a=rtpmap:111 opus/48000/2\r\n",
    "no-codec": HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 98\r\n" + ICE + FINGERPRINT + "a=rtpmap:98 iLBC/8000\r\n",
    "1500-m-lines": HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 1500,
}


async def test_unusable_offers_are_refused_at_once_and_the_kiosk_stays_up(
    cli: Callctl, server: ServerProcess
) -> None:
    bob = await cli.listen("bob", "--auto-accept")
    async with server.client("alice") as alice:
        for n, (name, sdp) in enumerate(GARBAGE.items(), start=1):
            if n % 9 == 0:  # the server's burst of new calls per caller is 10
                await asyncio.sleep(2.5)
            call = await alice.create_call("bob", sdp)
            ended = await bob.wait_event("call.ended", count=n)
            assert (ended["call_id"], ended["reason"]) == (call.call_id, "bad_sdp"), name
            info = await alice.get_call(call.call_id)
            assert (info.reason, info.ended_by) == (p.EndReason.BAD_SDP, p.Party.CALLEE), name
    assert not bob.named("call.incoming")  # nothing rang for any of them
    assert bob.proc.returncode is None
    # and a real call still works
    alice_call = await cli.call("alice", "bob", "--hangup-after", "1")
    assert await alice_call.exit_code() == 0


NO_RTCP_MUX = HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + ICE + FINGERPRINT + "a=rtpmap:111 opus/48000/2\r\n"
OPUS_0_HZ = (HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + ICE + FINGERPRINT
             + "a=rtcp-mux\r\na=rtpmap:111 opus/0/2\r\n")


@pytest.mark.parametrize("reoffer", ["hello world", GARBAGE["no-ice"], NO_RTCP_MUX, OPUS_0_HZ],
                         ids=["words", "no-ice", "no-rtcp-mux", "opus-0-hz"])
async def test_a_bad_reoffer_is_refused_and_the_media_goes_on(
    cli: Callctl, server: ServerProcess, reoffer: str
) -> None:
    bob = await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob", "--hangup-after", "30")
    connected = await alice.wait_event("call.connected")
    await bob.wait_event("call.connected")
    async with server.client("alice") as hostile:  # the caller's identity sends garbage
        await hostile.signal(connected["call_id"], "reoffer", {"sdp": reoffer})
    error = await bob.wait_event("error")
    assert "re-offer" in error["message"]
    # the media goes on both ways: levels keep coming with the peer's tone in them
    levels = len(bob.named("media.level"))
    await bob.wait_event("media.level", count=levels + 3, timeout=WAIT)
    assert all(r["remote"] > 0.05 for r in bob.named("media.level")[levels:])
    assert not bob.named("call.ended") and not alice.named("call.ended")
    alice.signal(2)  # SIGINT: hang up cleanly
    assert await alice.exit_code() == 130


@pytest.mark.parametrize("sdp", [
    HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + ICE + FINGERPRINT + "a=rtcp-mux\r\na=rtpmap:111 opus/0/2\r\n",
    HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n" + ICE + FINGERPRINT
    + "a=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=candidate:1 1 udp 2130706431 127.0.0.1 70000 typ host\r\n",
], ids=["opus-0-hz", "port-70000"])
async def test_offers_only_aiortc_can_refuse_are_bad_sdp_too(cli: Callctl, server: ServerProcess, sdp: str) -> None:
    bob = await cli.listen("bob", "--auto-accept")
    async with server.client("alice") as alice:
        call = await alice.create_call("bob", sdp)
        ended = await bob.wait_event("call.ended")
    assert (ended["call_id"], ended["reason"]) == (call.call_id, "bad_sdp")
    assert "Traceback" not in bob.stderr


async def test_an_unsolicited_reanswer_does_not_end_the_call(cli: Callctl, server: ServerProcess) -> None:
    await cli.listen("bob", "--auto-accept")
    alice = await cli.call("alice", "bob", "--hangup-after", "30")
    connected = await alice.wait_event("call.connected")
    async with server.client("bob", "kiosk") as hostile:
        await hostile.signal(connected["call_id"], "reanswer", {"sdp": "garbage"})
    levels = len(alice.named("media.level"))
    await alice.wait_event("media.level", count=levels + 3)
    assert not alice.named("call.ended")
    alice.signal(2)
    assert await alice.exit_code() == 130

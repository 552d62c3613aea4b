"""Event streams: resume with Last-Event-ID, server restarts, shutdown, heartbeats."""

from __future__ import annotations

import signal
import time

import httpx

from callctl.signaling import protocol as p
from callctl.signaling.client import Disconnected, SignalingClient
from tests.helpers import Events, ServerProcess, TcpProxy
from tests.signaling.test_calls import OFFER, online


async def test_ring_missed_during_a_cut_is_replayed_exactly_once(server: ServerProcess, events: list[Events]) -> None:
    proxy = await TcpProxy(server.port).start()
    try:
        bob = Events(SignalingClient(proxy.url, server.token("bob")))
        events.append(bob)
        await bob.wait(p.Registered)
        alice = await online(server, events, "alice")
        first = await alice.client.create_call("bob", OFFER)
        await bob.wait(p.CallIncoming, call_id=first.call_id)
        await alice.client.hangup(first.call_id)
        await bob.wait(p.CallEnded, call_id=first.call_id)

        # cut bob's connection; while he is away (the server may not have
        # noticed yet) a new call comes in and the first one's end is old news
        proxy.cut()
        await bob.wait(Disconnected)
        second = await alice.client.create_call("bob", OFFER)
        resumed = await bob.wait(p.Registered, count=2)
        assert resumed.replayed >= 1
        await bob.wait(p.CallIncoming, call_id=second.call_id)
        # every event arrived exactly once, in spite of replay + pending-ring snapshot
        assert len(bob.events(p.CallIncoming, second.call_id)) == 1
        assert len(bob.events(p.CallIncoming, first.call_id)) == 1
        assert len(bob.events(p.CallEnded, first.call_id)) == 1
        assert proxy.connections >= 2
    finally:
        await proxy.close()


async def test_resume_with_last_event_id_by_hand(server: ServerProcess) -> None:
    """Plain HTTP: what a curl user or browser sees when resuming."""
    token = server.token("bob")
    async with server.client("alice") as alice:
        call = await alice.create_call("bob", OFFER)
        async with httpx.AsyncClient(base_url=server.url) as http:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.stream("GET", "/v1/events", headers=headers) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                text = ""
                async for chunk in resp.aiter_text():
                    text += chunk
                    if "call.incoming" in text and text.endswith("\n\n"):
                        break
            ring_id = next(
                line[4:] for line in text.splitlines() if line.startswith("id: ")
            )
            await alice.hangup(call.call_id)
            headers["Last-Event-ID"] = ring_id
            async with http.stream("GET", "/v1/events", headers=headers) as resp:
                text = ""
                async for chunk in resp.aiter_text():
                    text += chunk
                    if "call.ended" in text and text.endswith("\n\n"):
                        break
    assert "call.incoming" not in text  # already seen: not sent again
    assert '"reason":"cancelled"' in text


async def test_clients_reregister_after_a_server_restart(server: ServerProcess, events: list[Events]) -> None:
    bob = await online(server, events, "bob")
    server.restart()  # same port, same secret, empty memory
    await bob.wait(Disconnected)
    registered = await bob.wait(p.Registered, count=2)
    assert registered.devices_online == 1
    assert bob.error is None
    # and the new server rings him
    async with server.client("alice") as alice:
        call = await alice.create_call("bob", OFFER)
    await bob.wait(p.CallIncoming, call_id=call.call_id)


async def test_unreachable_server_is_a_typed_condition(tmp_path) -> None:
    srv = ServerProcess(tmp_path).start()
    url, token = srv.url, srv.token("bob")
    srv.stop()
    bob = Events(SignalingClient(url, token))
    try:
        gone = await bob.wait(Disconnected, count=2)
        assert gone.error.message.startswith(url)
        assert gone.retry_in > 0
        assert bob.error is None  # still retrying, no exception
    finally:
        await bob.close()


async def test_sigterm_closes_open_streams_and_exits_zero(server: ServerProcess, events: list[Events]) -> None:
    for user in ("alice", "bob", "carol"):
        await online(server, events, user)
    assert server.proc is not None
    started = time.monotonic()
    code = server.stop(signal.SIGTERM)
    assert code == 0
    assert time.monotonic() - started < 8
    assert "Traceback" not in server.stderr_text()


async def test_heartbeats_keep_idle_streams_alive(server: ServerProcess) -> None:
    """The server is started with --heartbeat 1: comments arrive on an idle stream."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        headers = {"Authorization": f"Bearer {server.token('idle')}"}
        async with http.stream("GET", "/v1/events", headers=headers) as resp:
            text = ""
            async for chunk in resp.aiter_text():
                text += chunk
                if text.count(": hb") >= 2:
                    break
    assert text.startswith("retry: ")


async def test_health(server: ServerProcess, events: list[Events]) -> None:
    await online(server, events, "bob")
    async with server.client("x") as c:
        health = await c.health()
    assert health.status == "ok" and health.streams == 1


async def test_a_stream_ticket_opens_one_stream_once(server: ServerProcess) -> None:
    token = server.token("webuser")
    async with httpx.AsyncClient(base_url=server.url) as http:
        refused = await http.post("/v1/stream-tickets")
        assert refused.status_code == 401
        made = await http.post("/v1/stream-tickets", headers={"Authorization": f"Bearer {token}"})
        assert made.status_code == 201 and made.json()["expires_in"] == 30.0
        ticket = made.json()["ticket"]
        assert len(ticket) >= 24
        async with http.stream("GET", f"/v1/events?ticket={ticket}&device=web-1") as resp:
            assert resp.status_code == 200
            text = ""
            async for chunk in resp.aiter_text():
                text += chunk
                if "registered" in text and text.endswith("\n\n"):
                    break
        assert '"user":"webuser"' in text and '"device":"web-1"' in text
        again = await http.get(f"/v1/events?ticket={ticket}")
        assert (again.status_code, again.json()["error"]) == (401, "unauthorized")
        forged = await http.get("/v1/events?ticket=not-a-ticket")
        assert forged.status_code == 401
        page = await http.get("/")
        assert page.status_code == 200 and "callctl softphone" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        script = await http.get("/web/app.js")
        assert script.status_code == 200 and "stream-tickets" in script.text

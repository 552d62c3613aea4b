"""What a stranger or a bad day can send the server: each gets a 4xx, nothing is kept, it stays up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from callctl.signaling import protocol as p
from callctl.signaling.client import Disconnected
from tests.helpers import WAIT, Events, ServerProcess, running_server

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that gives a request 1 s to arrive, with fast heartbeats."""
    yield from running_server(tmp_path, ["--request-timeout", "1", "--heartbeat", "1"])


def raw_exchange(srv: ServerProcess, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what the server answers before it closes it."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT) as s:
        if data:
            s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):  # until the server closes: an event, not a guessed sleep
            answer += chunk
        return answer


def read_response(s: socket.socket) -> bytes:
    """One whole response: the head, then as many body bytes as it announces."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed without a whole answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("data", [
    b"",  # connects and says nothing
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never finished
], ids=["silent", "partial-headers"])
def test_a_client_that_never_finishes_its_headers_is_dropped(strict: ServerProcess, data: bytes) -> None:
    answer = raw_exchange(strict, data)
    assert status_of(answer) == 408 and b'"malformed"' in answer


@pytest.mark.parametrize("headers", [
    b"".join(b"X-%d: y\r\n" % i for i in range(100)),
    b"X-Big: " + b"a" * 20_000 + b"\r\n",
], ids=["100-headers", "20k-header"])
def test_oversized_header_sections_get_431(strict: ServerProcess, headers: bytes) -> None:
    answer = raw_exchange(strict, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_of(answer) == 431


def test_a_body_that_never_arrives_gets_400_not_a_held_connection(strict: ServerProcess) -> None:
    token = strict.token("alice")
    head = (f"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"to\":").encode()
    with socket.create_connection(("127.0.0.1", strict.port), timeout=WAIT) as s:
        s.sendall(head)
        answer = read_response(s)
    assert status_of(answer) == 400 and b"not received within" in answer


@pytest.mark.parametrize("last_id", ["1-\u00b2".encode(), b"abc-" + b"9" * 5000, b"-1", b"x" * 40])
def test_a_bad_last_event_id_is_refused_before_anything_is_registered(
    strict: ServerProcess, last_id: bytes
) -> None:
    token = strict.token("bob")
    request = (f"GET /v1/events?device=d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "Last-Event-ID: ").encode() + last_id + b"\r\nConnection: close\r\n\r\n"
    for _ in range(10):  # more than the device cap (8): none of them may stay registered
        assert status_of(raw_exchange(strict, request)) == 400
    health = httpx.get(f"{strict.url}/healthz").json()
    assert health["streams"] == 0


async def test_the_user_is_not_locked_out_by_bad_requests(strict: ServerProcess, events: list[Events]) -> None:
    token = strict.token("bob")
    for i in range(10):
        r = httpx.get(f"{strict.url}/v1/events", params={"device": f"d{i}"},
                      headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "zz-" + "9" * 50})
        assert r.status_code == 400
    bob = Events(strict.client("bob", "kiosk"))
    events.append(bob)
    assert (await bob.wait(p.Registered)).devices_online == 1


def forged(srv: ServerProcess, claims: dict[str, object]) -> str:
    return jwt.encode(claims, srv.secret_file.read_bytes().strip(), algorithm="HS256")


@pytest.mark.parametrize("claims", [
    {"sub": "alice", "svc": "default", "iat": 1, "exp": 10**400},
    {"sub": "alice", "svc": "default", "iat": 1, "exp": "99999999999"},
    {"sub": "alice", "svc": "default", "iat": 1, "exp": True},
    {"sub": "alice\n", "svc": "default", "iat": 1, "exp": 99999999999},
    {"sub": ["alice"], "svc": "default", "iat": 1, "exp": 99999999999},
], ids=["huge-exp", "string-exp", "bool-exp", "newline-sub", "list-sub"])
def test_tokens_with_bad_claims_get_401(strict: ServerProcess, claims: dict[str, object]) -> None:
    r = httpx.get(f"{strict.url}/v1/calls/x", headers={"Authorization": f"Bearer {forged(strict, claims)}"})
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("to", ["bob\n", "bob\r\n", "\nbob", "bo b"])
def test_ids_are_matched_whole(strict: ServerProcess, to: str) -> None:
    r = httpx.post(f"{strict.url}/v1/calls", json={"to": to, "sdp": OFFER},
                   headers={"Authorization": f"Bearer {strict.token('alice')}"})
    assert r.status_code == 422


def test_deeply_nested_signal_data_is_refused(strict: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {strict.token('alice')}"}
    call = httpx.post(f"{strict.url}/v1/calls", json={"to": "bob", "sdp": OFFER}, headers=auth).json()
    for depth in (1000, 20):
        body = '{"kind": "x", "data": {"a": ' + "[" * depth + "]" * depth + "}}"
        r = httpx.post(f"{strict.url}/v1/calls/{call['call_id']}/signal", content=body,
                       headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
    ok = httpx.post(f"{strict.url}/v1/calls/{call['call_id']}/signal", json={"kind": "x", "data": {"a": [1]}},
                    headers=auth)
    assert ok.status_code == 200


def test_every_response_forbids_mime_sniffing(strict: ServerProcess) -> None:
    for path in ("/healthz", "/", "/web/app.js", "/v1/nothing"):
        assert httpx.get(f"{strict.url}{path}").headers["x-content-type-options"] == "nosniff"


def test_a_stream_ticket_survives_a_refused_request(strict: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {strict.token('bob')}"}
    ticket = httpx.post(f"{strict.url}/v1/stream-tickets", headers=auth).json()["ticket"]
    bad = httpx.get(f"{strict.url}/v1/events", params={"ticket": ticket, "device": "bad device"})
    assert bad.status_code == 422
    with httpx.stream("GET", f"{strict.url}/v1/events", params={"ticket": ticket, "device": "web"}) as ok:
        assert ok.status_code == 200


def test_tickets_and_failed_logins_are_rate_limited(strict: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {strict.token('bob')}"}
    codes = [httpx.post(f"{strict.url}/v1/stream-tickets", headers=auth).status_code for _ in range(15)]
    assert codes[:10] == [201] * 10 and 429 in codes[10:]
    with httpx.Client(base_url=strict.url) as c:
        answers = [c.get("/v1/calls/x", headers={"Authorization": "Bearer nonsense"}) for _ in range(130)]
    assert answers[0].status_code == 401 and answers[-1].status_code == 429
    assert int(answers[-1].headers["Retry-After"]) >= 1


async def test_signals_for_nobody_are_not_kept(strict: ServerProcess, events: list[Events]) -> None:
    auth = {"Authorization": f"Bearer {strict.token('alice')}"}
    call = httpx.post(f"{strict.url}/v1/calls", json={"to": "ghost", "sdp": OFFER}, headers=auth).json()
    big = {"kind": "blob", "data": {"x": "y" * 60_000}}
    for _ in range(20):
        assert httpx.post(f"{strict.url}/v1/calls/{call['call_id']}/signal", json=big,
                          headers=auth).status_code == 200
    # ghost comes online asking for everything retained: the ring (from the call record), no signals
    stream = Events(strict.client("ghost"))
    stream.stream.last_id = "zzzz-0"  # set before the stream task first runs
    events.append(stream)
    await stream.wait(p.CallIncoming, call_id=call["call_id"])
    assert not stream.events(p.CallSignal)


async def test_a_stopped_server_is_noticed_within_its_heartbeats(strict: ServerProcess,
                                                                 events: list[Events]) -> None:
    bob = Events(strict.client("bob"))
    events.append(bob)
    await bob.wait(p.Registered)
    os.kill(strict.pid, signal.SIGSTOP)
    try:
        lost = await bob.wait(Disconnected, timeout=WAIT)  # --heartbeat 1: 2.5 s, not 42.5
        assert "no event or heartbeat" in lost.error.message
    finally:
        os.kill(strict.pid, signal.SIGCONT)
    await bob.wait(p.Registered, count=2)


async def test_sighup_reloads_the_secret(strict: ServerProcess) -> None:
    old = strict.token("alice")
    strict.secret_file.write_bytes(os.urandom(32).hex().encode())
    os.kill(strict.pid, signal.SIGHUP)
    deadline = asyncio.get_running_loop().time() + WAIT
    while "secret reloaded" not in strict.stderr_text():  # the server logs the reload
        assert asyncio.get_running_loop().time() < deadline, strict.stderr_text()
        await asyncio.sleep(0.05)
    assert httpx.get(f"{strict.url}/v1/calls/x", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    new = strict.token("alice")
    assert httpx.get(f"{strict.url}/v1/calls/x", headers={"Authorization": f"Bearer {new}"}).status_code == 404


def test_a_client_that_hangs_up_mid_body_is_not_an_error(strict: ServerProcess) -> None:
    token = strict.token("alice")
    head = (f"POST /v1/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"to\":").encode()
    with socket.create_connection(("127.0.0.1", strict.port), timeout=WAIT) as s:
        s.sendall(head)
    # the server is still fine, and logged no internal error for it
    assert httpx.get(f"{strict.url}/healthz").status_code == 200
    assert "internal error" not in strict.stderr_text()


def test_error_bodies_are_json_with_a_stable_code(strict: ServerProcess) -> None:
    answer = raw_exchange(strict, b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 100 + b"\r\n")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"] in {c.value for c in p.ErrorCode}


def test_a_trickled_chunked_body_does_not_hold_the_connection(strict: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=WAIT) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffff\r\n")
        data = b""
        while chunk := s.recv(65536):  # the server answers, then closes within the deadline
            data += chunk
            s.sendall(b"x")  # a byte at a time keeps nothing open
    assert data.startswith(b"HTTP/1.1 200")


def test_a_long_request_line_and_malformed_http_get_json_errors(strict: ServerProcess) -> None:
    answer = raw_exchange(strict, b"GET /healthz?" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
    assert status_of(answer) == 431
    for bad in (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n"):
        answer = raw_exchange(strict, bad)
        assert status_of(answer) == 400 and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "malformed"


def test_bad_stream_tickets_count_as_failed_logins(strict: ServerProcess) -> None:
    with httpx.Client(base_url=strict.url) as c:
        codes = [c.get("/v1/events", params={"ticket": f"nope{i}"}).status_code for i in range(130)]
    assert codes[0] == 401 and codes[-1] == 429


def test_a_token_not_valid_yet_is_refused(strict: ServerProcess) -> None:
    token = forged(strict, {"sub": "alice", "svc": "default", "iat": 1, "exp": 2**39, "nbf": 2**39 - 1})
    assert httpx.get(f"{strict.url}/v1/calls/x", headers={"Authorization": f"Bearer {token}"}).status_code == 401


async def test_a_stream_that_stops_reading_is_closed_and_its_device_goes_offline(strict: ServerProcess) -> None:
    token = strict.token("bob")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", strict.port))
    try:
        s.sendall(f"GET /v1/events?device=phone HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        auth = {"Authorization": f"Bearer {strict.token('alice')}"}
        call = httpx.post(f"{strict.url}/v1/calls", json={"to": "bob", "sdp": OFFER}, headers=auth).json()
        big = {"kind": "blob", "data": {"x": "y" * 60_000}}
        for _ in range(60):  # bob never reads: his queue fills, the writes block
            httpx.post(f"{strict.url}/v1/calls/{call['call_id']}/signal", json=big, headers=auth)
        deadline = asyncio.get_running_loop().time() + 3 * WAIT
        while httpx.get(f"{strict.url}/healthz").json()["streams"] != 0:
            assert asyncio.get_running_loop().time() < deadline, "the stalled stream was never closed"
            await asyncio.sleep(0.2)
    finally:
        s.close()

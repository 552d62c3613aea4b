"""Bad input gets a 4xx with a stable code, never a 500."""

from __future__ import annotations

import httpx
import pytest

from callctl.signaling.protocol import MAX_BODY_BYTES, MAX_SDP_BYTES
from tests.helpers import ServerProcess
from tests.signaling.test_calls import OFFER

CASES = [
    ("malformed json", b'{"to": "bob",', 400, "malformed"),
    ("not an object", b"[1,2,3]", 422, "invalid"),
    ("unknown field", b'{"to":"bob","sdp":"v=0","admin":true}', 422, "invalid"),
    ("wrong type", b'{"to":"bob","sdp":42}', 422, "invalid"),
    ("missing sdp", b'{"to":"bob"}', 422, "invalid"),
    ("bad user id", b'{"to":"../etc","sdp":"v=0"}', 422, "invalid"),
    ("empty user id", b'{"to":"","sdp":"v=0"}', 422, "invalid"),
    ("bad media", b'{"to":"bob","sdp":"v=0","media":"smell"}', 422, "invalid"),
    ("negative ring timeout", b'{"to":"bob","sdp":"v=0","ring_timeout":-1}', 422, "invalid"),
    ("sdp over 64 KiB", b'{"to":"bob","sdp":"' + b"a" * (MAX_SDP_BYTES + 1) + b'"}', 422, "invalid"),
    ("body over the limit", b'{"to":"bob","sdp":"' + b"a" * (MAX_BODY_BYTES + 10) + b'"}', 413, "too_large"),
    ("not utf-8", b'{"to":"\xff\xfe","sdp":"v=0"}', 400, "malformed"),
    ("call yourself", b'{"to":"alice","sdp":"v=0"}', 422, "invalid"),
]


@pytest.mark.parametrize("name,body,status,code", CASES, ids=[c[0] for c in CASES])
async def test_create_call_rejects(server: ServerProcess, name: str, body: bytes, status: int, code: str) -> None:
    headers = {"Authorization": f"Bearer {server.token('alice')}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        resp = await http.post("/v1/calls", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == code
    assert resp.json()["message"]


async def test_other_endpoints_reject_bad_input(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {server.token('alice')}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        call = (await http.post("/v1/calls", json={"to": "bob", "sdp": OFFER}, headers=headers)).json()
        cid = call["call_id"]
        checks = [
            await http.post(f"/v1/calls/{cid}/signal", json={"kind": "BAD KIND"}, headers=headers),
            await http.post(f"/v1/calls/{cid}/signal", json={"kind": "x", "data": "str"}, headers=headers),
            await http.post(f"/v1/calls/{cid}/hangup", json={"reason": "declined"}, headers=headers),
            await http.post(f"/v1/calls/{cid}/hangup", json={"reason": "bogus"}, headers=headers),
            await http.get("/v1/events?device=bad%20device", headers=headers),
            await http.post(f"/v1/calls/{cid}/answer", json={"sdp": OFFER},
                            headers={**headers, "X-Callctl-Device": "a b"}),
        ]
        for resp in checks:
            assert resp.status_code == 422, resp.text
            assert resp.json()["error"] == "invalid"
        nope = await http.post(f"/v1/calls/{cid}/teleport", json={}, headers=headers)
        assert (nope.status_code, nope.json()["error"]) == (404, "not_found")
        wrong = await http.delete("/v1/calls", headers=headers)
        assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
        lost = await http.get("/nowhere")
        assert (lost.status_code, lost.json()["error"]) == (404, "not_found")

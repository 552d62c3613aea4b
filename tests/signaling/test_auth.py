"""Access tokens on every endpoint and stream."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest

from callctl.signaling.auth import TokenError, issue_token, read_secret, verify_token
from tests.helpers import ServerProcess
from tests.signaling.test_calls import OFFER


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def bad_tokens(secret: bytes) -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "alice", "svc": "default", "iat": now, "exp": now + 3600}
    return {
        "expired": jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, secret, "HS256"),
        "forged": jwt.encode(claims, b"x" * 64, "HS256"),
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "no_svc": jwt.encode({k: v for k, v in claims.items() if k != "svc"}, secret, "HS256"),
        "bad_sub": jwt.encode({**claims, "sub": "a/b"}, secret, "HS256"),
        "garbage": "not-a-token",
    }


async def test_every_endpoint_refuses_bad_tokens(server: ServerProcess) -> None:
    tokens = bad_tokens(read_secret(server.secret_file))
    async with httpx.AsyncClient(base_url=server.url) as http:
        for name, token in [*tokens.items(), ("missing", None)]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            for method, path, body in (
                ("POST", "/v1/calls", {"to": "bob", "sdp": OFFER}),
                ("GET", "/v1/calls/abc", None),
                ("POST", "/v1/calls/abc/answer", {"sdp": OFFER}),
                ("POST", "/v1/calls/abc/hangup", {}),
                ("GET", "/v1/events", None),
            ):
                resp = await http.request(method, path, json=body, headers=headers)
                assert resp.status_code == 401, (name, path, resp.text)
                assert resp.json()["error"] == "unauthorized"
                assert resp.headers["www-authenticate"].startswith("Bearer")


def test_clock_skew_is_tolerated_but_not_more(tmp_path) -> None:
    secret = b"s" * 64
    now = int(time.time())
    ok = jwt.encode({"sub": "a", "svc": "d", "iat": now, "exp": now - 10}, secret, "HS256")
    assert verify_token(secret, ok).user == "a"
    late = jwt.encode({"sub": "a", "svc": "d", "iat": now, "exp": now - 120}, secret, "HS256")
    with pytest.raises(TokenError, match="expired"):
        verify_token(secret, late)
    hs512 = jwt.encode({"sub": "a", "svc": "d", "iat": now, "exp": now + 60}, secret, "HS512")
    with pytest.raises(TokenError):
        verify_token(secret, hs512)


def test_issue_rejects_bad_ids() -> None:
    with pytest.raises(TokenError):
        issue_token(b"s" * 64, "bad user")
    with pytest.raises(TokenError):
        issue_token(b"s" * 64, "bob", "bad/service")

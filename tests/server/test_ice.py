"""ICE servers from the signaling server: STUN, TURN with credentials that expire (docs/NETWORK.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from callctl.server.ice import IceConfigError, check_url, parse_duration
from callctl.signaling import protocol as p
from tests.helpers import Events, ServerProcess, running_server

SECRET = os.urandom(20).hex()


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[ServerProcess]:
    secret_file = tmp_path / "turn-secret"
    secret_file.write_text(SECRET + "\n")
    yield from running_server(tmp_path, [
        "--stun", "stun:203.0.113.1:3478", "--turn", "turn:203.0.113.1:3478?transport=udp",
        "--turn", "turn:203.0.113.1:3478?transport=tcp", "--turn-secret-file", str(secret_file),
        "--turn-ttl", "30m"])


def expected_password(username: str) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_a_signed_in_client_gets_turn_credentials_scoped_to_it_that_expire(turn_server: ServerProcess) -> None:
    before = time.time()
    resp = httpx.get(f"{turn_server.url}/v1/ice-servers",
                     headers={"Authorization": f"Bearer {turn_server.token('alice')}"})
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert before + 1800 - 1 <= body["expires_at"] <= time.time() + 1800
    stun, turn = body["ice_servers"]
    assert stun == {"urls": ["stun:203.0.113.1:3478"]}
    assert turn["urls"] == ["turn:203.0.113.1:3478?transport=udp", "turn:203.0.113.1:3478?transport=tcp"]
    assert turn["username"] == f"{body['expires_at']}:alice"
    assert turn["credential"] == expected_password(turn["username"])  # coturn's use-auth-secret
    assert SECRET not in resp.text


def test_ice_servers_need_a_token(turn_server: ServerProcess) -> None:
    resp = httpx.get(f"{turn_server.url}/v1/ice-servers")
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"


async def test_the_registered_event_carries_them_too(turn_server: ServerProcess) -> None:
    events = Events(turn_server.client("bob"))
    try:
        registered = await events.wait(p.Registered)
    finally:
        await events.close()
    assert registered.ice_expires_at is not None
    turn = registered.ice_servers[-1]
    assert turn.username == f"{int(registered.ice_expires_at)}:bob"
    assert turn.credential == expected_password(turn.username)


def test_no_ice_servers_configured_means_none_handed_out(tmp_path: Path) -> None:
    for srv in running_server(tmp_path, []):
        body = httpx.get(f"{srv.url}/v1/ice-servers",
                         headers={"Authorization": f"Bearer {srv.token('alice')}"}).json()
        assert body == {"ice_servers": [], "expires_at": None}


@pytest.mark.parametrize("args,message", [
    (["--turn", "turn:h:3478"], "--turn needs --turn-secret-file"),
    (["--turn", "http://h"], "bad ICE server URL"),
    (["--stun", "turn:h:3478"], "is not a stun: URL"),
    (["--turn", "turn:h:3478", "--turn-secret-file", "/nonexistent"], "cannot read --turn-secret-file"),
    (["--turn", "turn:h", "--turn-secret-file", "SHORT"], "at least 16 characters"),
    (["--turn", "turn:h", "--turn-secret-file", "GOOD", "--turn-ttl", "2d"], "--turn-ttl"),
    (["--turn-secret-file", "GOOD"], "give at least one"),
    (["--ice-server", "turn:h", "--ice-username", "u"], "go together"),
])
def test_bad_ice_options_are_one_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    from callctl.harness.child import callctl_command
    import subprocess

    (tmp_path / "SHORT").write_text("tooshort\n")
    (tmp_path / "GOOD").write_text(SECRET + "\n")
    args = [str(tmp_path / a) if a in ("SHORT", "GOOD") else a for a in args]
    proc = subprocess.run([*callctl_command(), "server", "--port", "0", "--secret-file",
                           str(tmp_path / "secret"), *args], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_urls_and_durations() -> None:
    for good in ("stun:h", "stun:1.2.3.4:3478", "turn:h.example:3478?transport=tcp", "turns:h:5349",
                 "turn:[2001:db8::1]:3478"):
        assert check_url(good) == good
    for bad in ("stun:h?transport=udp", "turn:h:0", "turn:h:70000", "turn:", "turn:h?transport=sctp",
                "stun:h x"):
        with pytest.raises(IceConfigError):
            check_url(bad)
    assert [parse_duration(t) for t in ("90", "90s", "30m", "1h", "1d")] == [90, 90, 1800, 3600, 86400]
    with pytest.raises(IceConfigError):
        parse_duration("1 week")


def test_config_file_tables_set_command_options(tmp_path: Path) -> None:
    from callctl.harness.child import callctl_command
    import subprocess

    config = tmp_path / "config.toml"
    config.write_text('[command.server]\nturn = ["turn:h:3478"]\n')  # no secret file: refused as on the command line
    proc = subprocess.run([*callctl_command(), "--config", str(config), "server", "--port", "0",
                           "--secret-file", str(tmp_path / "secret")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--turn needs --turn-secret-file" in proc.stderr, proc.stderr
    config.write_text('[command.server]\nturn-secrt = "x"\n')
    proc = subprocess.run([*callctl_command(), "--config", str(config), "server"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "has no option 'turn-secrt'" in proc.stderr, proc.stderr

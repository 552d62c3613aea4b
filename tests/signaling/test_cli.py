"""`callctl server` and `callctl token` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from callctl.signaling.auth import read_secret, verify_token
from tests.helpers import ServerProcess


def callctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callctl", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def test_server_creates_a_private_secret_and_token_issue_uses_it(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "callctl", "server", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        assert re.fullmatch(r"callctl server listening on http://127\.0\.0\.1:\d+\n", proc.stdout.readline())
        secret_file = tmp_path / "state" / "callctl" / "server-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        out = callctl("token", "issue", "alice", "--service", "acme", "--ttl", "2h", env=env)
        assert out.returncode == 0, out.stderr
        ident = verify_token(read_secret(secret_file), out.stdout.strip())
        assert (ident.user, ident.service) == ("alice", "acme")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_json_server_says_it_listens_in_one_ndjson_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "callctl", "--json", "server", "--port", "0",
         "--secret-file", str(tmp_path / "secret")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert sorted(ready) == ["event", "ts", "url", "v"]
        assert (ready["v"], ready["event"]) == (1, "server.listening")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ready["url"])
        assert httpx.get(ready["url"] + "/healthz", timeout=10).json()["status"] == "ok"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert proc.stdout.read() == ""  # that line was the only one
    proc.stdout.close()


@pytest.mark.parametrize(
    "args,message",
    [
        (["token", "issue", "bad user"], "bad user id"),
        (["token", "issue", "bob", "--ttl", "forever"], "bad duration"),
        (["token", "issue", "bob", "--secret-file", "/nonexistent/secret"], "cannot read secret file"),
        (["server", "--log-level", "loud"], "--log-level"),
        (["server", "--tls-cert", "/nonexistent.pem"], "go together"),
        (["server", "--ice-server", "http://x"], "bad ICE server URL"),
        (["--config", "/nonexistent.toml", "token", "issue", "bob"], "does not exist"),
        (["server", "--store", "postgres://db/x"], "expected memory or redis://HOST:PORT/DB"),
        (["server", "--store", "redis://127.0.0.1:port/0"], "could not be cast to integer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    out = callctl(*args, env={"XDG_STATE_HOME": str(tmp_path)})
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = callctl("server", "--port", str(port), "--secret-file", str(tmp_path / "s"))
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_store_that_does_not_answer_is_one_line_and_exit_10(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    out = callctl("server", "--port", "0", "--secret-file", str(tmp_path / "s"),
                  env={"CALLCTL_STORE": f"redis://127.0.0.1:{port}/0"})
    assert out.returncode == 10
    assert out.stderr.startswith(f"callctl: cannot reach the store redis://127.0.0.1:{port}/0: ")
    assert len(out.stderr.splitlines()) == 1


def test_config_file_fills_what_flags_and_env_leave_open(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('service = "from-file"\n')
    secret = tmp_path / "secret"
    secret.write_text("k" * 64)
    out = callctl("--config", str(cfg), "token", "issue", "bob", "--secret-file", str(secret))
    assert verify_token(read_secret(secret), out.stdout.strip()).service == "from-file"
    out = callctl("--config", str(cfg), "token", "issue", "bob", "--secret-file", str(secret),
                  env={"CALLCTL_SERVICE": "from-env"})
    assert verify_token(read_secret(secret), out.stdout.strip()).service == "from-env"
    out = callctl("--config", str(cfg), "--service", "from-flag", "token", "issue", "bob",
                  "--secret-file", str(secret), env={"CALLCTL_SERVICE": "from-env"})
    assert verify_token(read_secret(secret), out.stdout.strip()).service == "from-flag"
    cfg.write_text("service = [")
    out = callctl("--config", str(cfg), "token", "issue", "bob", "--secret-file", str(secret))
    assert out.returncode == 2 and "not valid TOML" in out.stderr


async def test_https_when_given_a_certificate(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    srv = ServerProcess(tmp_path, ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]).start()
    try:
        from callctl.signaling.client import ServerUnreachable, SignalingClient

        url = f"https://localhost:{srv.port}"
        async with SignalingClient(url, srv.token("alice"), ca_file=str(cert_file)) as c:
            assert (await c.health()).status == "ok"
            call = await c.create_call("bob", "v=0")
            assert call.state.value == "ringing"
        async with SignalingClient(url, srv.token("alice")) as untrusting:
            with pytest.raises(ServerUnreachable):
                await untrusting.health()
    finally:
        srv.stop()

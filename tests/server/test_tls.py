"""``callctl server --tls self-signed``: a kept certificate for this machine, and clients that trust it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from callctl.signaling.client import SignalingClient
from tests.cli import Callctl
from tests.helpers import ServerProcess, running_server

SELF_SIGNED = ["--tls", "self-signed", "--tls-name", "callctl.test"]


def kept(workdir: Path) -> tuple[Path, Path]:
    """Where the server keeps its certificate: next to its secret (the harness puts that in workdir)."""
    return workdir / "server-cert.pem", workdir / "server-key.pem"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def listening(srv: ServerProcess) -> dict:  # type: ignore[type-arg]
    assert srv.proc is not None
    return srv.proc.named("server.listening")[0]


def interface_addresses() -> set[str]:
    """This machine's addresses as iproute2 lists them (not as the server finds them)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        ip = ipaddress.ip_interface(fields[3]).ip
        if not (ip.version == 6 and ip.is_link_local):
            found.add(str(ip))
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from running_server(tmp_path, SELF_SIGNED)


@pytest.fixture
async def cli(server: ServerProcess, tmp_path: Path) -> AsyncIterator[Callctl]:
    runner = Callctl(server, tmp_path)
    yield runner
    await runner.close()


def test_the_certificate_covers_the_machine_and_is_kept_across_restarts(server: ServerProcess, tmp_path: Path) -> None:
    cert_file, key_file = kept(tmp_path)
    cert = load(cert_file)
    ready = listening(server)
    assert server.url.startswith("https://127.0.0.1:")
    # what the server printed is the file it serves, and its fingerprint
    assert ready["tls_cert"] == str(cert_file)
    assert ready["tls_sha256"] == sha256(cert)
    dns, ips = sans(cert)
    assert {"callctl.test", "localhost", socket.gethostname()} <= dns
    fqdn = socket.getfqdn()
    if re.fullmatch(r"[A-Za-z0-9.-]+", fqdn):
        assert fqdn.lower() in dns
    assert {"127.0.0.1", "::1"} <= ips
    if shutil.which("ip"):
        assert interface_addresses() <= ips, (interface_addresses(), ips)
    assert sorted(ready["tls_names"]) == sorted(dns | ips)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    # the server really serves it
    served = ssl_peer_certificate(server.port)
    assert served == cert.public_bytes(serialization.Encoding.DER)

    server.restart()
    assert listening(server)["tls_sha256"] == sha256(cert)
    assert load(cert_file) == cert
    assert "new TLS certificate" not in server.stderr_text()


def ssl_peer_certificate(port: int) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_new_name_makes_a_new_certificate_and_says_so(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, SELF_SIGNED).start()
    first = listening(srv)["tls_sha256"]
    srv.stop()
    srv.args = [*SELF_SIGNED, "--tls-name", "kiosk.example.lan", "--tls-name", "203.0.113.7"]
    srv.start()
    try:
        ready = listening(srv)
        assert ready["tls_sha256"] != first
        assert ready["tls_sha256"] == sha256(load(kept(tmp_path)[0]))
        dns, ips = sans(load(kept(tmp_path)[0]))
        assert {"kiosk.example.lan", "callctl.test"} <= dns and "203.0.113.7" in ips
        lines = [line for line in srv.stderr_text().splitlines() if "new TLS certificate" in line]
        assert len(lines) == 1 and "does not cover kiosk.example.lan, 203.0.113.7" in lines[0], lines
    finally:
        srv.stop()


def test_an_expired_certificate_is_made_again(tmp_path: Path) -> None:
    cert_file, key_file = kept(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.UTC)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(1).not_valid_before(now - dt.timedelta(days=30))
           .not_valid_after(now - dt.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
           .sign(key, hashes.SHA256()))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    srv = ServerProcess(tmp_path, SELF_SIGNED).start()
    try:
        cert = load(cert_file)
        assert cert != old and cert.not_valid_after_utc > now + dt.timedelta(days=300)
        assert listening(srv)["tls_sha256"] == sha256(cert)
        assert "expired" in srv.stderr_text()
    finally:
        srv.stop()


def test_plain_output_prints_the_file_and_fingerprint(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "callctl", "server", "--port", "0", "--tls", "self-signed"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = lines[2].rsplit(" ", 1)[-1].strip()
        # "listening" is said before the signal handlers are in: a stop now is ours to wait for
        httpx.get(url + "/healthz", verify=False, timeout=10).raise_for_status()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        proc.stdout.close()  # type: ignore[union-attr]
    cert_file = tmp_path / "state" / "callctl" / "server-cert.pem"  # next to the default server-secret
    assert lines[0].startswith(f"TLS certificate {cert_file} (self-signed) for "), lines
    assert lines[1] == f"SHA-256 fingerprint {sha256(load(cert_file))}\n"
    assert re.fullmatch(r"callctl server listening on https://127\.0\.0\.1:\d+\n", lines[2])
    assert stat.S_IMODE((tmp_path / "state" / "callctl" / "server-key.pem").stat().st_mode) == 0o600


async def test_clients_trust_it_with_the_certificate_as_ca_file(server: ServerProcess, cli: Callctl,
                                                                tmp_path: Path) -> None:
    cert_file, _ = kept(tmp_path)
    trust = {"CALLCTL_CA_FILE": str(cert_file)}
    # callctl listen and call over https, trusting the certificate file (--ca-file's variable)
    kiosk = await cli.start("kiosk", "listen", "--device", "kiosk", "--audio-out", "null",
                            "--audio-in", "tone:660", "--auto-accept", "--once", env=trust)
    await kiosk.wait_event("registered")
    door = await cli.call("door", "kiosk", "--hangup-after", "1", env=trust)
    await door.wait_event("call.connected")
    await door.wait_event("media.flowing")
    assert await door.exit_code() == 0
    assert await kiosk.exit_code() == 0
    # under another name the certificate covers too
    other = await cli.call("door", "nobody", "--ring-timeout", "2", server=f"https://localhost:{server.port}",
                           env={"SSL_CERT_FILE": str(cert_file)})  # OpenSSL's own variable works too
    assert await other.exit_code() == 6
    # --ca-file itself, and a file that holds no certificate: one line, exit 2
    code, _, err = await cli.run("door", "--ca-file", str(cert_file), "status")
    assert code == 2 and "no running" in err, err
    code, _, err = await cli.run("door", "--ca-file", str(tmp_path / "nothing.pem"), "call", "kiosk",
                                 "--audio-in", "tone", "--audio-out", "null")
    assert code == 2 and err.startswith("callctl: cannot use --ca-file") and err.count("\n") == 1, err
    # the library: ca_file
    async with SignalingClient(server.url, server.token("lib"), ca_file=str(cert_file)) as client:
        await client.ice_servers()
    # plain httpx with the file as the CA, as any client would
    trusted = ssl.create_default_context(cafile=str(cert_file))
    assert httpx.get(server.url + "/healthz", verify=trusted, timeout=10).json()["status"] == "ok"


async def test_a_client_that_does_not_trust_it_fails_in_one_line(server: ServerProcess, cli: Callctl) -> None:
    door = await cli.call("door", "kiosk", env={"SSL_CERT_FILE": os.devnull})
    assert await door.exit_code(timeout=30) == 10
    lines = door.stderr.strip().splitlines()
    assert len(lines) == 1 and "CERTIFICATE_VERIFY_FAILED" in lines[0], lines


def callctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callctl", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["--tls", "self-signed", "--tls-cert", "c.pem", "--tls-key", "k.pem"], {}, "not both"),
        (["--tls-cert", "c.pem"], {"CALLCTL_SERVER_TLS": "self-signed"}, "not both"),
        (["--tls", "letsencrypt"], {}, "self-signed"),
        (["--tls-name", "kiosk.lan"], {}, "--tls-name is for --tls self-signed"),
        (["--tls", "self-signed", "--tls-name", "no spaces"], {}, "not a DNS name"),
        (["--tls", "self-signed", "--tls-name", "-x.lan"], {}, "not a DNS name"),
    ],
)
def test_bad_combinations_are_usage_errors(tmp_path: Path, args: list[str], env: dict[str, str],
                                           message: str) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    args = [str(tmp_path / a) if a.endswith(".pem") else a for a in args]
    out = callctl("server", "--port", "0", "--secret-file", str(tmp_path / "secret"), *args, env=env)
    assert out.returncode == 2, out
    assert len(out.stderr.splitlines()) == 1 and message in out.stderr, out.stderr
    assert not kept(tmp_path)[0].exists()


def test_the_environment_and_the_config_file_choose_it_too(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[command.server]\ntls = "self-signed"\ntls-name = ["door.lan"]\n')
    for env, args in (({"CALLCTL_SERVER_TLS": "self-signed"}, []), ({}, ["--config", str(config)])):
        srv = ServerProcess(tmp_path, env={**os.environ, **env})
        srv.command = [*srv.command, *args]
        srv.start()
        try:
            ready = listening(srv)
            assert ready["url"].startswith("https://")
            assert ready["tls_sha256"] == sha256(load(kept(tmp_path)[0]))
        finally:
            srv.stop()
    assert "door.lan" in sans(load(kept(tmp_path)[0]))[0]

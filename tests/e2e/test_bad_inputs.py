"""Bad days at the command line and on the control socket: one clear line, a documented code, no hang."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.cli import Callctl
from tests.helpers import WAIT, ServerProcess

NO_SERVER = "http://127.0.0.1:9"  # nothing listens there: exit 2, not 10, proves nothing was sent


def one_clean_line(err: str) -> None:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("server_url", ["::::", "ftp://host", "http://", "http://host:99999", "http://h:0"])
async def test_a_bad_server_url_is_a_usage_error(cli: Callctl, server_url: str) -> None:
    code, _, err = await cli.run("alice", "--server", server_url, "call", "bob", "--audio-in", "tone")
    assert code == 2 and "bad server URL" in err
    one_clean_line(err)


async def test_a_server_that_is_not_callctl_is_named_not_a_traceback(cli: Callctl, server: ServerProcess) -> None:
    code, _, err = await cli.run("alice", "--server", f"{server.url}/v1", "call", "bob",
                                 "--audio-in", "tone", "--audio-out", "null", timeout=WAIT)
    assert code == 10, err
    assert "Traceback" not in err and "is that a callctl server?" in err


@pytest.mark.parametrize("content,message", [
    (b"\x00\xff\xfe binary \x89PNG", "is not text"),
    (b"json = \"false\"\n", "'json' must be true or false"),
    (b"[" * 5000, "not valid TOML"),
    (b"server = 3\n", "'server' must be a string"),
], ids=["binary", "json-string", "deep", "server-int"])
async def test_a_bad_config_file_is_one_line(cli: Callctl, tmp_path: Path, content: bytes, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(content)
    code, _, err = await cli.run("alice", "--config", str(config), "status")
    assert code == 2 and message in err, err
    one_clean_line(err)


@pytest.mark.parametrize("config", ["/dev/zero", "/tmp"])
async def test_a_config_that_is_not_a_file_does_not_hang(cli: Callctl, config: str) -> None:
    code, _, err = await cli.run("alice", "--config", config, "status", timeout=WAIT)
    assert code == 2 and "not a regular file" in err
    one_clean_line(err)


@pytest.mark.parametrize("spec,message", [
    ("file:/dev/zero", "not a regular file"),
    ("file:/tmp", "it is a directory"),
])
async def test_a_source_that_is_not_a_file_says_what_it_is(cli: Callctl, spec: str, message: str) -> None:
    code, _, err = await cli.run("alice", "--server", NO_SERVER, "call", "bob", "--audio-in", spec)
    assert code == 2 and message in err, err
    one_clean_line(err)


async def test_garbage_tls_files_are_a_usage_error(cli: Callctl, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_bytes(os.urandom(300))
    code, _, err = await cli.run(None, "server", "--port", "0", "--secret-file", str(tmp_path / "s"),
                                 "--tls-cert", str(cert), "--tls-key", str(key))
    assert code == 2 and "cannot use --tls-cert" in err
    one_clean_line(err)


@pytest.mark.parametrize("ttl", ["9" * 400, "²", "-5", "0"])
async def test_a_bad_token_lifetime_is_a_usage_error(cli: Callctl, server: ServerProcess, ttl: str) -> None:
    code, _, err = await cli.run(None, "token", "issue", "alice", "--ttl", ttl,
                                 "--secret-file", str(server.secret_file))
    assert code == 2 and "bad duration" in err, err
    one_clean_line(err)


async def test_an_open_runtime_dir_is_refused(cli: Callctl, tmp_path: Path) -> None:
    run = tmp_path / "open-run"
    (run / "callctl").mkdir(parents=True)
    os.chmod(run / "callctl", 0o777)
    code, _, err = await cli.run("bob", "listen", "--audio-in", "tone", "--audio-out", "null",
                                 "--video-out", "null", env={"XDG_RUNTIME_DIR": str(run)})
    assert code == 2 and "open to other users" in err and "chmod 700" in err
    one_clean_line(err)


# ------------------------------------------------------------------ control socket

def control_socket(tmp_path: Path) -> Path:
    found = list((tmp_path / "run" / "callctl").glob("*.sock"))
    assert len(found) == 1, found
    return found[0]


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> dict:
    writer.write(line + b"\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.readline(), WAIT)
    assert answer, "the connection was closed without an answer"
    return json.loads(answer)


async def test_the_control_socket_answers_every_bad_line_and_stays_open(cli: Callctl, tmp_path: Path) -> None:
    await cli.listen("bob")
    reader, writer = await asyncio.open_unix_connection(str(control_socket(tmp_path)), limit=1 << 20)
    try:
        for bad in (b"[" * 4000, b"x" * 100_000, b'{"cmd": ' + b"[" * 50 + b"]" * 50 + b"}",
                    b"\xff\xfe", b'"just a string"', b'{"cmd": 5}', b'{"cmd": "status", "arg": {}}'):
            answer = await exchange(reader, writer, bad)
            assert answer["ok"] is False and answer["error"], bad[:20]
        status = await exchange(reader, writer, b'{"cmd": "status"}')
        assert status["ok"] is True and status["user"] == "bob"
    finally:
        writer.close()


async def test_the_control_socket_caps_its_connections(cli: Callctl, tmp_path: Path) -> None:
    await cli.listen("bob")
    path = str(control_socket(tmp_path))
    held = []
    try:
        for _ in range(32):
            held.append(await asyncio.open_unix_connection(path))
        # each held connection is served: a status on the last one proves they all got in
        assert (await exchange(*held[-1], b'{"cmd": "status"}'))["ok"] is True
        reader, writer = await asyncio.open_unix_connection(path)
        answer = json.loads(await asyncio.wait_for(reader.readline(), WAIT))
        assert answer["ok"] is False and "control connections" in answer["error"]
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # and closed
        writer.close()
    finally:
        for _, w in held:
            w.close()


def test_parse_request_never_raises() -> None:
    from callctl.engine.control import parse_request

    for line in (b"", b"{", b"[" * 100_000, b"\x00", b"1e999999", b'{"cmd":"x","call_id":"' + b"a" * 500 + b'"}'):
        assert isinstance(parse_request(line), str)
    assert parse_request(b'{"cmd": "hangup", "call_id": "c1"}').cmd == "hangup"  # type: ignore[union-attr]


async def test_a_control_connection_that_sends_nothing_is_closed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from callctl.engine import control

    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 0.5)  # the rule under test, at test speed
    (tmp_path / "ctl").mkdir(mode=0o700)
    server = control.ControlServer(tmp_path / "ctl" / "x.sock", lambda req: {"ok": True})
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the server
        writer.close()
    finally:
        await server.close()


async def test_closed_event_feeds_do_not_lock_the_control_socket(cli: Callctl, tmp_path: Path) -> None:
    await cli.listen("bob")
    path = str(control_socket(tmp_path))
    for _ in range(40):  # more than the cap, one after another, each closed at once
        reader, writer = await asyncio.open_unix_connection(path)
        assert (await exchange(reader, writer, b'{"cmd": "events"}'))["ok"] is True
        writer.close()
        await writer.wait_closed()
    code, out, err = await cli.run("bob", "status")
    assert code == 0 and "bob on kiosk" in out, err


@pytest.mark.parametrize("args,code,message", [
    (["--server", "http://127.0.0.1:1/\x01", "call", "x", "--audio-in", "tone"], 2, "bad server URL"),
    (["--server", "http://u:p@127.0.0.1:1", "call", "x", "--audio-in", "tone"], 2, "bad server URL"),
    (["preview", "--video", "--camera-format", "foo"], 2, "--camera-format takes mjpeg or yuyv"),
], ids=["control-char", "userinfo", "camera-format"])
async def test_more_bad_command_lines(cli: Callctl, args: list[str], code: int, message: str) -> None:
    got, _, err = await cli.run("alice", *args)
    assert got == code and message in err, err
    one_clean_line(err)


@pytest.mark.parametrize("sub", ["a\u0000b", "../../x", "x" * 300])
async def test_a_token_for_an_impossible_user_is_auth_failed(cli: Callctl, server: ServerProcess, sub: str) -> None:
    import jwt

    token = jwt.encode({"sub": sub, "svc": "default", "iat": 1, "exp": 2**39},
                       server.secret_file.read_bytes().strip(), algorithm="HS256")
    code, _, err = await cli.run(None, "--token", token, "call", "x", "--audio-in", "tone", "--audio-out", "null")
    assert code == 11 and "not a valid callctl token" in err, err
    one_clean_line(err)


async def test_calling_yourself_is_a_usage_error(cli: Callctl) -> None:
    code, _, err = await cli.run("alice", "call", "alice", "--audio-in", "tone", "--audio-out", "null",
                                 "--video-out", "null")
    assert code == 2 and "cannot call itself" in err, err

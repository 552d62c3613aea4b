"""The local control socket of a running ``call`` / ``listen``: JSON lines over a Unix socket.

One socket per identity and device, ``$XDG_RUNTIME_DIR/callctl/SERVICE.USER.DEVICE.sock``
(0600, in a 0700 directory).  Each request is one JSON object on one line;
each answer is one JSON object on one line::

    → {"cmd": "status"}
    ← {"ok": true, "user": "bob", "device": "kiosk", "online": true, "call": {...}}
    → {"cmd": "accept", "call_id": "4f1c..."}        (call_id optional)
    ← {"ok": true, "call": {"state": "connecting", ...}}
    → {"cmd": "hangup"}
    ← {"ok": false, "error": "no call in progress"}
    → {"cmd": "events"}
    ← {"ok": true}
    ← {"v": 1, "ts": 1795320220.1, "event": "call.incoming", ...}   (one line per event, until closed)

    → {"cmd": "video", "arg": "pause"}               (pause | resume | on | off)

Commands: status, accept, decline, hangup, mute, unmute, video, events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callctl.engine.commands import Request
from callctl.paths import runtime_dir

MAX_LINE = 4096


def socket_path(service: str, user: str, device: str) -> Path:
    return runtime_dir() / f"{service}.{user}.{device}.sock"


class ControlError(Exception):
    pass


class ControlServer:
    def __init__(
        self,
        path: Path,
        handle: Callable[[Request], dict[str, Any]],
    ) -> None:
        self.path = path
        self.handle = handle
        self._server: asyncio.AbstractServer | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            if _alive(self.path):
                raise ControlError(
                    f"another callctl is already running as this identity and device "
                    f"({self.path}); give this one another --device"
                )
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    def publish(self, record: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(record)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                if len(line) > MAX_LINE:
                    await _send(writer, {"ok": False, "error": "request too long"})
                    return
                try:
                    req = json.loads(line)
                    cmd = req["cmd"]
                    call_id = req.get("call_id")
                    arg = req.get("arg")
                    if not isinstance(cmd, str) or not all(
                        v is None or isinstance(v, str) for v in (call_id, arg)
                    ):
                        raise TypeError
                except (ValueError, KeyError, TypeError, AttributeError):
                    await _send(writer, {"ok": False, "error": 'expected {"cmd": ..., "call_id": ...}'})
                    continue
                if cmd == "events":
                    await self._stream_events(writer)
                    return
                await _send(writer, self.handle(Request(cmd, call_id, arg)))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            self._clients.discard(task)

    async def _stream_events(self, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        try:
            await _send(writer, {"ok": True})
            while (record := await queue.get()) is not None:
                await _send(writer, record)
        finally:
            self._subscribers.discard(queue)

    async def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def find_socket(service: str | None, user: str | None, device: str | None) -> Path:
    """The one running identity matching the filters, or a ControlError saying why not."""
    folder = runtime_dir()
    found = []
    for path in sorted(folder.glob("*.sock")) if folder.is_dir() else []:
        parts = path.name[: -len(".sock")].split(".", 2)
        if len(parts) != 3:
            continue
        svc, usr, dev = parts
        if (service and svc != service) or (user and usr != user) or (device and dev != device):
            continue
        if _alive(path):
            found.append((path, f"{usr} (service {svc}, device {dev})"))
    if not found:
        who = f" as {user}" if user else ""
        raise ControlError(f"no running callctl call/listen{who} on this machine")
    if len(found) > 1:
        names = "; ".join(name for _, name in found)
        raise ControlError(f"several callctl processes are running ({names}): pick one with --as/--device")
    return found[0][0]


def request(path: Path, cmd: str, call_id: str | None = None, timeout: float = 10,
            arg: str | None = None) -> dict[str, Any]:
    """Send one command and return the answer (blocking; for the short CLI commands)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, "call_id": call_id, "arg": arg}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise ControlError(f"cannot talk to {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"no answer from {path}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"bad answer from {path}")
    return answer


def tail(path: Path, on_record: Callable[[dict[str, Any]], None]) -> None:
    """Follow a running process's events until it exits (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            s.sendall(b'{"cmd":"events"}\n')
            f = s.makefile("rb")
            first = f.readline()
            if not first:
                raise ControlError(f"no answer from {path}")
            for line in f:
                with contextlib.suppress(ValueError):
                    on_record(json.loads(line))
        except OSError as exc:
            raise ControlError(f"cannot talk to {path}: {exc.strerror or exc}") from None

"""Finding a running ``call`` / ``listen``'s control socket and talking to it from a short process.

Kept light on purpose (no asyncio, no engine behind it): ``callctl accept``,
``callctl status`` and a ``callctl call`` beside a running ``listen`` import
this and nothing else before they reach the socket.  The protocol is in
:mod:`callctl.engine.control`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from callctl.paths import runtime_dir

TYPE_CHECKING = False  # typing itself is not imported: these modules run before anything else
if TYPE_CHECKING:
    from typing import Any

#: A socket address holds 107 bytes of path: a deeper one is reached through its folder's descriptor.
MAX_UNIX_PATH = 100


def socket_path(service: str, user: str, device: str) -> Path:
    return runtime_dir() / f"{service}.{user}.{device}.sock"


class ControlError(Exception):
    pass


def check_private(folder: Path) -> None:
    """The socket's folder is ours alone: anyone who can write there could take the socket's name."""
    st = os.stat(folder)
    if st.st_uid != os.getuid():
        raise ControlError(f"{folder} belongs to another user (uid {st.st_uid}); remove it or set XDG_RUNTIME_DIR")
    if st.st_mode & 0o077:
        raise ControlError(f"{folder} is open to other users (mode {st.st_mode & 0o777:o}): "
                           f"run chmod 700 {folder}")


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """``path`` as an AF_UNIX address, also when it is longer than the 107 bytes one may hold.

    A long runtime directory (a deep ``XDG_RUNTIME_DIR``) and long ids make
    long paths; ``/proc/self/fd/N/NAME`` names the same file in a few bytes
    (Linux), for bind and connect alike, while the folder's descriptor is open.
    """
    if len(os.fsencode(path)) <= MAX_UNIX_PATH:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            with unix_address(path) as address:
                s.connect(address)
        except OSError:
            return False
        return True


def socket_identity(path: Path) -> tuple[str, str, str] | None:
    """(service, user, device) from a socket's name (``socket_path``), or None for another file."""
    parts = path.name.removesuffix(".sock").split(".", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and path.suffix == ".sock" else None


def find_socket(service: str | None, user: str | None, device: str | None) -> Path:
    """The one running identity matching the filters, or a ControlError saying why not."""
    folder = runtime_dir()
    if folder.is_dir():
        check_private(folder)
    found = []
    for path in sorted(folder.glob("*.sock")) if folder.is_dir() else []:
        ids = socket_identity(path)
        if ids is None:
            continue
        svc, usr, dev = ids
        if (service and svc != service) or (user and usr != user) or (device and dev != device):
            continue
        if alive(path):
            found.append((path, f"{usr} (service {svc}, device {dev})"))
    if not found:
        who = f" as {user}" if user else ""
        raise ControlError(f"no running callctl call/listen{who} on this machine")
    if len(found) > 1:
        names = "; ".join(name for _, name in found)
        raise ControlError(f"several callctl processes are running ({names}): pick one with --as/--device")
    return found[0][0]


def request(path: Path, cmd: str, call_id: str | None = None, timeout: float = 10,
            arg: str | None = None, opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one command and return the answer (blocking; for the short CLI commands)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            with unix_address(path) as address:
                s.connect(address)
            req: dict[str, Any] = {"cmd": cmd, "call_id": call_id, "arg": arg}
            if opts:
                req["opts"] = opts
            s.sendall(json.dumps(req).encode() + b"\n")
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
            with unix_address(path) as address:
                s.connect(address)
            s.sendall(b'{"cmd":"events"}\n')
            f = s.makefile("rb")
            first = f.readline()
            if not first:
                raise ControlError(f"no answer from {path}")
            with contextlib.suppress(ValueError):
                answer = json.loads(first)
                if isinstance(answer, dict) and answer.get("ok") is False:
                    raise ControlError(str(answer.get("error", "refused")))
            for line in f:
                with contextlib.suppress(ValueError):
                    on_record(json.loads(line))
        except OSError as exc:
            raise ControlError(f"cannot talk to {path}: {exc.strerror or exc}") from None

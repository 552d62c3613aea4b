"""``callctl call`` beside a running ``listen``: the call goes through the phone that owns the devices.

A kiosk runs ``listen`` from boot; a button or a script that runs ``callctl
call reception`` must not open the sound card a second time.  When a
``listen`` of this identity runs on this machine, ``call`` asks it over the
control socket to place the call (``dial``), prints the events of that call
as it would its own, runs its hooks, hangs up on Ctrl-C and exits with the
call's exit code.  Nothing of the media engine is imported here, and nothing
at all before the dial is sent (:mod:`callctl.commands._quick` reaches
:func:`dial` without Typer).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

TYPE_CHECKING = False  # typing itself is not imported: these modules run before anything else
if TYPE_CHECKING:
    from typing import Any

#: Options of ``call`` that are not sent to a running listen (they are this process's own).
LOCAL_OPTIONS = frozenset({"peer", "on_ring", "on_connect", "on_end", "on_dtmf", "on_message", "standalone",
                           "device"})


def find_listener(user: str | None, device: str | None) -> Path | None:
    """The control socket of a running listen for this identity, or None.

    Several matching ones are a ControlError (the user picks one with --device).
    """
    from callctl.engine.sockets import ControlError, find_socket

    if not user:
        return None
    try:
        return find_socket(None, user, device)
    except ControlError as exc:
        if "several" in str(exc):
            raise
        return None


def absolute(name: str, value: object) -> object:
    """An option's value as the listener (another working directory) will read it."""
    if isinstance(value, Path) or (name == "record" and isinstance(value, str)):
        return os.path.abspath(value)
    if isinstance(value, list):
        return ",".join(map(str, value))  # --ice-server: refused by the listener with a clear message
    if isinstance(value, str):
        if value.startswith("file:"):
            return "file:" + os.path.abspath(value[5:])
        if name in ("ringback", "hold_audio") and value not in ("tone", "none"):
            return os.path.abspath(value)
    return value


def dial(path: Path, peer: str, opts: dict[str, Any]) -> socket.socket | None:
    """Connect to the listener and send it the dial; None if it went away meanwhile."""
    from callctl.engine.sockets import unix_address

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            sock.connect(address)
        sock.sendall(json.dumps({"cmd": "dial", "arg": peer, "opts": opts}).encode() + b"\n")
    except OSError:
        sock.close()
        return None
    return sock


def follow(sock: socket.socket, path: Path, json_events: bool, hooks: dict[str, str | None]) -> int | None:
    """The dialed call to its end: its exit code, or None if ``path`` is not a listen (go standalone)."""
    import asyncio

    return asyncio.run(_follow(sock, path, json_events, hooks))


async def _follow(sock: socket.socket, path: Path, json_events: bool,
                  hooks: dict[str, str | None]) -> int | None:
    import asyncio
    import signal
    import sys

    from callctl.commands._hooks import Hooks
    from callctl.engine.sockets import socket_identity
    from callctl.exitcodes import ExitCode
    from callctl.ui.output import JsonOutput, PlainOutput

    try:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    except OSError:
        sock.close()
        return None
    try:
        first = await reader.readline()
        try:
            answer = json.loads(first)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            print(f"callctl: no answer from the running listen ({path})", file=sys.stderr)
            return ExitCode.INTERNAL_ERROR
        if not answer.get("ok"):
            if answer.get("standalone"):
                return None
            print(f"callctl: {answer.get('error', 'refused')}", file=sys.stderr)
            if answer.get("usage"):
                return ExitCode.USAGE
            if answer.get("offline"):
                return ExitCode.SERVER_UNREACHABLE
            return ExitCode.INTERNAL_ERROR
        show = JsonOutput() if json_events else PlainOutput()
        _, user, device = socket_identity(path) or ("", "", "")
        run_hooks = Hooks(hooks, user=user, device=device)
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if not interrupted.is_set():
                interrupted.set()
                writer.write(b'{"cmd":"hangup"}\n')

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        reason: str | None = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                show(str(record.get("event", "")), record)
                run_hooks(str(record.get("event", "")), record)
                if record.get("event") == "call.ended":
                    reason = str(record.get("reason"))
                    break
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await run_hooks.finish()
        if interrupted.is_set():
            return ExitCode.INTERRUPTED
        if reason is None:
            print("callctl: the running listen stopped during the call", file=sys.stderr)
            return ExitCode.INTERNAL_ERROR
        from callctl.exitcodes import for_reason
        from callctl.signaling.protocol import EndReason

        try:
            return for_reason(EndReason(reason))
        except ValueError:
            return ExitCode.INTERNAL_ERROR
    finally:
        writer.close()

"""``callctl call`` beside a running ``listen``: the call goes through the phone that owns the devices.

A kiosk runs ``listen`` from boot; a button or a script that runs ``callctl
call reception`` must not open the sound card a second time.  When a
``listen`` of this identity runs on this machine, ``call`` asks it over the
control socket to place the call (``dial``), prints the events of that call
as it would its own, runs its hooks, hangs up on Ctrl-C and exits with the
call's exit code.  Nothing of the media engine is imported here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from callctl.config import Settings
from callctl.exitcodes import ExitCode, for_reason
from callctl.ui.console import fail


def find_listener(user: str | None, device: str | None) -> Any:
    """The control socket of a running listen for this identity, or None."""
    from callctl.engine.control import ControlError, find_socket

    if not user:
        return None
    try:
        return find_socket(None, user, device)
    except ControlError as exc:
        if "several" in str(exc):
            fail(f"{exc}, or --standalone", ExitCode.USAGE)
        return None


def place(settings: Settings, path: Any, peer: str, opts: dict[str, Any],
          hooks: dict[str, str | None]) -> int | None:
    """Run the call through the listener at ``path``: its exit code, or None if it is not a listen."""
    return asyncio.run(_place(settings, path, peer, opts, hooks))


async def _place(settings: Settings, path: Any, peer: str, opts: dict[str, Any],
                 hooks: dict[str, str | None]) -> int | None:
    from callctl.commands._hooks import Hooks
    from callctl.engine.control import socket_identity, unix_address
    from callctl.signaling.protocol import EndReason
    from callctl.ui.output import JsonOutput, PlainOutput

    try:
        with unix_address(path) as address:
            reader, writer = await asyncio.open_unix_connection(address, limit=1 << 20)
    except OSError:
        return None  # it went away meanwhile: go standalone
    try:
        writer.write(json.dumps({"cmd": "dial", "arg": peer, "opts": opts}).encode() + b"\n")
        await writer.drain()
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
        show = JsonOutput() if settings.json else PlainOutput()
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
        try:
            return for_reason(EndReason(reason))
        except ValueError:
            return ExitCode.INTERNAL_ERROR
    finally:
        writer.close()

"""Run `callctl` commands as real processes and follow their NDJSON events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.helpers import WAIT, ServerProcess


class Cli:
    """One `callctl --json ...` process; events parsed from stdout as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._changed = asyncio.Condition()
        self._readers = [asyncio.ensure_future(self._read_stdout()),
                         asyncio.ensure_future(self._read_stderr())]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                async with self._changed:
                    self.events.append(record)
                    self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr += line.decode(errors="replace")

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    async def wait_event(self, event: str, count: int = 1, timeout: float = WAIT) -> dict[str, Any]:
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: len(self.named(event)) >= count or self.proc.returncode is not None
                        or self._readers[0].done()
                    ),
                    timeout,
                )
            except TimeoutError:
                raise AssertionError(
                    f"{self.name}: no {event} within {timeout} s; events "
                    f"{[e['event'] for e in self.events]}; stderr {self.stderr!r}"
                ) from None
        found = self.named(event)
        assert len(found) >= count, (
            f"{self.name} ended without {event}: {[e['event'] for e in self.events]} {self.stderr!r}"
        )
        return found[count - 1]

    async def exit_code(self, timeout: float = WAIT) -> int:
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} still running after {timeout} s; "
                                 f"events {[e['event'] for e in self.events]}") from None
        await asyncio.gather(*self._readers)
        return code

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        for r in self._readers:
            with contextlib.suppress(Exception):
                await r


class Callctl:
    """Starts callctl processes against one server, with a private runtime dir."""

    def __init__(self, server: ServerProcess, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.running: list[Cli] = []
        (workdir / "run").mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(workdir / "run"),
            "XDG_CONFIG_HOME": str(workdir / "config"),
            "XDG_STATE_HOME": str(workdir / "state"),
            "CALLCTL_SECRET_FILE": str(server.secret_file),
            "PYTHONUNBUFFERED": "1",
        }

    def _argv(self, user: str | None, args: tuple[str, ...], server: str | None,
              json: bool = True) -> list[str]:
        argv = [sys.executable, "-m", "callctl", *(["--json"] if json else []),
                "--server", server or self.server.url]
        if user:
            argv += ["--as", user]
        return argv + list(args)

    async def start(self, user: str | None, *args: str, server: str | None = None,
                    env: dict[str, str] | None = None) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            *self._argv(user, args, server),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**self.env, **(env or {})},
        )
        cli = Cli(proc, f"{user} {' '.join(args[:1])}")
        self.running.append(cli)
        return cli

    async def listen(self, user: str, *args: str, device: str = "kiosk") -> Cli:
        cli = await self.start(user, "listen", "--device", device, "--audio-out", "null",
                               "--audio-in", "tone:660", *args)
        await cli.wait_event("registered")
        return cli

    async def call(self, user: str, peer: str, *args: str, device: str = "desk",
                   server: str | None = None, env: dict[str, str] | None = None) -> Cli:
        return await self.start(user, "call", peer, "--device", device, "--audio-out", "null",
                                "--audio-in", "tone:440", *args, server=server, env=env)

    async def run(self, user: str | None, *args: str, timeout: float = WAIT) -> tuple[int, str, str]:
        """A short command (accept, status, ...) to completion: (code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(user, args, None, json=False),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def close(self) -> None:
        for cli in self.running:
            await cli.stop()

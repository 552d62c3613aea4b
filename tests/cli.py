"""Run `callctl` commands as real processes and follow their NDJSON events."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from callctl.harness.child import Child, callctl_command, callctl_env
from tests.helpers import WAIT, ServerProcess


class Cli:
    """One `callctl --json ...` process (a harness Child), awaited the way the tests await."""

    def __init__(self, child: Child) -> None:
        self.proc = child
        self.name = child.name

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.proc.events

    @property
    def stderr(self) -> str:
        return self.proc.stderr

    def named(self, event: str) -> list[dict[str, Any]]:
        return self.proc.named(event)

    async def wait_event(self, event: str, count: int = 1, timeout: float = WAIT) -> dict[str, Any]:
        return await self.proc.await_event(event, count, timeout)

    async def exit_code(self, timeout: float = WAIT) -> int:
        code = await self.proc.await_exit(timeout)
        if code is None:
            raise AssertionError(f"still running after {timeout} s; {self.proc.describe()}")
        return code

    def signal(self, sig: int) -> None:
        self.proc.signal(sig)

    async def stop(self) -> None:
        await asyncio.to_thread(self.proc.stop, grace=0)


class Callctl:
    """Starts callctl processes against one server, with a private runtime dir."""

    def __init__(self, server: ServerProcess, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.running: list[Cli] = []
        (workdir / "run").mkdir(exist_ok=True)
        self.env = callctl_env(
            XDG_RUNTIME_DIR=str(workdir / "run"),
            XDG_CONFIG_HOME=str(workdir / "config"),
            XDG_STATE_HOME=str(workdir / "state"),
            CALLCTL_SECRET_FILE=str(server.secret_file),
        )

    def _argv(self, user: str | None, args: tuple[str, ...], server: str | None,
              json: bool = True) -> list[str]:
        argv = callctl_command(*(["--json"] if json else []), "--server", server or self.server.url)
        if user:
            argv += ["--as", user]
        return argv + list(args)

    async def start(self, user: str | None, *args: str, server: str | None = None,
                    env: dict[str, str] | None = None) -> Cli:
        cli = Cli(Child(self._argv(user, args, server), name=f"{user} {' '.join(args[:1])}",
                        env={**self.env, **(env or {})}))
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

    async def run(self, user: str | None, *args: str, timeout: float = WAIT,
                  env: dict[str, str] | None = None, server: str | None = None) -> tuple[int, str, str]:
        """A short command (accept, status, ...) to completion: (code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(user, args, server, json=False),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**self.env, **(env or {})},
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def close(self) -> None:
        for cli in self.running:
            await cli.stop()

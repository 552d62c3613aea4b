"""``--on-ring/--on-connect/--on-end/--on-missed/--on-dtmf/--on-message``: a program run on a call's events.

The rules (docs/EVENTS.md, Hooks):

- A hook is a command line, split like a shell would split it (quotes,
  backslashes) and run **without a shell**: nothing of the call is ever put
  into it. Who wants a shell asks for one: ``--on-end 'sh -c "echo $CALLCTL_REASON >> /var/log/door"'``.
- The call is in the hook's environment (``CALLCTL_EVENT``, ``CALLCTL_PEER``,
  ``CALLCTL_DIGIT`` …); a message's payload comes on its stdin.
- A hook never holds the call up: it runs in the background. The hooks of one
  kind run one after the other, in the order of their events (the digits of a
  code arrive in order); at most ``QUEUE`` wait, more are dropped with one line.
- A hook that runs longer than ``TIMEOUT_S`` (30 s) is killed (its whole process group).
  Its exit code when not 0, and what it wrote (stdout and stderr: never onto our
  NDJSON stdout), are logged on stderr, a line each, prefixed with the hook's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
from typing import Any

from callctl.engine.events import Ev

HOOK_EVENTS: dict[str, str] = {Ev.CALL_INCOMING: "ring", Ev.CALL_RINGBACK: "ringback",
                               Ev.CALL_CONNECTED: "connect", Ev.CALL_ENDED: "end",
                               Ev.CALL_MISSED: "missed", Ev.DTMF: "dtmf", Ev.MESSAGE: "message"}
#: Hook names as options (``ringback`` is call's ``--on-ring``).
OPTION = {"ring": "--on-ring", "ringback": "--on-ring", "connect": "--on-connect", "end": "--on-end",
          "missed": "--on-missed", "dtmf": "--on-dtmf", "message": "--on-message"}
#: A hook still running after this long is killed (``CALLCTL_HOOK_TIMEOUT_S`` sets another).
TIMEOUT_S = 30.0
#: At exit, the hooks still running or waiting get this long to finish.
FINISH_S = 5.0
#: Events of one hook waiting for it; more are dropped (a flood of digits or messages).
QUEUE = 64
#: Lines of one run's output that are logged; the rest is counted.
MAX_LINES = 20


class HookError(ValueError):
    """A hook's command line cannot be run (bad quoting, no such program)."""


def parse(name: str, command: str) -> list[str]:
    """A hook's command line as argv, or HookError saying why not (checked before any call)."""
    option = OPTION.get(name, name)
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise HookError(f"{option}: cannot read the command line {command!r}: {exc}") from None
    if not argv:
        raise HookError(f"{option}: the command line is empty")
    if shutil.which(argv[0]) is None:
        raise HookError(f"{option}: no program {argv[0]!r} (the hook is run without a shell: "
                        f"for shell syntax, 'sh -c \"...\"')")
    return argv


def check(commands: dict[str, str | None]) -> None:
    """HookError for the first hook that cannot be run."""
    for name, command in commands.items():
        if command:
            parse(name, command)


class Hooks:
    """The hooks of one ``call`` or ``listen``: an event listener plus the hooks it started."""

    def __init__(self, commands: dict[str, str | None], *, user: str, device: str) -> None:
        self.commands = {name: parse(name, cmd) for name, cmd in commands.items() if cmd}
        self.user, self.device = user, device
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._dropped = 0
        try:
            self.timeout = float(os.environ.get("CALLCTL_HOOK_TIMEOUT_S") or TIMEOUT_S)
        except ValueError:
            self.timeout = TIMEOUT_S

    def __call__(self, event: str, record: dict[str, Any]) -> None:
        name = HOOK_EVENTS.get(event, "")
        if name not in self.commands:
            return
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = asyncio.Queue(QUEUE)
            self._workers[name] = asyncio.ensure_future(self._work(name, queue))
        try:
            queue.put_nowait(record)
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                print(f"callctl: hook {OPTION[name]}: {self._dropped} events dropped "
                      f"({QUEUE} already waiting)", file=sys.stderr)

    def environment(self, record: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        duration = record.get("duration_s")
        env.update({
            "CALLCTL_EVENT": str(record.get("event", "")),
            "CALLCTL_CALL_ID": str(record.get("call_id") or ""),
            "CALLCTL_PEER": str(record.get("peer") or ""),
            "CALLCTL_MEDIA": str(record.get("media") or ""),
            "CALLCTL_REASON": str(record.get("reason") or ""),
            "CALLCTL_DURATION_S": "" if duration is None else f"{float(duration):.1f}",
            "CALLCTL_USER": self.user,
            "CALLCTL_DEVICE": self.device,
        })
        if record.get("event") == Ev.DTMF:
            env["CALLCTL_DIGIT"] = str(record.get("digit", ""))
        if record.get("event") == Ev.MESSAGE:
            env["CALLCTL_MESSAGE_TYPE"] = str(record.get("type", ""))
        return env

    @staticmethod
    def stdin(record: dict[str, Any]) -> bytes | None:
        """What the hook reads: a message's payload (text as it came, JSON encoded), else nothing."""
        if record.get("event") != Ev.MESSAGE:
            return None
        body = record.get("body")
        text = body if record.get("type") == "text" and isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        return text.encode("utf-8", "replace")

    async def _work(self, name: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            record = await queue.get()
            try:
                await self._run(name, record)
            finally:
                queue.task_done()

    async def _run(self, name: str, record: dict[str, Any]) -> None:
        argv, label = self.commands[name], f"hook {OPTION[name]} ({self.commands[name][0]})"
        data = self.stdin(record)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=self.environment(record),
                stdin=asyncio.subprocess.DEVNULL if data is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            print(f"callctl: {label} could not start: {exc.strerror or exc}", file=sys.stderr)
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(data), self.timeout)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            out = b""
            print(f"callctl: {label} ran longer than {self.timeout:g} s: killed", file=sys.stderr)
        except asyncio.CancelledError:
            _kill(proc)
            raise
        lines = out.decode("utf-8", "replace").splitlines()
        for line in lines[:MAX_LINES]:
            print(f"callctl: {label}: {line}", file=sys.stderr)
        if len(lines) > MAX_LINES:
            print(f"callctl: {label}: ({len(lines) - MAX_LINES} more lines)", file=sys.stderr)
        code = proc.returncode
        if code not in (0, None) and not (code < 0 and -code == signal.SIGKILL):
            print(f"callctl: {label} exited {code}", file=sys.stderr)

    async def finish(self) -> None:
        """Let the hooks still to run, run (``FINISH_S`` at most), then stop them."""
        waiting = [asyncio.ensure_future(q.join()) for q in self._queues.values()]
        if waiting:
            await asyncio.wait(waiting, timeout=FINISH_S)
        for task in (*waiting, *self._workers.values()):
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

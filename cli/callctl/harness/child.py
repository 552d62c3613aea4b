"""A child process that reports NDJSON events on stdout: the events as they come, waits, its exit.

``callctl --json ...`` prints one JSON object per line (docs/EVENTS.md); other
programs a bench runs (baresip's ``run.sh``, py-spy, ``callctl accept``) print
plain lines, kept in ``lines``.  One reader thread per child parses stdout, so
the same object serves a blocking bench and an asyncio test: ``wait_event`` and
``wait_exit`` block, ``await_event`` and ``await_exit`` await.

Every child runs in its own process group and is killed when its parent dies
(PR_SET_PDEATHSIG), so an interrupted bench or test leaves nothing running;
``stop`` ends the whole group.  That signal comes when the *thread* that
spawned the child ends: spawn from a thread that lives as long as the child
(the main thread, an event loop's), not from a short-lived worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import callctl

_TERM = signal.SIGTERM  # Child.signal hides the module in the class body

#: Called in the reader thread the moment an event is read (before waiters see it).
EventHook = Callable[["Child", dict[str, Any]], None]


class ChildError(Exception):
    """An awaited event did not come: timeout, the child ended, or a ``fail_on`` event first."""


def callctl_command(*args: str) -> list[str]:
    """``callctl ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "callctl", *args]


def callctl_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: ours) made to import the callctl we import, unbuffered."""
    env = dict(os.environ if base is None else base)
    root = str(Path(callctl.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        paths.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _die_with_parent() -> None:
    # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """One child process; ``events`` are its stdout's JSON objects that have an ``event``."""

    def __init__(self, argv: list[str], *, name: str = "", env: dict[str, str] | None = None,
                 stderr: Path | None = None, cwd: Path | None = None,
                 on_event: EventHook | None = None) -> None:
        """``stderr``: a file to write it to; default: kept in memory (``stderr``)."""
        self.argv = argv
        self.name = name or Path(argv[0]).name
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.on_event = on_event
        self._stderr_path = stderr
        self._stderr_chunks: list[str] = []
        self._cond = threading.Condition()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._done = False  # stdout closed and the process reaped
        err_file = open(stderr, "wb") if stderr is not None else None  # noqa: SIM115
        try:
            #: Wall-clock time just before the spawn (events carry wall-clock ``ts``).
            self.t_spawn = time.time()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=err_file if err_file is not None else subprocess.PIPE,
                env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            if err_file is not None:
                err_file.close()
        self._readers = [threading.Thread(target=self._read_stdout, name=f"stdout-{self.name}",
                                          daemon=True)]
        if stderr is None:
            self._readers.append(threading.Thread(target=self._read_stderr,
                                                  name=f"stderr-{self.name}", daemon=True))
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def stderr(self) -> str:
        if self._stderr_path is not None:
            with contextlib.suppress(OSError):
                return self._stderr_path.read_text(errors="replace")
            return ""
        with self._cond:
            return "".join(self._stderr_chunks)

    # ------------------------------------------------------------------ reading

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            record = None
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                if self.on_event is not None:
                    try:
                        self.on_event(self, record)
                    except Exception as exc:  # a hook must not stop the reader
                        print(f"{self.name}: hook for {record['event']} failed: {exc}",
                              file=sys.stderr, flush=True)
                self._changed(functools.partial(self.events.append, record))
            else:
                self._changed(functools.partial(self.lines.append, line))
        self.proc.stdout.close()
        self.proc.wait()
        self._changed(lambda: setattr(self, "_done", True))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._changed(functools.partial(self._stderr_chunks.append, raw.decode(errors="replace")))
        self.proc.stderr.close()

    def _changed(self, update: Callable[[], None]) -> None:
        with self._cond:
            update()
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, changed in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(changed.set)

    def named(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e["event"] == event]

    def find(self, event: str) -> dict[str, Any] | None:
        """The first ``event`` so far, or None."""
        found = self.named(event)
        return found[0] if found else None

    def names(self) -> list[str]:
        with self._cond:
            return [e["event"] for e in self.events]

    def describe(self, tail: int = 1500) -> str:
        """Events, exit status and the end of stderr: what an error message about a child needs."""
        text = self.stderr.strip()
        return (f"{self.name}: events {self.names()}; exit {self.returncode}"
                + (f"\n--- {self.name} stderr (tail):\n{text[-tail:]}" if text else ""))

    # ------------------------------------------------------------------ waiting

    def _event_or_none(self, event: str, count: int, fail_on: str | None) -> dict[str, Any] | None:
        """The ``count``-th ``event``; raises when it can no longer come.  Holds the lock."""
        seen = 0
        for e in self.events:
            if e["event"] == event:
                seen += 1
                if seen == count:
                    return e
            elif fail_on is not None and e["event"] == fail_on:
                raise ChildError(f"{fail_on} ({e.get('reason')}) before {event}; {self.describe()}")
        if self._done:
            raise ChildError(f"ended without {event}; {self.describe()}")
        return None

    def wait_event(self, event: str, count: int = 1, timeout: float = 10.0,
                   fail_on: str | None = None) -> dict[str, Any]:
        """Block until the ``count``-th ``event``; ChildError if it cannot come within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (found := self._event_or_none(event, count, fail_on)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildError(f"no {event} within {timeout:g} s; {self.describe()}")
                self._cond.wait(left)
        return found

    async def await_event(self, event: str, count: int = 1, timeout: float = 10.0,
                          fail_on: str | None = None) -> dict[str, Any]:
        """``wait_event`` for a coroutine: the event loop goes on meanwhile."""
        found = await self._await(lambda: self._event_or_none(event, count, fail_on), timeout)
        if found is None:
            raise ChildError(f"no {event} within {timeout:g} s; {self.describe()}")
        return found

    async def await_stderr(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` shows on stderr; all of stderr then (ChildError if it does not)."""
        found = await self._await(lambda: text in "".join(self._stderr_chunks) or None, timeout)
        if found is None:
            raise ChildError(f"no {text!r} on stderr within {timeout:g} s; {self.describe()}")
        return "".join(self._stderr_chunks)

    def wait_line(self, text: str, timeout: float = 10.0) -> str:
        """Block until a stdout line that is not an event contains ``text``; that line."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise ChildError(f"no {text!r} within {timeout:g} s; {self.describe()}")
                self._cond.wait(left)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if the child still runs after ``timeout`` s."""
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)
        return self.proc.returncode if self._done else None

    async def await_exit(self, timeout: float) -> int | None:
        done = await self._await(lambda: self._done or None, timeout)
        return self.proc.returncode if done else None

    async def _await(self, ready: Callable[[], Any], timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        waiter = (loop, changed)
        deadline = loop.time() + timeout
        with self._cond:
            self._async_waiters.add(waiter)
        try:
            while True:
                changed.clear()  # before the check: a change after it sets it again
                with self._cond:
                    found = ready()
                left = deadline - loop.time()
                if found is not None or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
        finally:
            with self._cond:
                self._async_waiters.discard(waiter)

    # ----------------------------------------------------------------- stopping

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child alone (not its group), if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, sig: int = _TERM, grace: float = 5.0) -> int | None:
        """``sig`` to the group, SIGKILL after ``grace`` s (at once if 0); always reaps."""
        if grace > 0 and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # whatever is left in the group (baresip under run.sh), and the leader if still there
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode

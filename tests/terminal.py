"""A real pseudo-terminal for callctl: the process sees a TTY; the test reads its screen.

The pty's output goes through pyte, a VT100/xterm emulator, so a test reads what a
person would see (the panel, the status line under the video), and types keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable

import pyte

WAIT = 20.0


def _controlling_tty() -> None:  # in the child, before exec: its own session, the pty as its terminal
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """One command in a ``cols`` × ``rows`` pseudo-terminal."""

    def __init__(self, argv: list[str], env: dict[str, str], *, cols: int = 100, rows: int = 30) -> None:
        self.cols, self.rows = cols, rows
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     preexec_fn=_controlling_tty, close_fds=True)
        os.close(slave)
        self._changed = asyncio.Event()
        self._closed = False
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:  # the process closed the terminal (it exited)
            asyncio.get_running_loop().remove_reader(self.master)
            self._closed = True
        else:
            self.raw += data
            self.stream.feed(data)
        self._changed.set()

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def line(self, row: int) -> str:
        return self.screen.display[row].rstrip()

    async def wait_for(self, what: str | Callable[[Terminal], bool], timeout: float = WAIT) -> None:
        """Until the screen shows ``what`` (a text, or a check of the terminal)."""
        check = (lambda t: what in t.text) if isinstance(what, str) else what
        deadline = time.monotonic() + timeout
        while not check(self):
            if self._closed and self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before showing {what!r}:\n{self.text}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the screen never showed {what!r}:\n{self.text}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    async def exit_code(self, timeout: float = WAIT) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s:\n{self.text}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.2)
        while not self._closed:  # what it wrote last is on the screen
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)
            if not self._changed.is_set():
                break
        return self.proc.returncode

    async def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.master)
        with contextlib.suppress(OSError):
            os.close(self.master)

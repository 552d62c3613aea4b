"""A private ``redis-server`` as a child process on a loopback port.

Nothing persists: no RDB snapshots, no append-only file, its working
directory in ``workdir``.  Ready when it logs "Ready to accept connections".
``restart`` comes back on the same port with no data (what a Redis without
persistence does after a crash); ``stop`` with SIGKILL is a crash.
"""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path
from types import TracebackType

from callctl.harness.child import Child


class RedisMissing(Exception):
    """redis-server is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisMissing("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: Child | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--logfile", "",
                "--daemonize", "no", "--protected-mode", "yes"]
        self.proc = Child(argv, name=f"redis-{self.starts}",
                          stderr=self.workdir / f"redis-{self.starts}.err")
        self.proc.wait_line("Ready to accept connections", timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig, grace=0 if sig == signal.SIGKILL else 5.0)
            self.proc = None

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""``callctl server`` as a child process on loopback: start, ready line, stop, restart, tokens.

The server is started with ``--json`` and a secret file in ``workdir``; it is
ready when it prints its ``server.listening`` event (docs/EVENTS.md), whose
``url`` carries the port it got.  A restart listens on that same port again,
so clients that reconnect find it.  Each start writes its stderr to a new
``server-N.log`` in ``workdir``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from callctl.harness.child import Child, ChildError, callctl_command, callctl_env

if TYPE_CHECKING:
    from callctl.signaling.client import SignalingClient


class ServerError(Exception):
    """The server did not come up."""


@dataclass
class ServerProcess:
    """``callctl server`` as a child process; ``args`` are extra server options."""

    workdir: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    #: The program: an installed ``callctl`` script, or this interpreter's ``-m callctl``.
    command: list[str] = field(default_factory=callctl_command)
    env: dict[str, str] | None = None
    proc: Child | None = None
    url: str = ""
    logs: list[Path] = field(default_factory=list)

    @property
    def secret_file(self) -> Path:
        return self.workdir / "secret"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = self.workdir / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        argv = [*self.command, "--json", "server", "--port", str(self.port),
                "--secret-file", str(self.secret_file), *self.args]
        self.proc = Child(argv, name="server", env=callctl_env(self.env), stderr=log)
        try:
            ready = self.proc.wait_event("server.listening", timeout=timeout)
        except ChildError as exc:
            self.stop()
            raise ServerError(f"callctl server did not start: {exc}") from None
        self.url = ready["url"]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop with ``sig`` (SIGKILL after 10 s); the exit status (0 if not running)."""
        if self.proc is None:
            return 0
        code = self.proc.stop(sig, grace=10.0)
        self.proc = None
        return 0 if code is None else code

    def restart(self) -> None:
        self.stop()
        self.start()

    def token(self, user: str, service: str = "default", ttl: float = 3600) -> str:
        from callctl.signaling.auth import issue_token, read_secret

        return issue_token(read_secret(self.secret_file), user, service, ttl)

    def client(self, user: str, device: str = "default", service: str = "default") -> SignalingClient:
        from callctl.signaling.client import SignalingClient

        return SignalingClient(self.url, self.token(user, service), device=device)

    def stderr_text(self) -> str:
        """Everything every start of the server wrote on stderr."""
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

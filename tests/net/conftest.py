"""Calls across two NATs: a topology of network namespaces, coturn and the server in its public segment.

The topology (``callctl.harness.netns``): ``a`` behind a port-restricted NAT,
``b`` and ``c`` behind a symmetric one, ``pub`` the public segment where the
signaling server and coturn run.  One topology serves the whole module; a
test that unplugs a cable or moves an address puts it back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from callctl.harness import netns
from callctl.harness.child import Child, callctl_command
from callctl.harness.server import ServerProcess
from callctl.harness.turn import Coturn
from tests.cli import Callctl, Cli

REASON = netns.available()
if REASON is not None:
    pytest.skip(f"calls across NATs need network namespaces: {REASON}", allow_module_level=True)

#: What each side sends: the caller's tone and the callee's.
CALLER_HZ, CALLEE_HZ = 440.0, 660.0


@pytest.fixture(scope="module")
def net() -> Iterator[netns.Topology]:
    with netns.Topology(hosts=netns.HOSTS_WITH_C) as topology:
        yield topology


@pytest.fixture(scope="module")
def turn(net: netns.Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    coturn = Coturn(tmp_path_factory.mktemp("coturn"), netns.PUBLIC, netns=net.ns("pub")).start()
    yield coturn
    coturn.stop()


def server_in_pub(net: netns.Topology, workdir: Path, *args: str) -> ServerProcess:
    """``callctl server`` in the public segment, listening on its public address."""
    workdir.mkdir(parents=True, exist_ok=True)
    srv = ServerProcess(workdir, ["--host", netns.PUBLIC, "--heartbeat", "2", *args],
                        command=[*net.prefix("pub"), *callctl_command()])
    return srv.start()


def turn_args(turn: Coturn, workdir: Path, secret: str | None = None) -> list[str]:
    secret_file = workdir / "turn-secret"
    secret_file.write_text((secret or turn.secret) + "\n")
    os.chmod(secret_file, 0o600)
    return ["--stun", turn.stun_url, "--turn", turn.url, "--turn-secret-file", str(secret_file)]


@pytest.fixture(scope="module")
def nat_server(net: netns.Topology, turn: Coturn,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("server")
    srv = server_in_pub(net, workdir, *turn_args(turn, workdir))
    yield srv
    srv.stop()
    assert "Traceback" not in srv.stderr_text(), srv.stderr_text()


class NetCallctl(Callctl):
    """``callctl`` processes on the hosts of the topology (``on="a"``), against one server."""

    def __init__(self, server: ServerProcess, workdir: Path, net: netns.Topology) -> None:
        super().__init__(server, workdir)
        self.net = net

    async def on(self, host: str, user: str, *args: str) -> Cli:
        argv = [*self.net.prefix(host), *self._argv(user, args, None)]
        cli = Cli(Child(argv, name=f"{user}@{host} {' '.join(args[:1])}", env=self.env))
        self.running.append(cli)
        return cli

    async def kiosk(self, host: str, user: str, *args: str) -> Cli:
        """``listen --auto-accept`` on ``host``: plays the callee's tone, records what it hears."""
        cli = await self.on(host, user, "listen", "--auto-accept", "--device", f"kiosk-{host}",
                            "--audio-in", f"tone:{CALLEE_HZ:g}", "--audio-out", "null", *args)
        await cli.wait_event("registered")
        return cli

    async def dial(self, host: str, user: str, peer: str, *args: str) -> Cli:
        return await self.on(host, user, "call", peer, "--device", f"phone-{host}",
                             "--audio-in", f"tone:{CALLER_HZ:g}", "--audio-out", "null", *args)


@pytest.fixture
async def cli(nat_server: ServerProcess, net: netns.Topology, tmp_path: Path) -> AsyncIterator[NetCallctl]:
    runner = NetCallctl(nat_server, tmp_path, net)
    yield runner
    await runner.close()

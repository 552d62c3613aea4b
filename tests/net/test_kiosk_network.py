"""A kiosk rides out its network's bad days: a server name that does not resolve, a cable pulled.

The kiosk's ``listen`` runs in host ``a`` of the topology and reaches the
server by name. ``ip netns exec`` gives the namespace its own ``/etc/hosts``
and ``/etc/resolv.conf`` (from ``/etc/netns/NS/``): first the name is in
neither and the resolver points at a port where nothing answers (the lookup
fails at once, as with a DNS server down), then the name is added — in place:
the file is bind-mounted — and the kiosk must register by itself, without a
restart, and take a call.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from callctl.harness import netns
from callctl.harness.child import Child
from callctl.harness.server import ServerProcess
from tests.cli import Cli
from tests.net.conftest import CALLEE_HZ, NetCallctl

NAME = "signal.callctl.test"


@pytest.fixture
def etc(net: netns.Topology) -> Iterator[Path]:
    """Host ``a``'s own /etc files (hosts, resolv.conf), removed afterwards."""
    folder = Path("/etc/netns") / net.ns("a")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts").write_text("127.0.0.1 localhost\n")
    (folder / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path("/etc/netns").rmdir()  # only if it is empty: others' files stay


async def test_a_kiosk_registers_once_its_server_name_resolves_and_after_a_cable_pull(
        cli: NetCallctl, net: netns.Topology, nat_server: ServerProcess, etc: Path) -> None:
    url = f"http://{NAME}:{nat_server.port}"
    argv = [*net.prefix("a"), *cli._argv("kiosk", ("listen", "--auto-accept", "--device", "kiosk-a",
                                                   "--audio-in", f"tone:{CALLEE_HZ:g}", "--audio-out",
                                                   "null"), url)]
    kiosk = Cli(Child(argv, name="kiosk@a listen", env=cli.env))
    cli.running.append(kiosk)
    lost = await kiosk.wait_event("server.lost")
    assert f"cannot resolve {NAME} (DNS)" in lost["message"], lost
    assert not kiosk.named("registered")

    with (etc / "hosts").open("a") as hosts:  # in place: the namespace sees this very file
        hosts.write(f"{netns.PUBLIC} {NAME}\n")
    await kiosk.wait_event("registered", timeout=15)
    caller = await cli.dial("b", "alice", "kiosk", "--hangup-after", "1")
    assert await caller.exit_code() == 0, caller.proc.describe()
    assert caller.named("media.flowing")

    net.link_down("a")
    try:
        await kiosk.wait_event("server.lost", count=2, timeout=20)
    finally:
        net.link_up("a")
    await kiosk.wait_event("server.restored", timeout=15)
    caller = await cli.dial("b", "alice", "kiosk", "--hangup-after", "1")
    assert await caller.exit_code() == 0, caller.proc.describe()
    assert kiosk.proc.returncode is None, "the kiosk restarted or died"

"""Two home networks behind NAT routers and a public segment, built from network namespaces.

A call between two machines behind real NATs is the case loopback cannot show:
host and server-reflexive candidates that do not connect, a relay that must.
``Topology`` builds it on this machine with ``ip netns``, veth pairs, Linux
bridges and nftables, so a test runs callctl, coturn and the signaling server
in it as they run in the field::

    pub      203.0.113.1/24 on a bridge (TEST-NET-3): the server and coturn run here
    nat_a    203.0.113.2 | 10.1.0.1/24  masquerade               (port-restricted cone)
    nat_b    203.0.113.3 | 10.2.0.1/24  masquerade fully-random  (symmetric)
    a        10.1.0.2 behind nat_a;  b  10.2.0.2 behind nat_b;  (c  10.2.0.3 behind nat_b)

Each router forwards from its LAN out, and from the public side in only what
belongs to a conntrack flow, like a home router: a datagram from ``a`` to
``nat_b``'s public address never reaches ``b`` unless ``b`` sent to that very
address and port first.  ``nat_b`` maps each new destination of one socket to
a new random public port, so even that hole cannot be guessed: a↔b connects
only through a TURN relay.  Every router's default route is ``pub``, and
``pub``'s leads into a sink, "the rest of the internet": a datagram to an
address nobody here has (a private host candidate) is sent and lost, not
refused.

Every namespace is named ``cc<pid>-<n>-<node>``: the pid of the process that
built it, so ``remove_stale`` can tell a killed run's leftovers from a live
run's, and a per-process counter so two topologies coexist.  The veth ends are
created directly inside their namespaces (``ip -n NS link add ... peer ...
netns OTHER``), never in ours, so their short local names (``wan``, ``lan``,
``h-a``, ``eth0``) cannot collide with anything, and nothing is left in the
root namespace when a run dies midway: deleting a namespace deletes its veths.

IPv6 is switched off in every namespace: candidates are IPv4 only and no
duplicate address detection delays a fresh link.  ``br_netfilter`` (loaded on
many machines) would send bridged frames through the routers' nftables
chains; it is switched off per namespace too, so only routed traffic is
filtered and NATed.

Processes started in a namespace (``prefix`` + ``Child``) belong to the
caller: stop them (``Child.stop``) before ``close``.  A namespace outlives its
name while a process is in it, so ``close`` kills whatever it still finds in
one (and warns), rather than leave veths and NAT state behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: The public segment (TEST-NET-3, RFC 5737: never routed on the internet) and ``pub``'s address.
PUBLIC_NET = "203.0.113.0/24"
PUBLIC = "203.0.113.1"
#: The node on the public segment; it holds the bridge every router's WAN side plugs into.
PUB = "pub"

NETNS_DIR = "/run/netns"
_NAME = re.compile(r"^cc(\d+)-[a-z0-9]+-")
_CLONE_NEWNET = 0x40000000
#: The gateway of ``pub``'s default route into the void (RFC 2544 benchmarking range).
_SINK_GATEWAY = "198.18.0.1"
_counter = itertools.count()


class NetnsError(RuntimeError):
    """A command that builds or changes the topology failed; the message has its stderr."""


@dataclass(frozen=True)
class Router:
    """A NAT router: ``public`` on the public segment, ``lan`` its LAN address with prefix.

    ``masquerade`` is the nftables masquerade flags: ``""`` keeps a socket's
    port for every destination (Linux conntrack's port-restricted cone),
    ``"fully-random"`` picks a new random port per destination (symmetric).
    """

    public: str
    lan: str
    masquerade: str = ""


@dataclass(frozen=True)
class Host:
    """A machine plugged into ``router``'s LAN (or into ``pub``'s segment) with ``address``.

    Its default route is the router (``pub`` for a host on the public segment).
    """

    router: str
    address: str


ROUTERS: Mapping[str, Router] = {
    "nat_a": Router("203.0.113.2", "10.1.0.1/24"),
    "nat_b": Router("203.0.113.3", "10.2.0.1/24", "fully-random"),
}
HOSTS: Mapping[str, Host] = {"a": Host("nat_a", "10.1.0.2"), "b": Host("nat_b", "10.2.0.2")}
#: ``HOSTS`` and ``c``, a second machine behind the symmetric NAT (for a browser).
HOSTS_WITH_C: Mapping[str, Host] = {**HOSTS, "c": Host("nat_b", "10.2.0.3")}


# --------------------------------------------------------------------- commands


def _command(argv: list[str], *, input: str | None = None, check: bool = True,
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    out = _command(["ip", "-j", "-n", ns, *args]).stdout.strip()
    return list(json.loads(out)) if out else []


def namespaces() -> list[str]:
    """The names ``ip netns`` knows (ours and everyone's)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(os.listdir(NETNS_DIR))
    return []


def _pids_in(ns: str) -> list[int]:
    done = _command(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []


def _delete(ns: str) -> list[int]:
    """Kill what still runs in ``ns``, delete it; the pids it had to kill."""
    leftovers = _pids_in(ns)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if ns in namespaces():
        _command(["ip", "netns", "delete", ns], check=False)
    return leftovers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces of harness runs whose process has died; the names deleted.

    A run killed with SIGKILL cannot clean up; its namespaces (and whatever
    its children left in them) go the next time any run builds a topology.
    """
    stale = [ns for ns in namespaces()
             if (m := _NAME.match(ns)) is not None and not _alive(int(m.group(1)))]
    for ns in stale:
        _delete(ns)
    return stale


def _in_netns(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in network namespace ``ns``, from a thread made for it.

    setns(2) moves only the calling thread, so a short-lived thread enters the
    namespace and the rest of the process stays where it is.  A socket made
    there stays in that namespace for its whole life, whichever thread uses it.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter_and_call, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def netns_socket(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket in network namespace ``ns`` (close it, or use it in a ``with``)."""
    return _in_netns(ns, lambda: socket.socket(family, kind))


# -------------------------------------------------------------------- probing


@functools.cache
def available() -> str | None:
    """None if this machine can build a topology; else why not, in one line (a skip reason).

    Tries what the build needs in a throwaway namespace: a veth pair, a
    bridge, an nftables NAT table with a fully-random masquerade and a
    conntrack-state filter.
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (iproute2, nftables)"
    ns = f"cc{os.getpid()}-probe{next(_counter)}-x"
    steps: list[tuple[str, list[str], str | None]] = [
        ("create a network namespace", ["ip", "netns", "add", ns], None),
        ("create a veth pair", ["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer",
                                "name", "v1"], None),
        ("create a bridge", ["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], None),
        ("load an nftables NAT table", ["ip", "netns", "exec", ns, "nft", "-f", "-"],
         _ruleset("v0", "v1", "fully-random")),
    ]
    try:
        for what, argv, stdin in steps:
            try:
                _command(argv, input=stdin, timeout=10)
            except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
                detail = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
                return f"cannot {what} here: {detail}"
    finally:
        _delete(ns)
    return None


#: ``Topology.set_loss``: random drops of a host's UDP, each way, before the router's own filter.
RULES = """\
table ip {table} {{
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        ip saddr {address} meta l4proto udp numgen random mod 1000 < {per_mille} drop
        ip daddr {address} meta l4proto udp numgen random mod 1000 < {per_mille} drop
    }}
}}
"""


def _ruleset(wan: str, lan: str, masquerade: str) -> str:
    """A home router's nftables: NAT out of ``wan``; into ``lan`` only what answers a flow."""
    return f"""\
table ip home_router {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" masquerade {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan}" accept
    }}
}}
"""


# ------------------------------------------------------------------- topology


def _deadline_poll(what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Return once ``ready()``; NetnsError after ``timeout`` s.  Kernel state, polled briefly."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise NetnsError(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)


class Topology:
    """The namespaces of one network (module docstring); ``with Topology() as net: ...``.

    Nodes are named ``pub``, the routers (``nat_a``, ``nat_b``) and the hosts
    (``a``, ``b``; ``hosts=HOSTS_WITH_C`` adds ``c``).  ``routers`` and
    ``hosts`` can describe another network of the same shape.
    """

    def __init__(self, hosts: Mapping[str, Host] = HOSTS,
                 routers: Mapping[str, Router] = ROUTERS) -> None:
        self.routers = dict(routers)
        self.hosts = dict(hosts)
        for name, host in self.hosts.items():
            if host.router != PUB and host.router not in self.routers:
                raise ValueError(f"host {name}: no router {host.router}")
        for name in [*self.routers, *self.hosts]:
            # "h-<name>" is an interface name: 15 characters at most
            if name == PUB or not re.fullmatch(r"[a-z][a-z0-9_]{0,12}", name):
                raise ValueError(f"bad node name {name!r}: [a-z][a-z0-9_], 13 characters at most")
        if len({*self.routers, *self.hosts}) != len(self.routers) + len(self.hosts):
            raise ValueError("a host and a router have the same name")
        #: The namespace names start with this (``cc<pid>-<n>-``).
        self.name_prefix = f"cc{os.getpid()}-{next(_counter)}-"
        self._addresses = {name: host.address for name, host in self.hosts.items()}
        #: Addresses a host had before: not handed out again, so an old NAT flow is never revived.
        self._used: dict[str, set[str]] = {name: set() for name in self.hosts}
        self._created: list[str] = []

    # ----------------------------------------------------------- building

    def __enter__(self) -> Topology:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> Topology:
        """Create every namespace, link, address, route and ruleset; ``close`` on any failure."""
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        for node in self.nodes:
            self._add_namespace(node)
        public = ipaddress.ip_network(PUBLIC_NET)
        self._ip(PUB, "link", "add", "br0", "type", "bridge")
        self._ip(PUB, "addr", "add", f"{PUBLIC}/{public.prefixlen}", "dev", "br0")
        self._ip(PUB, "link", "set", "br0", "up")
        self._add_internet()
        for name, router in self.routers.items():
            self._ip(name, "link", "add", "wan", "type", "veth", "peer", "name", name,
                     "netns", self.ns(PUB))
            self._ip(PUB, "link", "set", name, "master", "br0", "up")
            self._ip(name, "addr", "add", f"{router.public}/{public.prefixlen}", "dev", "wan")
            self._ip(name, "link", "set", "wan", "up")
            self._ip(name, "route", "add", "default", "via", PUBLIC)
            self._ip(name, "link", "add", "lan", "type", "bridge")
            self._ip(name, "addr", "add", router.lan, "dev", "lan")
            self._ip(name, "link", "set", "lan", "up")
            self.run(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # the others: 0, at creation
            self.run(name, "nft", "-f", "-", input=_ruleset("wan", "lan", router.masquerade))
        for name, host in self.hosts.items():
            bridge = "br0" if host.router == PUB else "lan"
            self._ip(name, "link", "add", "eth0", "type", "veth", "peer", "name", f"h-{name}",
                     "netns", self.ns(host.router))
            self._ip(host.router, "link", "set", f"h-{name}", "master", bridge, "up")
            self._ip(name, "addr", "add", f"{host.address}/{self._prefixlen(name)}", "dev", "eth0")
            self._ip(name, "link", "set", "eth0", "up")
            self._ip(name, "route", "add", "default", "via", self._gateway(name))
        for name in self.hosts:
            self._wait_link(name)

    def _add_internet(self) -> None:
        """``pub``'s default route: into a veth whose far end drops every frame, silently.

        Like the internet seen from a server: a datagram to an address no one
        here has (a peer's private host candidate) is sent and lost.  Without
        a default route sendto(2) fails with ENETUNREACH instead, and coturn
        answers that by closing the whole allocation.  (No ``dummy`` device:
        not every kernel has the module.)  The gateway has a permanent
        neighbour entry with a MAC nobody owns: no ARP, and ``void`` drops
        the frames as meant for another host.
        """
        self._ip(PUB, "link", "add", "internet", "type", "veth", "peer", "name", "void")
        for link in ("void", "internet"):
            self._ip(PUB, "link", "set", link, "up")
        self._ip(PUB, "neigh", "add", _SINK_GATEWAY, "lladdr", "02:00:00:00:00:01", "dev",
                 "internet", "nud", "permanent")
        self._ip(PUB, "route", "add", "default", "via", _SINK_GATEWAY, "dev", "internet", "onlink")

    def _add_namespace(self, node: str) -> None:
        ns = self.ns(node)
        _command(["ip", "netns", "add", ns])
        self._created.append(ns)
        self._ip(node, "link", "set", "lo", "up")
        # a new namespace inherits IPv4 settings from the root one: forwarding set here
        # explicitly, or a machine that routes (docker) would make pub and the hosts routers too
        settings = ["net.ipv4.ip_forward=0",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                    # deleting a primary address must keep the other one (change_address)
                    "net.ipv4.conf.all.promote_secondaries=1",
                    "net.ipv4.conf.default.promote_secondaries=1"]
        self.run(node, "sysctl", "-qw", *settings)
        # absent when br_netfilter is not loaded: nothing to switch off then
        self.run(node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)

    # ----------------------------------------------------------- naming

    @property
    def nodes(self) -> list[str]:
        """Every node: ``pub``, the routers, the hosts."""
        return [PUB, *self.routers, *self.hosts]

    def ns(self, name: str) -> str:
        """The real namespace name of node ``name``."""
        if name not in self.nodes:
            raise KeyError(f"no node {name!r} (nodes: {', '.join(self.nodes)})")
        return self.name_prefix + name

    def prefix(self, name: str) -> list[str]:
        """The argv prefix that runs a program in node ``name``: ``[*net.prefix("a"), "prog"]``."""
        return ["ip", "netns", "exec", self.ns(name)]

    def run(self, name: str, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``argv`` run to its end in node ``name``; output captured as text."""
        return _command([*self.prefix(name), *argv], input=input, check=check, timeout=timeout)

    def socket(self, name: str, family: int = socket.AF_INET,
               kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket in node ``name``, for this process to use: no child needed for a datagram."""
        return netns_socket(self.ns(name), family, kind)

    def _ip(self, node: str, *args: str) -> None:
        _command(["ip", "-n", self.ns(node), *args])

    # ----------------------------------------------------------- addresses

    def address(self, name: str) -> str:
        """A host's current address; a router's public one; ``pub``'s."""
        if name == PUB:
            return PUBLIC
        if name in self.routers:
            return self.routers[name].public
        if name not in self.hosts:
            raise KeyError(f"no node {name!r}")
        return self._addresses[name]

    def _network(self, host: str) -> ipaddress.IPv4Network:
        router = self.hosts[host].router
        cidr = PUBLIC_NET if router == PUB else self.routers[router].lan
        return ipaddress.IPv4Interface(cidr).network

    def _prefixlen(self, host: str) -> int:
        return self._network(host).prefixlen

    def _gateway(self, host: str) -> str:
        router = self.hosts[host].router
        return PUBLIC if router == PUB else str(ipaddress.IPv4Interface(self.routers[router].lan).ip)

    def change_address(self, host: str, remove_old: bool = True) -> str:
        """Give ``host`` a new address in its LAN (the old one + 10, or the next free), and use it.

        The new address becomes the default route's source; the old one is
        deleted (``remove_old``), as when a laptop gets a new DHCP lease:
        sockets bound to it are dead, flows through the NAT are new flows.
        """
        old = self._addresses[host]
        network = self._network(host)
        taken = {*self._addresses.values(), self._gateway(host), *self._used[host]}
        usable = list(network.hosts())
        first = ipaddress.IPv4Address(old) + 10
        start = next((i for i, a in enumerate(usable) if a >= first), 0)
        free = [str(a) for a in usable[start:] + usable[:start] if str(a) not in taken]
        if not free:
            raise NetnsError(f"{host}: no free address left in {network}")
        new = free[0]
        plen = network.prefixlen
        self._ip(host, "addr", "add", f"{new}/{plen}", "dev", "eth0")
        if remove_old:
            # promote_secondaries (set at build): the new address becomes primary, not deleted too
            self._ip(host, "addr", "del", f"{old}/{plen}", "dev", "eth0")
        self._ip(host, "route", "replace", "default", "via", self._gateway(host), "dev", "eth0",
                 "src", new)
        self._used[host].add(old)
        self._addresses[host] = new
        routes = _ip_json(self.ns(host), "route", "get", PUBLIC)
        if not routes or routes[0].get("prefsrc") != new:
            raise NetnsError(f"{host}: the route to {PUBLIC} does not use {new}: {routes}")
        return new

    # ----------------------------------------------------------- loss

    def set_loss(self, host: str, percent: float) -> None:
        """Drop ``percent`` % of the UDP datagrams ``host``'s router forwards for it, each way, at random.

        ``tc netem`` is not available here; nftables' ``numgen random`` is, and
        it drops real packets on the real path (media, STUN, TURN alike).  0
        takes the rule away.
        """
        nft = ["ip", "netns", "exec", self.ns(self.hosts[host].router), "nft"]
        table = f"lossy_{host}"
        _command([*nft, "delete", "table", "ip", table], check=False)
        if percent <= 0:
            return
        per_mille, address = int(round(percent * 10)), self._addresses[host]
        _command([*nft, "-f", "-"], input=RULES.format(table=table, address=address, per_mille=per_mille))

    # ----------------------------------------------------------- links

    def link_down(self, host: str) -> None:
        """Unplug ``host``'s cable: its router-side veth end goes down.

        The host keeps its address and routes (they are only marked
        ``linkdown``): what it sends is dropped, as on a real unplugged port.
        """
        self._ip(self.hosts[host].router, "link", "set", f"h-{host}", "down")
        _deadline_poll(f"{host}: carrier lost", lambda: not self._carrier(host), 5.0)

    def link_up(self, host: str, timeout: float = 5.0) -> None:
        """Plug ``host``'s cable back in; returns once traffic can flow again.

        That is: the host's veth has its carrier, the router's bridge forwards
        on the port, and the router's connected route to the LAN is there and
        not ``linkdown``.
        """
        self._ip(self.hosts[host].router, "link", "set", f"h-{host}", "up")
        self._wait_link(host, timeout)

    def _carrier(self, host: str) -> bool:
        links = _ip_json(self.ns(host), "link", "show", "dev", "eth0")
        return bool(links) and "NO-CARRIER" not in links[0].get("flags", []) \
            and links[0].get("operstate") == "UP"

    def _wait_link(self, host: str, timeout: float = 5.0) -> None:
        router = self.hosts[host].router
        port, bridge = f"h-{host}", ("br0" if router == PUB else "lan")
        network = str(self._network(host))

        def ready() -> bool:
            info = _ip_json(self.ns(router), "-d", "link", "show", "dev", port)
            state = info[0].get("linkinfo", {}).get("info_slave_data", {}).get("state") if info else None
            routes = _ip_json(self.ns(router), "route", "show", "dev", bridge)
            connected = [r for r in routes if r.get("dst") == network
                         and "linkdown" not in r.get("flags", [])]
            return self._carrier(host) and state == "forwarding" and bool(connected)

        _deadline_poll(f"{host}: link up", ready, timeout)

    # ----------------------------------------------------------- closing

    def close(self) -> None:
        """Delete every namespace this topology created (their veths go with them); idempotent.

        Stop your processes in them first: whatever still runs in one is
        killed here, with a warning, since the namespace would otherwise live
        on with it.
        """
        leftovers: dict[str, list[int]] = {}
        for ns in reversed(self._created):
            killed = _delete(ns)
            if killed:
                leftovers[ns] = killed
        self._created.clear()
        if leftovers:
            warnings.warn(f"processes still running in namespaces were killed: {leftovers}",
                          ResourceWarning, stacklevel=2)

    @property
    def created(self) -> list[str]:
        """The namespaces this topology created and has not deleted yet."""
        return list(self._created)


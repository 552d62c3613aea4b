"""coturn as a child process, its TURN REST credentials, and a STUN Binding client to see it answer.

``Coturn`` writes a config file into ``workdir`` (a fresh ``static-auth-secret``
each instance, so no two runs share credentials), starts ``turnserver`` —
inside a network namespace when given one — and is ready once it answers a
real STUN Binding request on its listening address: coturn prints nothing
dependable when its sockets are bound, and a request answered is what a
client needs anyway.  Relays come from a small port range on the listening
address; two allocations on one coturn relay to each other (the relay↔relay
pair a call between two symmetric NATs ends up on) with no special option,
as long as that address is not loopback (see ``config``).

Credentials follow the TURN REST scheme coturn's ``use-auth-secret``
checks: username ``"<expiry>:<user>"``, password
``base64(HMAC-SHA1(secret, username))``.

The turnserver is a ``Child``: its own process group, killed if we die; the
Debian package's daemon (systemd) is not involved.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import select
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from callctl.harness.child import Child
from callctl.harness.netns import netns_socket

MAGIC_COOKIE = 0x2112A442
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101
_BINDING_ERROR = 0x0111
_MAPPED_ADDRESS = 0x0001
_XOR_MAPPED_ADDRESS = 0x0020
_ERROR_CODE = 0x0009


#: Ranges a public relay has no business reaching (RFC 1918, CGNAT, link-local, "this network").
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
           "0.0.0.0/8")


class TurnError(Exception):
    """coturn did not start, or did not answer."""


class StunError(Exception):
    """A STUN server answered a Binding request with an error response."""


# ----------------------------------------------------------------------- STUN


def binding_request(transaction_id: bytes) -> bytes:
    """An RFC 5389 Binding request without attributes (20 bytes)."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id has 12 bytes")
    return struct.pack("!HHI", _BINDING_REQUEST, 0, MAGIC_COOKIE) + transaction_id


def parse_binding_response(data: bytes, transaction_id: bytes) -> tuple[str, int] | None:
    """The (XOR-)MAPPED-ADDRESS of the response to ``transaction_id``; None if ``data`` is not one.

    Raises StunError for an error response to that transaction.
    """
    if len(data) < 20:
        return None
    kind, length, cookie = struct.unpack_from("!HHI", data)
    if cookie != MAGIC_COOKIE or data[8:20] != transaction_id or len(data) < 20 + length:
        return None
    attributes: dict[int, bytes] = {}
    at = 20
    while at + 4 <= 20 + length:
        attr, size = struct.unpack_from("!HH", data, at)
        attributes.setdefault(attr, data[at + 4:at + 4 + size])
        at += 4 + size + (-size % 4)  # values are padded to 4 bytes
    if kind == _BINDING_ERROR:
        error = attributes.get(_ERROR_CODE, b"")
        code = error[2] * 100 + error[3] if len(error) >= 4 else 0
        raise StunError(f"Binding error {code} {error[4:].decode(errors='replace')}".strip())
    if kind != _BINDING_SUCCESS:
        return None
    xor = attributes.get(_XOR_MAPPED_ADDRESS, b"")
    if len(xor) >= 8 and xor[1] == 1:  # family 1: IPv4
        port = struct.unpack_from("!H", xor, 2)[0] ^ (MAGIC_COOKIE >> 16)
        address = struct.unpack_from("!I", xor, 4)[0] ^ MAGIC_COOKIE
        return str(ipaddress.IPv4Address(address)), port
    plain = attributes.get(_MAPPED_ADDRESS, b"")  # RFC 3489 servers send only this
    if len(plain) >= 8 and plain[1] == 1:
        return socket.inet_ntoa(plain[4:8]), struct.unpack_from("!H", plain, 2)[0]
    return None


def stun_binding(sock: socket.socket, server: tuple[str, int], timeout: float = 5.0) -> tuple[str, int]:
    """Ask ``server`` over the UDP socket ``sock`` what address it sees; the mapped (ip, port).

    Retransmits as RFC 5389 does (100 ms, doubling, at most 1.6 s apart)
    until an answer or ``timeout``: TimeoutError then.  A refusal (ICMP
    port unreachable on a connected socket: nothing listens yet) waits for
    the next retransmission rather than failing.  Other datagrams are ignored.
    """
    transaction_id = secrets.token_bytes(12)
    request = binding_request(transaction_id)
    deadline = time.monotonic() + timeout
    rto = 0.1
    while (now := time.monotonic()) < deadline:
        try:
            sock.sendto(request, server)
        except ConnectionRefusedError:  # the refusal of an earlier request, reported now
            pass
        retransmit_at = min(now + rto, deadline)
        while (left := retransmit_at - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                break
            try:
                data = sock.recv(2048)
            except (ConnectionRefusedError, BlockingIOError):
                continue
            if (mapped := parse_binding_response(data, transaction_id)) is not None:
                return mapped
        rto = min(rto * 2, 1.6)
    raise TimeoutError(f"no STUN Binding response from {server[0]}:{server[1]} within {timeout:g} s")


# ----------------------------------------------------------------- credentials


def rest_credentials(secret: str, user: str, ttl: float = 3600.0,
                     now: float | None = None) -> tuple[str, str]:
    """TURN REST credentials valid ``ttl`` s: (``"<expiry>:<user>"``, base64 HMAC-SHA1 of it)."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


# ---------------------------------------------------------------------- coturn


class Coturn:
    """``turnserver`` listening on ``address``:``port`` (UDP and TCP), relaying from ``relay_ports``.

    ``netns``: run in that network namespace (and probe it from there);
    ``prefix``: more argv before the program (``taskset ...``).  ``start``
    returns once it answers STUN; ``stop`` (or the ``with`` block) ends it.
    ``options=["verbose"]`` makes it log every request and its answer (a
    403 for a peer, a session closed): what to look at when a relay fails.
    """

    def __init__(self, workdir: Path, address: str = "127.0.0.1", *, port: int = 3478,
                 netns: str | None = None, prefix: Sequence[str] = (),
                 relay_ports: tuple[int, int] = (49152, 49199), realm: str = "callctl.test",
                 program: str = "turnserver", deny_private_peers: bool = True,
                 options: Sequence[str] = ()) -> None:
        """``options``: more config lines (``"user-quota=2"``, ``"verbose"``)."""
        self.workdir = workdir
        self.address = address
        self.port = port
        self.netns = netns
        self.prefix = list(prefix)
        self.relay_ports = relay_ports
        self.realm = realm
        self.program = program
        self.deny_private_peers = deny_private_peers
        self.options = list(options)
        #: The shared secret of ``use-auth-secret``: new for every instance.
        self.secret = secrets.token_hex(16)
        self.proc: Child | None = None

    @property
    def server(self) -> tuple[str, int]:
        """Where it listens, as aioice's ``turn_server``/``stun_server`` wants it."""
        return self.address, self.port

    @property
    def url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=udp"

    @property
    def tcp_url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=tcp"

    @property
    def stun_url(self) -> str:
        return f"stun:{self.address}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "turnserver.conf"

    def credentials(self, user: str = "callctl", ttl: float = 3600.0) -> tuple[str, str]:
        """(username, password) this coturn accepts for ``ttl`` s (TURN REST scheme)."""
        return rest_credentials(self.secret, user, ttl)

    def config(self) -> str:
        """The config file's text.

        Relaying between two of its own allocations needs no option as long
        as its relay address is an ordinary one; on loopback it needs
        ``allow-loopback-peers`` (loopback peers are refused by default).

        ``deny_private_peers`` refuses permissions for private peers (the
        private ranges that do not hold ``address``), as a public coturn
        should be set up.  It matters here too: a peer's private host
        candidate is paired with every relay, and if sending to it fails
        outright (ENETUNREACH: no route) coturn closes the whole allocation,
        while a 403 for that one permission leaves the relay usable.
        """
        low, high = self.relay_ports
        lines = [
            f"listening-ip={self.address}",
            f"relay-ip={self.address}",
            f"listening-port={self.port}",
            f"min-port={low}",
            f"max-port={high}",
            f"realm={self.realm}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            "fingerprint",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            "log-file=stdout",
            "simple-log",
            f"pidfile={self.workdir / 'turnserver.pid'}",
            f"userdb={self.workdir / 'turndb'}",
        ]
        address = ipaddress.ip_address(self.address)
        if address.is_loopback:
            lines.append("allow-loopback-peers")
        if self.deny_private_peers:
            lines += [f"denied-peer-ip={net[0]}-{net[-1]}" for net in map(ipaddress.ip_network, PRIVATE)
                      if address not in net]
        return "\n".join([*lines, *self.options]) + "\n"

    def start(self, timeout: float = 10.0) -> Coturn:
        """Write the config, start turnserver, wait for its first STUN answer; TurnError if none."""
        if self.proc is not None:
            raise TurnError("turnserver already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the secret
        with os.fdopen(fd, "w") as out:
            out.write(self.config())
        netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv = [*netns, *self.prefix, self.program, "-c", str(self.config_file)]
        self.proc = Child(argv, name="turnserver")
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        probe = netns_socket(self.netns) if self.netns else socket.socket(socket.AF_INET,
                                                                          socket.SOCK_DGRAM)
        with probe:
            while True:
                if self.proc.returncode is not None:
                    raise TurnError(f"turnserver exited: {self.describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TurnError(f"turnserver gave no STUN answer within {timeout:g} s: "
                                    f"{self.describe()}")
                try:
                    stun_binding(probe, self.server, timeout=min(left, 0.5))
                    return
                except TimeoutError:
                    continue  # not listening yet, or it died: the loop's checks tell

    def log(self) -> str:
        """What turnserver printed (``log-file=stdout``)."""
        return "\n".join(self.proc.lines) if self.proc is not None else ""

    def describe(self, tail: int = 1500) -> str:
        """Exit status and the end of its log: for an error message."""
        if self.proc is None:
            return "turnserver: not started"
        return f"{self.proc.describe()}\n--- turnserver log (tail):\n{self.log()[-tail:]}"

    def stop(self) -> int | None:
        """End turnserver (SIGTERM, SIGKILL after 5 s); its exit status, None if not started."""
        if self.proc is None:
            return None
        code = self.proc.stop()
        self.proc = None
        return code

    def __enter__(self) -> Coturn:
        return self.start() if self.proc is None else self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

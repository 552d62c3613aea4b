"""HAProxy in front of several ``callctl server`` nodes, as a child process on a loopback port.

``Haproxy`` writes a config file into ``workdir`` (``config`` below says why
each setting is there; docs/SCALING.md "Behind a load balancer" is the same
config for production, explained), starts ``haproxy -f CONFIG -db`` (in the
foreground: no daemon, no pidfile, no master process) and is ready once a
real ``GET /healthz`` through it answers 200 — a node behind it answered,
which is what a client needs.  Debian's haproxy service (systemd,
/etc/haproxy/haproxy.cfg) is not involved.

The balancer has a second listener, ``stats_url``, with HAProxy's statistics
page: ``server_states`` reads from it how HAProxy sees each node right now
(``UP``, ``DOWN``, ``UP 1/2``: going down), ``wait_state`` waits for one.
Its log (health-check transitions such as "Server nodes/b is DOWN", and one
line per request as its response starts, so an event stream's when it opens,
with the node that took it) goes to ``haproxy.log`` in ``workdir``;
``requests`` parses those lines.

Behind HAProxy a node notices that a client closed its event stream only when
a write to that client fails: one or two heartbeats later (docs/SCALING.md).
"""

from __future__ import annotations

import csv
import http.client
import io
import re
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from callctl.harness.child import Child

#: Where Debian puts the binary: not on the PATH of every user.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


#: HAProxy's answer when no node is up: what a node answers while its store is unavailable.
NO_NODE_BODY = ('{"error":"unavailable","message":"no server node is available; '
                'try again shortly"}')
NO_NODE_RETRY_AFTER_S = 2

#: One ``option httplog`` line: server, status, termination flags, retries ("+1": redispatched),
#: request line.  With ``option logasap`` an event stream's line is written when it opens.
_REQUEST_LOG = re.compile(
    r'\] \S+ [^/\s]+/(?P<server>\S+) \S+ (?P<status>-?\d+) \S+ \S+ \S+ (?P<flags>\S+) '
    r'\d+/\d+/\d+/\d+/(?P<retries>\+?\d+) \d+/\d+ "(?P<request>[^"]*)"')


class HaproxyMissing(Exception):
    """haproxy is not installed."""


class HaproxyError(Exception):
    """haproxy did not start, or did not get ready."""


def find_haproxy() -> str:
    """The haproxy binary; HaproxyMissing if there is none."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path=_SBIN)
    if binary is None:
        raise HaproxyMissing("haproxy is not installed (apt-get install haproxy)")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def backend_address(url: str) -> str:
    """``http://HOST:PORT`` as HAProxy's server address ``HOST:PORT``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"a backend is http://HOST:PORT, not {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


def config(backends: Mapping[str, str], *, port: int, stats_port: int, host: str = "127.0.0.1",
           check_interval: str = "500ms", fall: int = 2, rise: int = 1,
           stream_timeout: str = "1h", balance: str = "leastconn") -> str:
    """An HAProxy config for event streams: ``backends`` maps a server name to its node's URL.

    - ``mode http``: HAProxy parses requests, so it can check /healthz and
      retry a connection elsewhere; it forwards a response's body as it
      arrives (no buffering of responses, and no compression configured, which
      would hold data back), so an event goes out the moment the node writes it.
    - ``timeout client``/``server``/``tunnel`` ``stream_timeout``: an event
      stream is one response that never ends and is silent between events and
      heartbeats (15 s by default); these inactivity timeouts must exceed the
      longest silence or HAProxy cuts every idle stream (``timeout server`` is
      the one that does: tried, flags ``sD--``).  ``timeout
      http-request``/``http-keep-alive`` keep the ordinary requests short.
    - ``option httpchk GET /healthz`` + ``http-check expect status 200``
      every ``check_interval``, ``fall`` failures to take a node out, ``rise``
      to take it back: a node that died (refused) or answers 503 (its store is
      unavailable, or it is stopping) gets no new connections.  Streams it
      already holds are left alone: they end when the node does.
    - ``retries 3`` + ``option redispatch 1``: a connection that fails (a node
      that died and is not marked down yet) is retried, each time on another
      node, at once.
    - ``http-error status 503``: when no node is up, HAProxy's own 503 is the
      nodes' own (JSON ``{"error": "unavailable"}``, ``Retry-After: 2``), not
      an HTML page.
    - ``balance leastconn``: a new stream goes to the node with the fewest
      connections, so streams spread evenly (round robin would not even them
      out again after a node comes back).
    """
    lines = [
        "global",
        "    log stderr format raw local0 info",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option logasap",
        "    option dontlognull",
        "    option log-health-checks",
        "    timeout connect 2s",
        f"    timeout client {stream_timeout}",
        f"    timeout server {stream_timeout}",
        f"    timeout tunnel {stream_timeout}",
        "    timeout client-fin 10s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 5s",
        "    timeout check 2s",
        "    retries 3",
        "    option redispatch 1",
        f"    http-error status 503 content-type application/json string '{NO_NODE_BODY}'"
        f" hdr Retry-After {NO_NODE_RETRY_AFTER_S}",
        "",
        "frontend callctl",
        f"    bind {host}:{port}",
        "    option forwardfor",
        "    default_backend nodes",
        "",
        "backend nodes",
        f"    balance {balance}",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        f"    default-server check inter {check_interval} fall {fall} rise {rise}",
        *(f"    server {name} {backend_address(url)}" for name, url in backends.items()),
        "",
        "listen stats",
        f"    bind {host}:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "    http-request set-log-level silent",
        "    timeout client 10s",
        "",
    ]
    return "\n".join(lines)


class Haproxy:
    """``haproxy`` on ``host``:``port`` balancing the nodes at ``backends``.

    ``backends``: node URLs (named ``n1``, ``n2``, ... in the config), or a
    mapping of names to URLs.  ``start`` returns once /healthz answers 200
    through it; ``stop`` (or the ``with`` block) ends it.
    """

    def __init__(self, workdir: Path, backends: Sequence[str] | Mapping[str, str], *,
                 host: str = "127.0.0.1", port: int | None = None, check_interval: str = "500ms",
                 fall: int = 2, rise: int = 1, stream_timeout: str = "1h",
                 balance: str = "leastconn") -> None:
        self.binary = find_haproxy()
        self.workdir = workdir
        self.backends = (dict(backends) if isinstance(backends, Mapping)
                         else {f"n{i}": url for i, url in enumerate(backends, 1)})
        if not self.backends:
            raise ValueError("haproxy needs at least one backend")
        self.host = host
        self.port = port or free_port()
        self.stats_port = free_port()
        self.check_interval = check_interval
        self.fall = fall
        self.rise = rise
        self.stream_timeout = stream_timeout
        self.balance = balance
        self.proc: Child | None = None

    @property
    def url(self) -> str:
        """What clients use instead of a node's URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.host}:{self.stats_port}/stats"

    @property
    def config_file(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def log_file(self) -> Path:
        return self.workdir / "haproxy.log"

    def config(self) -> str:
        """The config file's text (see the module function ``config``)."""
        return config(self.backends, port=self.port, stats_port=self.stats_port, host=self.host,
                      check_interval=self.check_interval, fall=self.fall, rise=self.rise,
                      stream_timeout=self.stream_timeout, balance=self.balance)

    def start(self, timeout: float = 10.0) -> Haproxy:
        """Write the config, start haproxy, wait for a 200 from /healthz through it."""
        if self.proc is not None:
            raise HaproxyError("haproxy already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config())
        self.proc = Child([self.binary, "-f", str(self.config_file), "-db"], name="haproxy",
                          stderr=self.log_file)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self.proc.returncode is not None:
                raise HaproxyError(f"haproxy exited: {self.describe()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise HaproxyError(f"no 200 from /healthz through haproxy within {timeout:g} s "
                                   f"({last}): {self.describe()}")
            try:
                status, _ = self._get(self.port, "/healthz", timeout=min(left, 2.0))
            except OSError as exc:  # not listening yet (refused), or a node's answer cut short
                last = repr(exc)
            else:
                if status == 200:
                    return
                last = f"status {status}"  # 503: no node is up (yet)
            self.proc.wait_exit(0.05)  # the retry's pace; returns at once if haproxy exits

    def _get(self, port: int, path: str, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's statistics row of each node now (its CSV columns: ``status``, ``check_status``
        (``L7OK``, ``L4CON``: refused, ``L7STS``: a status other than 200), ``scur``: open
        connections, ...), by server name."""
        status, body = self._get(self.stats_port, "/stats;csv", timeout=5.0)
        if status != 200:
            raise HaproxyError(f"the stats page answered {status}")
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        return {row["svname"]: row for row in rows
                if row["pxname"] == "nodes" and row["svname"] in self.backends}

    def server_states(self) -> dict[str, str]:
        """How HAProxy sees each node now: name → ``UP``, ``DOWN``, ``UP 1/2`` (falling), ..."""
        return {name: row["status"] for name, row in self.stats().items()}

    def wait_state(self, server: str, state: str, timeout: float = 10.0) -> float:
        """Block until HAProxy reports ``server`` in ``state`` (``"DOWN"``); the seconds it took."""
        start = time.monotonic()
        while (seen := self.server_states().get(server)) != state:
            if time.monotonic() - start > timeout:
                raise HaproxyError(f"{server} still {seen!r}, not {state!r}, after {timeout:g} s; "
                                   f"log tail:\n{self.log()[-1500:]}")
            assert self.proc is not None
            if self.proc.wait_exit(0.05) is not None:
                raise HaproxyError(f"haproxy exited: {self.describe()}")
        return time.monotonic() - start

    def requests(self) -> list[dict[str, str]]:
        """The request log so far, oldest first: ``server``, ``status``, ``flags``, ``retries``
        (``"+1"``: one retry, on another node), ``request`` (``"GET /v1/events?... HTTP/1.1"``)."""
        return [m.groupdict() for m in map(_REQUEST_LOG.search, self.log().splitlines()) if m]

    def log(self) -> str:
        """What haproxy wrote: start-up warnings, health-check transitions, request log lines."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self, tail: int = 1500) -> str:
        """Exit status and the end of its log: for an error message."""
        if self.proc is None:
            return "haproxy: not started"
        return self.proc.describe(tail)  # its stderr is the log

    def stop(self) -> int | None:
        """End haproxy (SIGTERM: a hard stop, every connection closed; SIGKILL after 5 s)."""
        if self.proc is None:
            return None
        code = self.proc.stop()
        self.proc = None
        return code

    def __enter__(self) -> Haproxy:
        return self.start() if self.proc is None else self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

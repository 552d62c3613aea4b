"""The ICE servers a signed-in client is handed: STUN, and TURN with credentials that expire.

TURN credentials follow the TURN REST scheme that coturn implements with
``use-auth-secret`` / ``static-auth-secret``: the username is
``EXPIRY:USER`` (EXPIRY in Unix seconds) and the password is
base64(HMAC-SHA1(secret, username)).  coturn checks both without asking us,
so the shared secret never leaves the two servers; a client only ever holds
a credential scoped to its user that stops working at EXPIRY.

Static credentials (``--ice-username/--ice-credential``, for a third-party
TURN service that issues its own) are handed out as they are, with no expiry.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

from callctl.signaling import protocol as p

#: Longest lifetime a TURN credential may be given (the issue is ``--turn-ttl``).
MAX_TURN_TTL_S = 24 * 3600
MIN_TURN_TTL_S = 60
#: A TURN secret file holds one line: a few dozen bytes, never a megabyte.
MAX_SECRET_BYTES = 4096

_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


class IceConfigError(ValueError):
    """A bad ICE server URL, TTL or TURN secret file: one line for the user."""


def check_url(url: str, *, kind: str | None = None) -> str:
    """``url`` if it is a STUN/TURN URL aiortc and browsers understand (and of ``kind``), else raise."""
    match = _URL.fullmatch(url)
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        raise IceConfigError(
            f"bad ICE server URL {url!r}: expected stun:HOST[:PORT] or turn:HOST[:PORT][?transport=udp|tcp]"
        )
    scheme = match["scheme"]
    if kind is not None and not scheme.startswith(kind):
        raise IceConfigError(f"{url!r} is not a {kind}: URL")
    if scheme.startswith("stun") and match["transport"]:
        raise IceConfigError(f"bad ICE server URL {url!r}: a stun: URL has no transport")
    return url


def static_servers(urls: list[str], username: str | None, credential: str | None) -> list[p.IceServer]:
    """``--ice-server`` URLs, checked, with the static TURN credentials on the TURN ones."""
    if (username is None) != (credential is None):
        raise IceConfigError("--ice-username and --ice-credential go together")
    return [
        p.IceServer(urls=[check_url(u)], username=username if u.startswith("turn") else None,
                    credential=credential if u.startswith("turn") else None)
        for u in urls
    ]


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``1d`` as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise IceConfigError(f"bad duration {text!r}: expected e.g. 3600, 90s, 30m, 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def read_secret(path: Path) -> bytes:
    """The TURN shared secret: the file's first line, stripped (coturn's static-auth-secret)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise IceConfigError(f"cannot read --turn-secret-file {path}: {exc.strerror}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise IceConfigError(f"--turn-secret-file {path} is larger than {MAX_SECRET_BYTES} bytes")
    secret = raw.split(b"\n", 1)[0].strip()
    if len(secret) < 16:
        raise IceConfigError(f"--turn-secret-file {path}: the secret must be at least 16 characters")
    return secret


def turn_credentials(secret: bytes, user: str, expires_at: int) -> tuple[str, str]:
    """(username, password) in the TURN REST scheme, valid until ``expires_at``."""
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(frozen=True)
class IcePolicy:
    """What ``callctl server`` was told about STUN and TURN."""

    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    #: The TURN REST shared secret; None with static credentials (or no TURN).
    turn_secret: bytes | None = field(default=None, repr=False)
    turn_ttl_s: float = 3600.0
    #: Where the secret came from (SIGHUP reads it again).
    turn_secret_file: Path | None = None
    #: Servers handed out as they are (``--ice-server``), credentials included.
    static: tuple[p.IceServer, ...] = ()

    def reloaded(self) -> IcePolicy:
        """This policy with the TURN secret read again from its file."""
        assert self.turn_secret_file is not None
        return dataclasses.replace(self, turn_secret=read_secret(self.turn_secret_file))

    @property
    def configured(self) -> bool:
        return bool(self.stun or self.turn or self.static)

    def shared(self) -> list[p.IceServer]:
        """The servers that carry no per-user credential (a call's record shows these)."""
        servers = list(self.static)
        if self.stun:
            servers.append(p.IceServer(urls=list(self.stun)))
        return servers

    def for_user(self, user: str, now: float) -> tuple[list[p.IceServer], float | None]:
        """The servers for ``user`` and when their credentials expire (None: never)."""
        servers = self.shared()
        expires: float | None = None
        if self.turn and self.turn_secret is not None:
            expires = int(now + self.turn_ttl_s)
            username, password = turn_credentials(self.turn_secret, user, int(expires))
            servers.append(p.IceServer(urls=list(self.turn), username=username, credential=password))
        return servers, expires

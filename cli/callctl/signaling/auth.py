"""Access tokens: JWT HS256 signed with the server's secret.

Claims: ``sub`` (user), ``svc`` (service), ``iat``, ``exp``.  The algorithm is
pinned to HS256 (so ``alg: none`` and key-confusion tricks are refused) and a
small clock skew is allowed.  The secret lives in a 0600 file, generated on
first use.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from callctl.signaling.protocol import ID_PATTERN

ALGORITHM = "HS256"
CLOCK_SKEW_S = 30
DEFAULT_SERVICE = "default"
_ident = re.compile(ID_PATTERN)


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or has bad claims."""


class SecretError(Exception):
    """The secret file cannot be read or created."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    service: str
    expires_at: float

    @property
    def key(self) -> str:
        """The user's key inside the server: users are namespaced by service."""
        return f"{self.service}/{self.user}"


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret at ``path``; create it (0600, atomically) when missing."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        return _create_secret(path)
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(data) < 32:
        raise SecretError(f"secret file {path} holds fewer than 32 bytes")
    return data


def _create_secret(path: Path) -> bytes:
    secret = secrets.token_hex(32).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return load_or_create_secret(path)
    except OSError as exc:
        raise SecretError(f"cannot create secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret


def read_secret(path: Path) -> bytes:
    """Read an existing secret; never create one (for clients minting tokens)."""
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(data) < 32:
        raise SecretError(f"secret file {path} holds fewer than 32 bytes")
    return data


def issue_token(
    secret: bytes, user: str, service: str = DEFAULT_SERVICE, ttl_s: float = 86400
) -> str:
    if not _ident.match(user):
        raise TokenError(f"bad user id {user!r}: letters, digits and . _ @ + - (max 64)")
    if not _ident.match(service):
        raise TokenError(f"bad service id {service!r}: letters, digits and . _ @ + - (max 64)")
    if ttl_s <= 0:
        raise TokenError("token lifetime must be positive")
    now = int(time.time())
    claims = {"sub": user, "svc": service, "iat": now, "exp": now + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: bytes, token: str) -> Identity:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=CLOCK_SKEW_S,
            options={"require": ["sub", "svc", "iat", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    user, service = claims["sub"], claims["svc"]
    if not (isinstance(user, str) and _ident.match(user)):
        raise TokenError("invalid token: bad sub claim")
    if not (isinstance(service, str) and _ident.match(service)):
        raise TokenError("invalid token: bad svc claim")
    return Identity(user=user, service=service, expires_at=float(claims["exp"]))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"bad duration {text!r} (examples: 90s, 30m, 24h, 7d)")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if value <= 0:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return value

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

from callctl.signaling.protocol import valid_id

ALGORITHM = "HS256"
CLOCK_SKEW_S = 30
DEFAULT_SERVICE = "default"


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


#: A secret file is a few dozen bytes; anything over this is not one (or /dev/zero).
MAX_SECRET_BYTES = 4096


def _read_secret_file(path: Path) -> bytes:
    if path.exists() and not path.is_file():
        raise SecretError(f"secret file {path} is not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_SECRET_BYTES + 1).strip()
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    if len(data) < 32:
        raise SecretError(f"secret file {path} holds fewer than 32 bytes")
    return data


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret at ``path``; create it (0600, atomically) when missing."""
    try:
        return _read_secret_file(path)
    except FileNotFoundError:
        return _create_secret(path)
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None


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
        return _read_secret_file(path)
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None


#: The longest lifetime a token may have (and the furthest ``exp`` a server accepts).
MAX_TTL_S = 10 * 365 * 86400
#: A token longer than this is refused before it is parsed.
MAX_TOKEN_BYTES = 4096


def issue_token(
    secret: bytes, user: str, service: str = DEFAULT_SERVICE, ttl_s: float = 86400
) -> str:
    if not valid_id(user):
        raise TokenError(f"bad user id {user!r}: letters, digits and . _ @ + - (max 64)")
    if not valid_id(service):
        raise TokenError(f"bad service id {service!r}: letters, digits and . _ @ + - (max 64)")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise TokenError(f"token lifetime must be positive and at most {MAX_TTL_S // 86400} days")
    now = int(time.time())
    claims = {"sub": user, "svc": service, "iat": now, "exp": now + int(ttl_s)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _timestamp(claims: dict[str, object], name: str) -> int:
    value = claims.get(name)
    # an int, not a bool, a float, a string or a number no clock will reach
    if type(value) is not int or not 0 <= value <= 2**40:
        raise TokenError(f"invalid token: bad {name} claim")
    return value


def verify_token(secret: bytes, token: str) -> Identity:
    """The identity a token proves, or TokenError (never anything else, whatever the token)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("invalid token: too long")
    try:
        # the signature here; the claims below, by our own strict rules
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                     "verify_aud": False, "verify_iss": False})
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise TokenError("invalid token: malformed") from None
    if not isinstance(claims, dict):
        raise TokenError("invalid token: claims are not an object")
    iat, exp = _timestamp(claims, "iat"), _timestamp(claims, "exp")
    now = time.time()
    if exp + CLOCK_SKEW_S < now:
        raise TokenError("token expired")
    if iat > now + CLOCK_SKEW_S:
        raise TokenError("invalid token: issued in the future")
    if "nbf" in claims and _timestamp(claims, "nbf") > now + CLOCK_SKEW_S:
        raise TokenError("invalid token: not valid yet (nbf)")
    user, service = claims.get("sub"), claims.get("svc")
    if not valid_id(user):
        raise TokenError("invalid token: bad sub claim")
    if not valid_id(service):
        raise TokenError("invalid token: bad svc claim")
    assert isinstance(user, str) and isinstance(service, str)
    return Identity(user=user, service=service, expires_at=float(exp))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` → seconds."""
    m = re.fullmatch(r"\s*([0-9]{1,12}(?:\.[0-9]{1,6})?)\s*([smhd]?)\s*", text, re.ASCII)
    if not m:
        raise ValueError(f"bad duration {text[:40]!r} (examples: 90s, 30m, 24h, 7d)")
    value = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 0 < value <= MAX_TTL_S:
        raise ValueError(f"bad duration {text[:40]!r}: must be positive and at most {MAX_TTL_S // 86400} days")
    return value

"""Settings shared by every command: flag > environment > config file > default."""

from __future__ import annotations

import json
import os
from pathlib import Path

from callctl.paths import config_dir

TYPE_CHECKING = False  # typing itself is not imported: these modules run before anything else
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8765"
SYSTEM_CONFIG = Path("/etc/callctl/config.toml")
#: A config file is a few lines; anything bigger is not one (or /dev/zero).
MAX_CONFIG_BYTES = 256 * 1024


class ConfigError(Exception):
    pass


class Settings:
    """The global settings of one command line (a plain class: dataclasses cost the quick path ~5 ms)."""

    def __init__(
        self,
        *,
        server: str = DEFAULT_SERVER,
        user: str | None = None,
        service: str = "default",
        token: str | None = None,
        device: str | None = None,
        ca_file: Path | None = None,
        token_file: Path | None = None,
        log_level: str | None = None,
        json: bool = False,
        config_file: Path | None = None,
        extra: dict[str, Any] | None = None,
        sources: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.user = user
        self.service = service
        self.token = token
        #: This device's id (``--device`` before or after the command); None: the host name.
        self.device = device
        #: Certificates to trust for an https server (``--ca-file``), e.g. a self-signed one's.
        self.ca_file = ca_file
        #: A file holding the access token, read again whenever a token is needed
        #: (``--token-file``): tooling that rotates it needs no restart of a ``listen``.
        self.token_file = token_file
        #: callctl's own log lines on stderr at this level (``--log-level``, ``CALLCTL_LOG``).
        self.log_level = log_level
        self.json = json
        self.config_file = config_file
        #: Everything else the file said, for commands that read their own keys.
        self.extra: dict[str, Any] = {} if extra is None else extra
        #: Where each global setting came from: "command line", "environment", the file, "default".
        self.sources: dict[str, str] = {} if sources is None else sources

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "token" and v else v) for k, v in vars(self).items()}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def default_config_file() -> Path | None:
    for path in (config_dir() / "config.toml", SYSTEM_CONFIG):
        if path.is_file():
            return path
    return None


def load_file(path: Path | None, explicit: bool) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        if not path.is_file():
            if not path.exists() and not explicit:
                return {}
            what = "does not exist" if not path.exists() else "is not a regular file"
            raise ConfigError(f"config file {path} {what}")
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    import tomllib

    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (UTF-8)") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def check_server_url(url: str) -> None:
    """http(s)://HOST[:PORT][/PREFIX], or ConfigError saying what is wrong."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"bad server URL {url!r}: expected http://HOST:PORT or https://HOST") from None
    if any(ord(ch) <= 32 or ord(ch) == 127 for ch in url) or parts.username or parts.password:
        raise ConfigError(f"bad server URL {url!r}: no spaces, control characters or user:password@")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"bad server URL {url!r}: expected http://HOST:PORT or https://HOST")
    if port == 0:
        raise ConfigError(f"bad server URL {url!r}: port 0")


def check_ca_file(path: Path) -> None:
    """A readable PEM file of certificates, or ConfigError saying what is wrong."""
    import ssl

    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(f"cannot use --ca-file {path}: {why}") from None


#: The global settings a config file may hold at its top level (docs/CONFIG.md).
STRING_KEYS = ("server", "user", "service", "token", "token_file", "device", "ca_file", "log_level")
TOP_LEVEL_KEYS = frozenset({*STRING_KEYS, "json", "command"})
LOG_LEVELS = ("debug", "info", "warning", "error", "trace")


def check_log_level(level: str) -> None:
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"bad log level {level!r}: one of {', '.join(LOG_LEVELS)}")


def resolve(
    *,
    server: str | None,
    user: str | None,
    service: str | None,
    token: str | None,
    json: bool,
    config: Path | None,
    device: str | None = None,
    ca_file: Path | None = None,
    token_file: Path | None = None,
    log_level: str | None = None,
    given: dict[str, str] | None = None,
    check_ca: bool = True,
) -> Settings:
    """Flags and env vars arrive merged by Typer; fill the gaps from the file.

    ``given``: for the settings that came from the command line or the
    environment, which of the two (for ``config check``).  ``check_ca``: load
    the ``ca_file`` to check it (a process that will not talk to the server
    itself skips that: it costs the ssl module).
    """
    explicit = config is not None
    path = config if explicit else default_config_file()
    data = load_file(path, explicit)
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} "
                          f"(known: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    for key in STRING_KEYS:
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"config file {path}: {key!r} must be a string")
    if "json" in data and not isinstance(data["json"], bool):
        raise ConfigError(f"config file {path}: 'json' must be true or false, not {data['json']!r}")
    sources = dict(given or {})

    def pick(key: str, value: Any, default: Any = None) -> Any:
        if value not in (None, False):
            sources.setdefault(key, "command line")
            return value
        if data.get(key) not in (None, ""):
            sources[key] = f"config file {path}"
            return data[key]
        sources[key] = "default"
        return default

    url = pick("server", server, DEFAULT_SERVER)
    check_server_url(url)
    trusted = pick("ca_file", ca_file)
    if trusted is not None:
        trusted = Path(trusted)
        if check_ca:
            check_ca_file(trusted)
    level = pick("log_level", log_level)
    if level is not None:
        check_log_level(level)
    token_path = pick("token_file", token_file)
    the_token = pick("token", token)
    if the_token and token_path:
        raise ConfigError("give the access token once: --token or --token-file, not both")
    return Settings(
        server=url,
        user=pick("user", user),
        service=pick("service", service, "default"),
        token=the_token,
        token_file=Path(token_path) if token_path else None,
        device=pick("device", device),
        ca_file=trusted,
        log_level=level.lower() if level else None,
        json=pick("json", json, False),
        config_file=path,
        extra={k: v for k, v in data.items() if k not in STRING_KEYS and k != "json"},
        sources=sources,
    )


#: A token file is one line; anything bigger is not one.
MAX_TOKEN_FILE = 16 * 1024


class TokenFile:
    """The access token in a file, read again whenever it changed (``--token-file``).

    An operator's tooling rotates the file; a running ``listen`` takes the new
    token at its next request or reconnect.  A file that cannot be read for a
    moment (being replaced) keeps the last good token.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, int, int] | None = None
        self._token = ""

    def read(self) -> str:
        """The token now in the file, or OSError/ValueError saying why not."""
        st = os.stat(self.path)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._key:
            with self.path.open("rb") as f:
                raw = f.read(MAX_TOKEN_FILE + 1)
            token = raw.decode("utf-8", "replace").strip()
            if not token or len(raw) > MAX_TOKEN_FILE or any(ch.isspace() for ch in token):
                raise ValueError("it does not hold one token")
            self._key, self._token = key, token
        return self._token

    def __call__(self) -> str:
        import logging

        try:
            return self.read()
        except (OSError, ValueError) as exc:
            logging.getLogger("callctl").warning("token file %s: %s; keeping the last token", self.path,
                                                 getattr(exc, "strerror", None) or exc)
            return self._token


def own_user(settings: Settings) -> str | None:
    """Who we are, as far as it is known before going online (--as, or the token's subject).

    The token is not checked here (the server does that): this only reads its
    ``sub`` claim, with the standard library, for the short processes that look
    for a running listen of this identity before anything else is imported.
    """
    if settings.user:
        return settings.user
    token = settings.token
    if settings.token_file is not None:
        try:
            token = TokenFile(settings.token_file).read()
        except (OSError, ValueError):
            return None
    if not token:
        return None
    import base64
    import binascii

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None

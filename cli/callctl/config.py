"""Settings shared by every command: flag > environment > config file > default."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callctl.paths import config_dir

DEFAULT_SERVER = "http://127.0.0.1:8765"
SYSTEM_CONFIG = Path("/etc/callctl/config.toml")
#: A config file is a few lines; anything bigger is not one (or /dev/zero).
MAX_CONFIG_BYTES = 256 * 1024


class ConfigError(Exception):
    pass


@dataclass
class Settings:
    server: str = DEFAULT_SERVER
    user: str | None = None
    service: str = "default"
    token: str | None = None
    #: This device's id (``--device`` before or after the command); None: the host name.
    device: str | None = None
    #: Certificates to trust for an https server (``--ca-file``), e.g. a self-signed one's.
    ca_file: Path | None = None
    #: A file holding the access token, read again whenever a token is needed
    #: (``--token-file``): tooling that rotates it needs no restart of a ``listen``.
    token_file: Path | None = None
    #: callctl's own log lines on stderr at this level (``--log-level``, ``CALLCTL_LOG``).
    log_level: str | None = None
    json: bool = False
    config_file: Path | None = None
    #: Everything else the file said, for commands that read their own keys.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where each global setting came from: "command line", "environment", the file, "default".
    sources: dict[str, str] = field(default_factory=dict)


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
) -> Settings:
    """Flags and env vars arrive merged by Typer; fill the gaps from the file.

    ``given``: for the settings that came from the command line or the
    environment, which of the two (for ``config check``).
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

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
    json: bool = False
    config_file: Path | None = None
    #: Everything else the file said, for commands that read their own keys.
    extra: dict[str, Any] = field(default_factory=dict)


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
) -> Settings:
    """Flags and env vars arrive merged by Typer; fill the gaps from the file."""
    explicit = config is not None
    path = config if explicit else default_config_file()
    data = load_file(path, explicit)
    for key in ("server", "user", "service", "token", "device", "ca_file"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"config file {path}: {key!r} must be a string")
    if "json" in data and not isinstance(data["json"], bool):
        raise ConfigError(f"config file {path}: 'json' must be true or false, not {data['json']!r}")
    url = server or data.get("server") or DEFAULT_SERVER
    check_server_url(url)
    trusted = ca_file or (Path(data["ca_file"]) if data.get("ca_file") else None)
    if trusted is not None:
        check_ca_file(trusted)
    return Settings(
        server=url,
        user=user or data.get("user"),
        service=service or data.get("service") or "default",
        token=token or data.get("token"),
        device=device or data.get("device"),
        ca_file=ca_file or (Path(data["ca_file"]) if data.get("ca_file") else None),
        json=json or data.get("json", False),
        config_file=path,
        extra={k: v for k, v in data.items() if k not in {"server", "user", "service", "token", "device", "ca_file"}},
    )

"""Settings shared by every command: flag > environment > config file > default."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callctl.paths import config_dir

DEFAULT_SERVER = "http://127.0.0.1:8765"
SYSTEM_CONFIG = Path("/etc/callctl/config.toml")


class ConfigError(Exception):
    pass


@dataclass
class Settings:
    server: str = DEFAULT_SERVER
    user: str | None = None
    service: str = "default"
    token: str | None = None
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
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def resolve(
    *,
    server: str | None,
    user: str | None,
    service: str | None,
    token: str | None,
    json: bool,
    config: Path | None,
) -> Settings:
    """Flags and env vars arrive merged by Typer; fill the gaps from the file."""
    explicit = config is not None
    path = config if explicit else default_config_file()
    data = load_file(path, explicit)
    for key in ("server", "user", "service", "token"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"config file {path}: {key!r} must be a string")
    return Settings(
        server=server or data.get("server") or DEFAULT_SERVER,
        user=user or data.get("user"),
        service=service or data.get("service") or "default",
        token=token or data.get("token"),
        json=json or bool(data.get("json", False)),
        config_file=path,
        extra={k: v for k, v in data.items() if k not in {"server", "user", "service", "token"}},
    )

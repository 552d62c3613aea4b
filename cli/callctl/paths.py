"""Where callctl keeps its files: per-user state, config and runtime dirs (XDG)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "callctl"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "callctl"


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.access(base, os.W_OK):
        return Path(base) / "callctl"
    return Path(f"/tmp/callctl-{os.getuid()}")


def default_secret_file() -> Path:
    return state_dir() / "server-secret"

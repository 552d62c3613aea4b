"""What a bench report says about where it ran: CPUs, load, kernel, Python, packages, revision."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg says them ("?" elsewhere)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def revision(repo: Path) -> str | None:
    """The checkout's short commit, marked when cli/ has changes not committed."""
    git = ["git", "-C", str(repo)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "cli"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" (cli/ modified)" if changed else "") if head else None
    return None


def describe(repo: Path | None = None, packages: Iterable[str] = ()) -> dict[str, Any]:
    """The machine, the load now, the checkout's revision and the installed ``packages``' versions."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "cpu_model": cpu_model(), "kernel": platform.release(),
        "python": platform.python_version(), "loadavg": loadavg(),
    }
    if repo is not None:
        info["revision"] = revision(repo)
    for name in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[name] = importlib.metadata.version(name)
    return info

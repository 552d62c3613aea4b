"""One way to report a fatal problem: one line on stderr and a documented exit code."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer


def fail(message: str, code: int) -> NoReturn:
    print(f"callctl: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(int(code))

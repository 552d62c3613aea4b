"""The frame of a bench script: its log line, its exit status, signals and a hard time limit.

Every bench exits with one of the statuses below.  After ``stop_on_signals``
SIGTERM and SIGHUP stop a bench the way Ctrl-C does (``KeyboardInterrupt``),
and a hard limit raises ``TimeoutError`` from SIGALRM, so that one ``try``
in the bench's ``main`` reaches its cleanup whatever happens; ``cleaning_up``
then keeps a second Ctrl-C from cutting that cleanup short.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

MET = 0  # every target met
MISSED = 1  # a target missed
CANNOT_RUN = 2  # the bench could not run (error, hard limit)
INTERRUPTED = 130  # Ctrl-C, SIGTERM, SIGHUP


class BenchError(Exception):
    """The bench cannot go on."""


def log(msg: str) -> None:
    """One line on stderr, named after the script and timed (stdout is for the report)."""
    name = Path(sys.argv[0]).stem.replace("_", "-")
    print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stop_on_signals(timeout: float | None = None) -> None:
    """SIGINT, SIGTERM, SIGHUP raise KeyboardInterrupt; past ``timeout`` s, TimeoutError."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def hard_limit(signum: int, frame: object) -> None:
        raise TimeoutError(f"hard limit of {timeout:g} s reached")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: it may come ignored
        signal.signal(sig, interrupt)
    if timeout is not None:
        signal.signal(signal.SIGALRM, hard_limit)
        signal.alarm(max(1, int(timeout)))


def cleaning_up() -> None:
    """No more hard limit, and Ctrl-C and SIGTERM are ignored: the cleanup runs to its end."""
    signal.alarm(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def keep_or_remove(tmp: Path, keep: bool) -> None:
    """The bench's temp dir: kept (and said where) for a look at its logs, or removed."""
    if keep:
        log(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def py_spy() -> str | None:
    """The py-spy program: $PY_SPY, on PATH, or beside this interpreter (a venv's bin/)."""
    beside = Path(sys.executable).parent / "py-spy"
    return (os.environ.get("PY_SPY") or shutil.which("py-spy")
            or (str(beside) if os.access(beside, os.X_OK) else None))

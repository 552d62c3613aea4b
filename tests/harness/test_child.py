"""A child's NDJSON events, waited for from blocking code and from a coroutine."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from callctl.harness.child import Child, ChildError

SCRIPT = """
import json, sys, time
print("a plain line", flush=True)
for name in ("registered", "call.incoming", "call.ended"):
    print(json.dumps({"v": 1, "ts": time.time(), "event": name}), flush=True)
    time.sleep(0.05)
print("to stderr", file=sys.stderr, flush=True)
sys.exit(3)
"""


def test_events_lines_stderr_and_exit_status() -> None:
    child = Child([sys.executable, "-c", SCRIPT], name="script")
    try:
        assert child.wait_event("call.incoming", timeout=10)["event"] == "call.incoming"
        assert child.wait_exit(10) == 3
        assert child.names() == ["registered", "call.incoming", "call.ended"]
        assert child.lines == ["a plain line"]
        assert child.stderr == "to stderr\n"
    finally:
        child.stop()


def test_an_event_that_cannot_come_fails_at_once() -> None:
    child = Child([sys.executable, "-c", SCRIPT])
    try:
        with pytest.raises(ChildError, match="call.ended .* before media.flowing"):
            child.wait_event("media.flowing", timeout=10, fail_on="call.ended")
        with pytest.raises(ChildError, match="ended without media.flowing"):
            child.wait_event("media.flowing", timeout=10)
    finally:
        child.stop()


async def test_a_coroutine_awaits_events_while_its_loop_runs() -> None:
    child = Child([sys.executable, "-c", SCRIPT])
    try:
        assert (await child.await_event("call.ended", timeout=10))["event"] == "call.ended"
        assert await child.await_exit(10) == 3
    finally:
        child.stop()


def test_stop_ends_the_child_and_what_it_started() -> None:
    grandchild = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); time.sleep(60)"
    child = Child([sys.executable, "-c", grandchild])
    try:
        assert child.wait_exit(0.5) is None
        deadline = time.monotonic() + 10
        while not child.lines and time.monotonic() < deadline:
            time.sleep(0.05)
        sleeper = int(child.lines[0])
    finally:
        assert child.stop(grace=2) == -signal.SIGTERM
    time.sleep(0.2)
    assert not running(sleeper)  # the whole group got the signal


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its reaper just has not waited yet

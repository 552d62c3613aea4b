from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from callctl.harness.redis import RedisMissing, RedisServer

from tests.cli import Callctl
from tests.helpers import Events, ServerProcess, running_server


@pytest.fixture(autouse=True)
def _share_the_machine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """On two workers, a test marked ``alone`` runs while the other worker waits.

    Every test holds a shared lock while it runs; an ``alone`` test takes it
    exclusively, so it starts once the other worker's current test has ended.
    A turnstile in front keeps the waiting ``alone`` test from being overtaken
    by the other worker's next tests.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:  # one process: nothing else runs
        yield
        return
    folder = tmp_path_factory.getbasetemp().parent  # shared by the workers of this run
    alone = request.node.get_closest_marker("alone") is not None
    with open(folder / f"turnstile-{run}", "a") as turnstile, open(folder / f"share-{run}", "a") as share:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(share, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(share, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh signaling server process (short ring timeout, fast heartbeats)."""
    yield from running_server(tmp_path, ["--ring-timeout", "3", "--heartbeat", "1", "--offline-grace", "2"])


@pytest.fixture
async def events() -> AsyncIterator[list[Events]]:
    """Collects Events helpers; closes them all at the end of the test."""
    opened: list[Events] = []
    yield opened
    for e in opened:
        await e.close()


@pytest.fixture
async def cli(server: ServerProcess, tmp_path: Path) -> AsyncIterator[Callctl]:
    """Runs callctl processes against ``server``; kills whatever is left at the end."""
    runner = Callctl(server, tmp_path)
    yield runner
    await runner.close()
    for c in runner.running:
        assert "Traceback" not in c.stderr, c.stderr


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session (each test keeps to its own key prefix)."""
    try:
        redis = RedisServer(tmp_path_factory.mktemp("redis"))
    except RedisMissing as exc:
        pytest.skip(f"needs redis-server: {exc}")
    with redis:
        yield redis

"""Background tasks that somebody keeps: a reference until they finish, failures logged.

``asyncio.ensure_future`` alone leaves a task that may be garbage-collected
mid-flight and whose exception nobody sees; every task the engine starts goes
through a ``Tasks``, and is cancelled with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("callctl.engine")


class Tasks:
    """``expected`` failures are logged in one line; anything else with its traceback (a bug)."""

    def __init__(self, on_error: Callable[[BaseException], None] | None = None,
                 expected: tuple[type[BaseException], ...] = ()) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error
        self._expected = expected

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            if isinstance(error, self._expected):
                log.info("task %s failed: %s", task.get_name(), error)
            else:
                log.error("task %s failed: %r", task.get_name(), error, exc_info=error)
            if self._on_error is not None:
                self._on_error(error)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

"""A Redis client that sends the commands of concurrent callers in one pipeline.

When thousands of event streams open at once (the devices of a node that died
come back on the others), each opening is one script call.  Sent one by one,
each takes a connection from the pool, writes, reads and gives it back; most of
a node's time then goes to the client, not to Redis.  Here every command issued
during one turn of the event loop waits for the end of that turn and goes out
with the others as one non-transactional pipeline: one write, one read, one
connection, in the order they were issued.  A caller still gets its own reply or
its own error (a ``NoScriptError`` too, so a script reloads as usual).  Alone, a
command goes out as before.

Nothing changes for atomicity: each script still runs atomically in Redis, and
commands were never ordered across callers anyway.  A connection error fails
every command of its batch (as it would have failed each of them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

#: The most commands one pipeline carries; a bigger turn is sent as several, one after the other.
MAX_BATCH = 256

_Pending = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class BatchingRedis(aioredis.Redis):  # type: ignore[misc]  # redis-py's Redis is untyped here
    """``redis.asyncio.Redis`` whose commands are batched per event-loop turn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_Pending] = []
        self._sending: set[asyncio.Task[None]] = set()
        #: Batches sent, and the commands in them (for /metrics and the benchmark).
        self.batches = 0
        self.batched_commands = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.connection is not None:  # a single-connection client: nothing to share
            return await super().execute_command(*args, **options)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((args, options, future))
        return await future

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send_all(queue))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_all(self, queue: list[_Pending]) -> None:
        # one pipeline after the other: Redis runs them in the order they were issued
        try:
            for i in range(0, len(queue), MAX_BATCH):
                await self._send(queue[i:i + MAX_BATCH])
        except BaseException:  # cancelled (closing): nobody is left waiting for ever
            for _, _, future in queue:
                if not future.done():
                    future.set_exception(aioredis.ConnectionError("redis client closed"))
            raise

    async def _send(self, batch: list[_Pending]) -> None:
        self.batches += 1
        self.batched_commands += len(batch)
        try:
            if len(batch) == 1:
                args, options, future = batch[0]
                replies = [await super().execute_command(*args, **options)]
            else:
                async with self.pipeline(transaction=False) as pipe:
                    for args, options, _ in batch:
                        pipe.pipeline_execute_command(*args, **options)
                    replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every command of the batch did
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), reply in zip(batch, replies):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Let the batches on their way finish (their callers are waiting), then close."""
        if self._queue:
            self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await super().aclose(close_connection_pool)

"""The batching Redis client, on a real redis-server: concurrent commands share pipelines and
each caller still gets exactly its own reply or error."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from callctl.harness.redis import RedisServer
from callctl.server.redis_batch import MAX_BATCH, BatchingRedis

COUNT = "redis.call('incr', KEYS[1]); return redis.call('get', KEYS[1])"


def client(url: str) -> BatchingRedis:
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=8, timeout=5,
                                                    socket_connect_timeout=2.0)
    return BatchingRedis(connection_pool=pool)


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[BatchingRedis]:
    c = client(redis_server.url)
    yield c
    await c.aclose()


async def test_concurrent_commands_go_out_together_in_the_order_issued(r: BatchingRedis) -> None:
    key = f"b{secrets.token_hex(4)}"
    n = MAX_BATCH + 44
    lengths = await asyncio.gather(*(r.rpush(key, i) for i in range(n)))
    # one turn: two pipelines (256 + 44), not 300 round trips
    assert (r.batches, r.batched_commands) == (2, n)
    assert sorted(lengths) == list(range(1, n + 1))
    assert [int(x) for x in await r.lrange(key, 0, -1)] == list(range(n))
    await r.delete(key)


async def test_each_caller_gets_its_own_reply_and_its_own_error(r: BatchingRedis) -> None:
    key, wrong = f"b{secrets.token_hex(4)}", f"b{secrets.token_hex(4)}"
    await r.set(wrong, "a string")
    script = r.register_script(COUNT)
    calls = [script(keys=[f"{key}:{i % 7}"]) for i in range(140)]
    calls.insert(70, r.lpush(wrong, "x"))  # WRONGTYPE in the middle of the batch
    results = await asyncio.gather(*calls, return_exceptions=True)
    error = results.pop(70)
    assert isinstance(error, ResponseError) and "WRONGTYPE" in str(error)
    assert all(isinstance(x, bytes) for x in results), results
    # every key was counted once per call made on it, whatever batch it was in
    assert [int(await r.get(f"{key}:{k}")) for k in range(7)] == [20] * 7
    await r.delete(wrong, *(f"{key}:{k}" for k in range(7)))


async def test_a_script_redis_forgot_is_loaded_again_inside_a_batch(r: BatchingRedis) -> None:
    key = f"b{secrets.token_hex(4)}"
    script = r.register_script(COUNT)
    assert await script(keys=[key]) == b"1"
    await r.script_flush()
    values = await asyncio.gather(*(script(keys=[key]) for _ in range(50)))
    assert sorted(int(v) for v in values) == list(range(2, 52))
    await r.delete(key)


async def test_a_cancelled_caller_leaves_the_others_their_replies(r: BatchingRedis) -> None:
    key = f"b{secrets.token_hex(4)}"
    tasks = [asyncio.ensure_future(r.incr(key)) for _ in range(40)]
    await asyncio.sleep(0)  # all issued, none sent yet
    tasks[5].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[5], asyncio.CancelledError)
    others = done[:5] + done[6:]
    assert len(set(others)) == 39 and set(others) <= set(range(1, 41)), others
    # the cancelled one was already queued: Redis ran it, as it would a command already sent
    assert int(await r.get(key)) == 40
    await r.delete(key)


async def test_redis_gone_fails_the_whole_batch_then_it_serves_again(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as redis:
        c = client(redis.url)
        try:
            assert await c.ping()
            redis.stop()
            results = await asyncio.wait_for(
                asyncio.gather(*(c.incr("k") for _ in range(30)), return_exceptions=True), 30)
            assert all(isinstance(x, (RedisConnectionError, OSError)) for x in results), results
            redis.start()
            assert sorted(await asyncio.gather(*(c.incr("k2") for _ in range(30)))) == list(range(1, 31))
        finally:
            await c.aclose()

"""Test helpers: an event collector, a cuttable TCP proxy; the server process is the harness's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from callctl.harness.server import ServerProcess
from callctl.signaling import protocol as p
from callctl.signaling.client import Disconnected, EventStream, Received, SignalingClient

__all__ = ["WAIT", "Events", "ServerProcess", "TcpProxy", "running_server"]

WAIT = 10.0  # the longest any single expected event may take before a test fails


def running_server(workdir: Path, args: list[str]) -> Iterator[ServerProcess]:
    """A server fixture's body: started, yielded, stopped, and its stderr free of tracebacks."""
    srv = ServerProcess(workdir, args).start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.stderr_text(), srv.stderr_text()


class Events:
    """Runs a client's event stream in the background and lets a test wait for items."""

    def __init__(self, client: SignalingClient) -> None:
        self.client = client
        self.stream: EventStream = client.events(max_backoff=0.5)
        self.items: list[Any] = []
        self._new = asyncio.Condition()
        self._task = asyncio.create_task(self._run())
        self.error: BaseException | None = None

    async def _run(self) -> None:
        try:
            async for item in self.stream:
                async with self._new:
                    self.items.append(item)
                    self._new.notify_all()
        except Exception as exc:  # surfaced to the test through wait()
            async with self._new:
                self.error = exc
                self._new.notify_all()

    def events(self, kind: type | None = None, call_id: str | None = None) -> list[p.Event]:
        out = []
        for item in self.items:
            if isinstance(item, Received) and (kind is None or isinstance(item.event, kind)):
                if call_id is None or getattr(item.event, "call_id", None) == call_id:
                    out.append(item.event)
        return out

    async def wait(self, kind: type, count: int = 1, call_id: str | None = None,
                   timeout: float = WAIT) -> Any:
        """Wait until ``count`` items of ``kind`` arrived; return the last of them."""

        def ready() -> bool:
            if kind is Disconnected:
                return sum(isinstance(i, Disconnected) for i in self.items) >= count
            return len(self.events(kind, call_id)) >= count or self.error is not None

        async with self._new:
            await asyncio.wait_for(self._new.wait_for(ready), timeout)
        if self.error is not None and kind is not Disconnected:
            raise self.error
        if kind is Disconnected:
            return [i for i in self.items if isinstance(i, Disconnected)][count - 1]
        return self.events(kind, call_id)[count - 1]

    async def wait_error(self, timeout: float = WAIT) -> BaseException:
        async with self._new:
            await asyncio.wait_for(self._new.wait_for(lambda: self.error is not None), timeout)
        assert self.error is not None
        return self.error

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.aclose()


class TcpProxy:
    """A loopback TCP relay whose open connections a test can cut at will."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.discard(writer)
        self._conns.discard(up_writer)

    def cut(self) -> None:
        """Drop every open connection (both directions) at once."""
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

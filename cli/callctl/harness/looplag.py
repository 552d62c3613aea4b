"""How late an event loop wakes a sleeper: what a bench's own load does to its timing.

A bench that generates load from one event loop (signaling streams, two peers
and a relay) delays its own timestamps when that loop is busy; the lag is
reported beside the figures so that a slow result can be told apart from a
busy generator.
"""

from __future__ import annotations

import asyncio
import time


class LoopLag:
    """Sleeps ``step`` s over and over until cancelled; ``lags_ms`` is how late each wake-up was."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.lags_ms: list[float] = []

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.step)
            self.lags_ms.append(max(0.0, (time.perf_counter() - t - self.step) * 1000))

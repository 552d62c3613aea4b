"""Keeping the cyclic garbage collector's passes short in a server holding thousands of streams.

Every open event stream is a few hundred Python objects that live as long as
the stream: a node with 7,500 of them holds over a million.  CPython's full
collection walks them all (0.3–0.5 s on a small machine, finding nothing to
free), and a node that takes in thousands of streams at once (those of a node
that died) runs one every few seconds: its event loop stalls, and so does
every ring it delivers.

So what exists once streams have come in is frozen (``gc.freeze``: left out
of every later pass), each time the number of open streams has grown by a
step.  Objects frozen are still freed when nothing refers to them; only a
reference cycle among them would wait.  To keep that bounded, every
``RESET_S`` everything is unfrozen, collected once, and frozen again: one
full pass every ten minutes instead of several a minute.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("callctl.server")

#: Freeze once the open streams have grown by this many since the last freeze...
GROWTH_STREAMS = 256
#: ... or by this fraction of them, whichever is more.
GROWTH_FRACTION = 0.1
#: How often the open streams are looked at.
CHECK_S = 1.0
#: Unfreeze, collect and freeze again this often (what a cycle among frozen objects can wait).
RESET_S = 600.0


def freeze() -> None:
    """Collect, then leave everything that survived out of later passes."""
    gc.collect()
    gc.freeze()


class Collector:
    """Freezes what open streams leave behind as they come in (``run`` as a task)."""

    def __init__(self, open_streams: Callable[[], int], reset_s: float = RESET_S) -> None:
        self._open_streams = open_streams
        self.reset_s = reset_s
        self.frozen_at_streams = 0
        #: Freezes done, and full collections done by a reset: for tests and the log.
        self.freezes = 0
        self.resets = 0

    def check(self, now: float, last_reset: float) -> bool:
        """One look; True if it reset (unfroze, collected and froze everything)."""
        streams = self._open_streams()
        if now - last_reset >= self.reset_s:
            gc.unfreeze()
            freeze()
            self.frozen_at_streams = streams
            self.resets += 1
            return True
        step = max(GROWTH_STREAMS, int(self.frozen_at_streams * GROWTH_FRACTION))
        if streams >= self.frozen_at_streams + step:
            gc.collect(1)  # the young generations only: quick, and most in-flight garbage goes
            gc.freeze()
            self.frozen_at_streams = streams
            self.freezes += 1
        elif streams < self.frozen_at_streams:
            self.frozen_at_streams = streams  # streams closed: grow from here
        return False

    async def run(self) -> None:
        last_reset = time.monotonic()
        while True:
            await asyncio.sleep(CHECK_S)
            now = time.monotonic()
            if self.check(now, last_reset):
                last_reset = now
                log.debug("collector: reset (%d streams open, %d objects frozen)",
                          self.frozen_at_streams, gc.get_freeze_count())

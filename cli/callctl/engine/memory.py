"""Give the memory of an ended call back to the system.

A call allocates a few MiB in C (codecs, SRTP and DTLS contexts, frame
buffers, the encoder thread's arena).  glibc keeps what was freed for later
use, so a kiosk's RSS creeps up call after call (~80 kB a call, in steps)
although nothing is kept.  ``malloc_trim(0)`` returns the free pages; after
it, the RSS of a listener that took a hundred calls is back at its first
call's.  Other C libraries (musl) have no such call and need none.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def can_give_back() -> bool:
    return _malloc_trim() is not None


async def give_back() -> None:
    """Collect the ended call's cycles, then hand the free heap back (off the event loop)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        await asyncio.to_thread(trim, 0)

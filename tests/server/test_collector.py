"""The server keeps the objects of its open streams out of the garbage collector's passes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from callctl.server.collector import GROWTH_STREAMS, Collector


class Node:
    """Stands for a stream's objects: in a reference cycle, as a stream's are."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.collect()


def tracked(obj: object) -> bool:
    """Still looked at by the collector's passes (not frozen)."""
    return any(o is obj for o in gc.get_objects())


def test_streams_coming_in_are_frozen_and_a_reset_frees_the_cycles_among_them() -> None:
    streams: list[Node] = []
    keeper = Collector(lambda: len(streams), reset_s=600.0)
    keeper.check(now=0.0, last_reset=0.0)
    assert keeper.freezes == 0
    streams += [Node() for _ in range(GROWTH_STREAMS - 1)]
    keeper.check(now=1.0, last_reset=0.0)
    assert keeper.freezes == 0 and tracked(streams[0])  # not yet a step's growth
    streams.append(Node())
    keeper.check(now=2.0, last_reset=0.0)
    assert keeper.freezes == 1 and keeper.frozen_at_streams == GROWTH_STREAMS
    assert not tracked(streams[0]) and not tracked(streams[-1])
    # a stream that closes: its cycle is frozen, so no pass frees it...
    gone = weakref.ref(streams.pop())
    gc.collect()
    assert gone() is not None
    # ... until the reset
    assert keeper.check(now=600.0, last_reset=0.0)
    assert gone() is None and keeper.resets == 1
    assert not tracked(streams[0])  # the open ones are frozen again
    # the step grows with the streams (a tenth of them), and closes move the mark down
    keeper.frozen_at_streams = 5000
    streams += [Node() for _ in range(5000 - len(streams) + 400)]
    keeper.check(now=601.0, last_reset=600.0)
    assert keeper.freezes == 1  # 400 more than 5,000: less than a tenth
    del streams[4000:]
    keeper.check(now=602.0, last_reset=600.0)
    assert keeper.frozen_at_streams == 4000

"""Checks on the call figures a page shows (``window.callctl.callStats()``)."""

from __future__ import annotations

from typing import Any

from callctl.media.stats import mos

# a clean loopback link loses nothing: only delay can lower its MOS, and below
# this it would take over 300 ms one way (a playout buffer gone wrong)
CLEAN_LINK_MOS = 3.6


def assert_mos_is_the_e_model_of(figures: dict[str, Any]) -> None:
    """The page's MOS is callctl's E-model of the page's own delay and loss, and a clean link's."""
    one_way = figures.get("rtt_ms", 0) / 2 + 20 + figures.get("playout_ms", 0)
    expected = mos(one_way, figures["loss_in_pct"])
    assert abs(figures["mos"] - expected) <= 0.011, (expected, figures)
    assert figures["mos"] >= CLEAN_LINK_MOS, figures

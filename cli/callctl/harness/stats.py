"""Percentiles and the summary a bench reports: one definition for every bench.

A percentile interpolates linearly between the two closest ranks (numpy's and
``statistics.median``'s rule), so p50 is the median.  Missing values (None,
NaN: a click not heard, a figure a run could not take) are left out and
counted by the caller if it cares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def present(values: Iterable[float | None]) -> list[float]:
    """The values that are there: neither None nor NaN."""
    return [v for v in values if v is not None and not math.isnan(v)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` (any order); None if there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Iterable[float | None], qs: Iterable[float] = (50, 95),
            digits: int | None = None) -> dict[str, float | None]:
    """``n``, ``min``, ``p<q>`` for each of ``qs``, ``max``; rounded to ``digits`` if given."""
    got = present(values)
    out: dict[str, float | None] = {"min": min(got) if got else None}
    for q in qs:
        out[f"p{q:g}"] = percentile(got, q)
    out["max"] = max(got) if got else None
    if digits is not None:
        out = {k: None if v is None else round(v, digits) for k, v in out.items()}
    return {"n": len(got), **out}

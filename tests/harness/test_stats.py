"""One percentile rule for every bench: linear between ranks, missing values left out."""

from __future__ import annotations

import statistics

from callctl.harness.stats import percentile, summary


def test_percentile_interpolates_between_the_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == statistics.median(values) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 90) == 3.7
    assert percentile([], 50) is None


def test_summary_leaves_out_missing_values_and_rounds() -> None:
    got = summary([10.04, None, float("nan"), 30.0, 20.0], (50, 95), digits=1)
    assert got == {"n": 3, "min": 10.0, "p50": 20.0, "p95": 29.0, "max": 30.0}
    assert summary([None]) == {"n": 0, "min": None, "p50": None, "p95": None, "max": None}

"""The benchmark harness's statistics: percentiles, summaries, added latency, slopes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import added, gaps, linear_slope, percentile, rounded, summarize


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    # numpy.percentile([1, 2, 3, 4], 90) == 3.7
    assert percentile(values, 90) == pytest.approx(3.7)


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("q", [-0.1, 100.1])
def test_percentile_outside_0_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], q)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1), st.floats(0, 100))
def test_percentile_stays_between_min_and_max(values: list[float], q: float) -> None:
    ordered = sorted(values)
    assert ordered[0] <= percentile(ordered, q) <= ordered[-1]


@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=2))
def test_percentiles_are_ordered(values: list[float]) -> None:
    s = summarize(values)
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["p99_9"] <= s["max"]


def test_summarize_counts_and_averages() -> None:
    s = summarize(x / 10 for x in range(1, 101))  # 0.1 .. 10.0, a generator is fine
    assert s["n"] == 100
    assert s["mean"] == pytest.approx(5.05)
    assert s["max"] == 10.0
    assert s["p50"] == pytest.approx(5.05)


def test_summarize_nothing_gives_nans_not_errors() -> None:
    s = summarize([])
    assert s["n"] == 0
    assert math.isnan(s["p99"]) and math.isnan(s["mean"])


def test_added_differences_each_statistic_but_not_the_count() -> None:
    direct = {"n": 10.0, "p50": 0.1, "p99": 0.5}
    through = {"n": 12.0, "p50": 0.4, "p99": 1.5, "extra": 3.0}
    assert added(through, direct) == pytest.approx({"p50": 0.3, "p99": 1.0})


def test_linear_slope() -> None:
    assert linear_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert linear_slope([0, 60, 120], [100, 100, 100]) == 0.0
    assert math.isnan(linear_slope([1.0], [2.0]))
    assert math.isnan(linear_slope([5, 5, 5], [1, 2, 3]))
    with pytest.raises(ValueError, match="length"):
        linear_slope([1, 2], [1])


def test_gaps_between_arrivals() -> None:
    assert gaps([1.0, 1.5, 3.0]) == pytest.approx([0.5, 1.5])
    assert gaps([2.0]) == []
    assert gaps([]) == []


def test_rounded_is_json_friendly() -> None:
    out = rounded({"n": 3.0, "p50": 1.23456, "p99": math.nan})
    assert out == {"n": 3, "p50": 1.235, "p99": None}
    assert isinstance(out["n"], int)

"""UTC calendar windows and the reset durations written into OpenAI's headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.budget.windows import WINDOW_KINDS, Span, WindowClock, format_reset, span_of


def ts(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]


@pytest.mark.parametrize(
    ("window", "moment", "start", "end", "label"),
    [
        (
            "minute",
            (2026, 11, 26, 12, 34, 56),
            (2026, 11, 26, 12, 34),
            (2026, 11, 26, 12, 35),
            "202611261234",
        ),
        ("hour", (2026, 11, 26, 23, 59, 59), (2026, 11, 26, 23), (2026, 11, 27, 0), "2026112623"),
        ("day", (2026, 12, 31, 23, 59, 59), (2026, 12, 31), (2027, 1, 1), "20261231"),
        # ISO weeks start on Monday; 2027-01-01 is a Friday in week 53 of 2026.
        ("week", (2027, 1, 1, 8, 0, 0), (2026, 12, 28), (2027, 1, 4), "2026W53"),
        ("week", (2026, 11, 30, 0, 0, 0), (2026, 11, 30), (2026, 12, 7), "2026W49"),
        ("week", (2026, 11, 29, 23, 59, 59), (2026, 11, 23), (2026, 11, 30), "2026W48"),
        ("month", (2026, 12, 15, 0, 0, 0), (2026, 12, 1), (2027, 1, 1), "202612"),
        ("month", (2028, 2, 29, 12, 0, 0), (2028, 2, 1), (2028, 3, 1), "202802"),
    ],
)
def test_span_of_each_window_kind(
    window: str, moment: tuple[int, ...], start: tuple[int, ...], end: tuple[int, ...], label: str
) -> None:
    span = span_of(window, ts(*moment))  # type: ignore[arg-type]
    assert span == Span(int(ts(*start)), int(ts(*end)), label)


def test_a_window_holds_its_start_but_not_its_end() -> None:
    start = ts(2026, 11, 26)
    assert span_of("day", start).label == "20261126"
    assert span_of("day", start - 0.001).label == "20261125"
    assert span_of("day", start + 86400 - 0.001).label == "20261126"


@pytest.mark.parametrize("window", WINDOW_KINDS)
def test_consecutive_windows_tile_time(window: str) -> None:
    span = span_of(window, ts(2026, 1, 1))  # type: ignore[arg-type]
    for _ in range(60):
        following = span_of(window, span.end)  # type: ignore[arg-type]
        assert following.start == span.end and following.label > span.label
        span = following


def test_the_clock_recomputes_only_when_time_leaves_the_window() -> None:
    clock = WindowClock()
    first = clock.span("minute", ts(2026, 11, 26, 12, 0, 1))
    assert clock.span("minute", ts(2026, 11, 26, 12, 0, 59)) is first
    later = clock.span("minute", ts(2026, 11, 26, 12, 1, 0))
    assert later.label == "202611261201"
    # Time may go backwards (an injected clock, or another replica's): still the right window.
    assert clock.span("minute", ts(2026, 11, 26, 12, 0, 30)).label == "202611261200"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.25, "250ms"),
        (1.0, "1s"),
        (1.2, "2s"),
        (59.0, "59s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (43_200 - 15, "11h59m45s"),
        (40 * 3600 + 61, "40h1m1s"),
    ],
)
def test_format_reset_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text

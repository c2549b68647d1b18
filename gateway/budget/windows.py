"""UTC calendar windows: which minute, hour, day, ISO week or month a moment falls in.

A counter's Redis key ends with its window's label (``20261126`` for a day), so a new window is a
new key: nothing is ever reset, and two gateways that disagree by a few milliseconds about the
time simply write to neighbouring windows.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

WindowKind = Literal["minute", "hour", "day", "week", "month"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("minute", "hour", "day", "week", "month")

_FIXED: dict[str, tuple[int, str]] = {
    "minute": (60, "%Y%m%d%H%M"),
    "hour": (3600, "%Y%m%d%H"),
    "day": (86400, "%Y%m%d"),
}
_DAY = 86400
# 1970-01-01 was a Thursday: day number + 3 is 0 on Mondays.
_MONDAY_OFFSET = 3


@dataclass(frozen=True, slots=True)
class Span:
    """One window: ``start <= t < end`` in epoch seconds, and its label in key names."""

    start: int
    end: int
    label: str

    def contains(self, now: float) -> bool:
        return self.start <= now < self.end


def span_of(window: WindowKind, now: float) -> Span:
    """The UTC calendar window of kind ``window`` holding the moment ``now`` (epoch seconds)."""
    t = int(now // 1)
    fixed = _FIXED.get(window)
    if fixed is not None:
        length, label = fixed
        start = t - t % length
        return Span(start, start + length, time.strftime(label, time.gmtime(start)))
    if window == "week":
        day = t // _DAY
        start = (day - (day + _MONDAY_OFFSET) % 7) * _DAY
        iso = datetime.fromtimestamp(start, UTC).isocalendar()
        return Span(start, start + 7 * _DAY, f"{iso.year:04d}W{iso.week:02d}")
    if window == "month":
        moment = time.gmtime(t)
        start = calendar.timegm((moment.tm_year, moment.tm_mon, 1, 0, 0, 0))
        next_year, next_month = (
            (moment.tm_year + 1, 1) if moment.tm_mon == 12 else (moment.tm_year, moment.tm_mon + 1)
        )
        end = calendar.timegm((next_year, next_month, 1, 0, 0, 0))
        return Span(start, end, f"{moment.tm_year:04d}{moment.tm_mon:02d}")
    raise ValueError(f"unknown window {window!r}")


class WindowClock:
    """The current span of each window kind, recomputed only when ``now`` leaves it.

    Per request this is one dict lookup and two comparisons per window kind; the date arithmetic
    runs once per window (once a minute for minute windows).
    """

    __slots__ = ("_spans",)

    def __init__(self) -> None:
        self._spans: dict[str, Span] = {}

    def span(self, window: WindowKind, now: float) -> Span:
        """The window of kind ``window`` holding ``now``."""
        found = self._spans.get(window)
        if found is None or not (found.start <= now < found.end):
            found = span_of(window, now)
            self._spans[window] = found
        return found


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it: ``1s``, ``6m0s``,
    ``2h3m4s``, or ``250ms`` under a second."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = int(-(-seconds // 1))  # round up: never tell a client to come back too early
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"

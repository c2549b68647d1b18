"""The simulated model's settings: what ``tollgate sim`` flags and ``POST /sim/config`` set."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from gateway.errors import InvalidRequest

_RATES = {"ttft_ms": math.inf, "tokens_per_s": math.inf, "error_rate": 1.0}  # upper bounds


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulated model behaves. Frozen: the engine swaps in a new one on change."""

    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0 = no delay between tokens
    error_rate: float = 0.0  # share of calls answered with a 500
    output: str | None = None  # fixed answer text; None = filler words
    model_name: str = "sim"  # what /v1/models lists
    seed: int | None = None  # makes the error draws reproducible

    def with_changes(self, changes: Mapping[str, object]) -> SimConfig:
        """A copy with ``changes`` applied; :class:`InvalidRequest` if one is not valid."""
        names = {f.name for f in fields(self)}
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in names:
                raise InvalidRequest(f"Unknown sim setting {key!r}.", param=key)
            if key in _RATES:
                number = value if isinstance(value, int | float) else math.nan
                if isinstance(value, bool) or not 0 <= number <= _RATES[key]:
                    raise InvalidRequest(
                        f"{key} must be a number from 0 to {_RATES[key]}.", param=key
                    )
                values[key] = float(number)
            elif key == "output" and not (value is None or isinstance(value, str)):
                raise InvalidRequest("output must be a string or null.", param=key)
            elif key == "model_name" and not (isinstance(value, str) and value):
                raise InvalidRequest("model_name must be a non-empty string.", param=key)
            elif key == "seed" and not (value is None or type(value) is int):
                raise InvalidRequest("seed must be an integer or null.", param=key)
            else:
                values[key] = value
        return replace(self, **values)

    def as_dict(self) -> dict[str, object]:
        """The settings as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

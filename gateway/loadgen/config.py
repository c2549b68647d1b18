"""What a benchmark run does: the load shape, the request shape and the SLO to judge it by."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Arrival = Literal["poisson", "uniform"]
Endpoint = Literal["chat", "completions"]


@dataclass(frozen=True, slots=True)
class Distribution:
    """A positive integer drawn per request: a constant, a normal law or a uniform range.

    Written ``200`` (always 200), ``200:50`` (mean 200, standard deviation 50) or ``100-300``
    (uniform from 100 to 300 inclusive). Draws are at least 1.
    """

    low: int
    high: int
    mean: float
    stddev: float

    @classmethod
    def parse(cls, text: str) -> Distribution:
        """Read ``N``, ``MEAN:STDDEV`` or ``MIN-MAX``; ValueError with the reason otherwise."""
        try:
            if ":" in text:
                mean_text, stddev_text = text.split(":", 1)
                mean, stddev = float(mean_text), float(stddev_text)
                if mean < 1 or stddev < 0:
                    raise ValueError
                return cls(0, 0, mean, stddev)
            if "-" in text:
                low_text, high_text = text.split("-", 1)
                low, high = int(low_text), int(high_text)
                if not 1 <= low <= high:
                    raise ValueError
                return cls(low, high, (low + high) / 2, 0.0)
            value = int(text)
            if value < 1:
                raise ValueError
            return cls(value, value, float(value), 0.0)
        except ValueError:
            raise ValueError(
                f"{text!r}: expected N, MEAN:STDDEV or MIN-MAX (positive integers)"
            ) from None

    def draw(self, rng: random.Random) -> int:
        """One value."""
        if self.high:
            return self.low if self.low == self.high else rng.randint(self.low, self.high)
        return max(1, round(rng.gauss(self.mean, self.stddev)))

    def __str__(self) -> str:
        if self.high:
            return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return f"{self.mean:g}:{self.stddev:g}"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """One run. Exactly one of ``rate`` (open loop) or ``concurrency`` (closed loop) is set, and
    exactly one of ``duration_s`` or ``requests`` (the measured part, after the warm-up)."""

    url: str
    api_key: str | None = None
    model: str = "chat"
    endpoint: Endpoint = "chat"
    rate: float | None = None
    concurrency: int | None = None
    arrival: Arrival = "poisson"
    duration_s: float | None = None
    requests: int | None = None
    prompt_tokens: Distribution = Distribution(200, 200, 200.0, 0.0)
    output_tokens: Distribution = Distribution(64, 64, 64.0, 0.0)
    stream: bool = True
    slo_ttft_ms: float | None = None
    slo_total_ms: float | None = None
    warmup_s: float = 0.0
    timeout_s: float = 300.0
    max_connections: int = 1024
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("set exactly one of rate (open loop) or concurrency (closed loop)")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be above 0 requests/s")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if (self.duration_s is None) == (self.requests is None):
            raise ValueError("set exactly one of duration or requests")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("duration must be above 0 s")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be at least 1")
        if self.warmup_s < 0 or self.timeout_s <= 0 or self.max_connections < 1:
            raise ValueError("warmup must be >= 0, timeout > 0 and max connections >= 1")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{self.url!r} is not an http(s) URL")

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def endpoint_url(self) -> str:
        """The URL posted to: ``url`` is an OpenAI base URL (``.../v1``); a bare host gets /v1."""
        base = self.url.rstrip("/")
        if urlsplit(base).path in ("", "/"):
            base += "/v1"
        return f"{base}/chat/completions" if self.endpoint == "chat" else f"{base}/completions"

    def describe(self) -> str:
        """One line: the load shape."""
        if self.rate is not None:
            load = f"open loop {self.rate:g} req/s ({self.arrival})"
        else:
            load = f"closed loop, concurrency {self.concurrency}"
        span = f"{self.duration_s:g} s" if self.duration_s is not None else f"{self.requests} req"
        warmup = f" after {self.warmup_s:g} s warm-up" if self.warmup_s else ""
        return (
            f"{load}, {span}{warmup}; prompt {self.prompt_tokens} tok, output "
            f"{self.output_tokens} tok, {'stream' if self.stream else 'no stream'}"
        )

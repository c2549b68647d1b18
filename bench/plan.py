"""What a run measures and for how long (``--quick`` shrinks everything)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

RATES = (
    250.0,
    500.0,
    1000.0,
    1500.0,
    2000.0,
    2500.0,
    3000.0,
    3500.0,
    4000.0,
    5000.0,
    6000.0,
    8000.0,
)

SECTIONS = (
    "latency",
    "streaming",
    "reference",
    "cache",
    "bigprompt",
    "throughput",
    "profile",
    "wrk",
    "soak",
    "workers",
    "litellm",
)
DEFAULT_OFF = ("litellm",)


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how hard each measurement runs (``--quick`` shrinks everything)."""

    mode: str
    sections: tuple[str, ...]
    rounds: int
    stream_rounds: int
    paced_rounds: int
    cache_rounds: int
    big_tokens: int
    big_seconds: float
    step_s: float
    warmup_s: float
    refine: int
    rates: tuple[float, ...]
    soak_s: float
    soak_window_s: float
    soak_rate: float | None
    wrk_s: float
    wrk_connections: tuple[int, ...]
    profile_s: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        """The plan the command-line flags ask for."""
        quick = bool(args.quick)
        chosen = (
            tuple(args.only.split(","))
            if args.only
            else tuple(
                s
                for s in SECTIONS
                if s not in DEFAULT_OFF or (s == "litellm" and args.litellm_python)
            )
        )
        skipped = set(args.skip.split(",")) if args.skip else set()
        unknown = (set(chosen) | skipped) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
        rates = tuple(float(r) for r in args.rates.split(",")) if args.rates else RATES
        return cls(
            mode="quick" if quick else "full",
            sections=tuple(s for s in chosen if s not in skipped),
            rounds=300 if quick else 3000,
            stream_rounds=100 if quick else 1000,
            paced_rounds=15 if quick else 150,
            cache_rounds=200 if quick else 2000,
            big_tokens=args.big_tokens,
            big_seconds=3.0 if quick else 20.0,
            step_s=args.step_s or (2.0 if quick else 8.0),
            warmup_s=0.5 if quick else 2.0,
            refine=0 if quick else 2,
            rates=tuple(r for r in rates if r <= args.max_rate),
            soak_s=args.soak_s if args.soak_s is not None else (20.0 if quick else 300.0),
            soak_window_s=5.0 if quick else 15.0,
            soak_rate=args.soak_rate,
            wrk_s=2.0 if quick else 8.0,
            wrk_connections=(16, 64),
            profile_s=4.0 if quick else 15.0,
        )

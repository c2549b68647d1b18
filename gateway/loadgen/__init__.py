"""``tollgate bench``'s engine: a load tester for any OpenAI-compatible endpoint.

``BenchConfig`` says what to send, ``Runner`` sends it (open or closed loop), ``summarize`` and
``render_table`` turn the samples into TTFT, time per output token, latency percentiles,
throughput and goodput.
"""

from gateway.loadgen.config import BenchConfig, Distribution
from gateway.loadgen.report import render_table, summarize
from gateway.loadgen.runner import Progress, Runner, RunResult

__all__ = [
    "BenchConfig",
    "Distribution",
    "Progress",
    "RunResult",
    "Runner",
    "render_table",
    "summarize",
]

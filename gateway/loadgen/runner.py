"""Driving the load: open loop by the clock, or closed loop with a fixed number of workers.

Open loop: arrival times are drawn up front from the rate (Poisson or evenly spaced) and every
request is started at its time *whatever happened to the previous ones*; when the scheduler
wakes late it starts everything that is due at once. Latency counts from the scheduled time, so
a saturated server (or client) shows its queueing delay rather than hiding it by sending
later, the coordinated-omission trap. ``send lag`` (sent - scheduled) in the report shows how
far the client itself fell behind; if it is large, the client was the bottleneck.

Closed loop: ``concurrency`` workers each send a request as soon as their previous one ends;
latency counts from the actual send (there is no schedule to miss); ``send lag`` is then the
client's own event-loop delay.

A warm-up period runs the same load first; requests *scheduled* during it are left out of the
results. :meth:`Runner.stop` ends the run early (Ctrl-C): nothing new is sent, requests in flight
finish, and the results so far are reported.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from gateway.loadgen.client import Client, Sample
from gateway.loadgen.config import BenchConfig
from gateway.loadgen.prompts import PromptFactory


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for the progress bar."""

    phase: str  # warmup | measure | drain | done
    elapsed_s: float  # since the measured part started (0 during the warm-up)
    done: int  # measured requests finished
    errors: int
    in_flight: int
    target: float  # measured requests or seconds, per ``by_time``
    by_time: bool

    @property
    def fraction(self) -> float:
        if self.phase in ("drain", "done"):
            return 1.0
        position = self.elapsed_s if self.by_time else self.done
        return min(1.0, position / self.target) if self.target else 1.0


@dataclass(frozen=True, slots=True)
class RunResult:
    """Every measured sample, and the measured span."""

    samples: list[Sample]
    started: float  # perf_counter at the start of the measured part
    finished: float  # perf_counter when the last measured request ended
    interrupted: bool


class Runner:
    """One benchmark run against one endpoint."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        rng = random.Random(config.seed)
        self._arrivals = random.Random(rng.random())
        self._prompts = PromptFactory(config, random.Random(rng.random()))
        self._samples: list[Sample] = []
        self._tasks: set[asyncio.Task[Sample]] = set()
        self._stopping = asyncio.Event()
        self._phase = "warmup"
        self._measure_start = 0.0
        self._issued = 0
        self._done = 0
        self._errors = 0
        self._client: Client | None = None

    def stop(self) -> None:
        """Send nothing more; let the requests in flight finish."""
        self._stopping.set()

    def abort(self) -> None:
        """Send nothing more and cancel the requests in flight (they are left out)."""
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()

    def progress(self) -> Progress:
        config = self.config
        now = time.perf_counter()
        elapsed = now - self._measure_start if self._phase != "warmup" else 0.0
        by_time = config.duration_s is not None
        target = config.duration_s if config.duration_s is not None else float(config.requests or 0)
        return Progress(
            self._phase, elapsed, self._done, self._errors, len(self._tasks), target, by_time
        )

    async def run(self) -> RunResult:
        """Run the warm-up and the measured part; wait for every request to end."""
        config = self.config
        client = Client(
            config.endpoint_url,
            config.api_key,
            stream=config.stream,
            timeout_s=config.timeout_s,
            max_connections=config.max_connections,
        )
        async with client:
            self._client = client
            start = time.perf_counter()
            self._measure_start = start + config.warmup_s
            if config.rate is not None:
                await self._open_loop(start, config.rate)
            else:
                await self._closed_loop(config.concurrency or 1)
            self._phase = "drain"
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        self._phase = "done"
        measured = [s for s in self._samples if not s.warmup and s.error != "cancelled"]
        finished = max((s.end for s in measured), default=self._measure_start)
        return RunResult(measured, self._measure_start, finished, self._stopping.is_set())

    def _more(self, scheduled: float) -> bool:
        """Whether a request scheduled at ``scheduled`` belongs to the run."""
        if self._stopping.is_set():
            return False
        config = self.config
        if scheduled < self._measure_start:
            return True
        if self._phase == "warmup":
            self._phase = "measure"
        if config.duration_s is not None:
            return scheduled < self._measure_start + config.duration_s
        return self._issued < (config.requests or 0)

    def _launch(self, scheduled: float) -> asyncio.Task[Sample]:
        warmup = scheduled < self._measure_start
        if not warmup:
            self._issued += 1
        index = len(self._samples)
        body, requested = self._prompts.body(index)
        closed = self.config.rate is None
        sample = Sample(index, scheduled, warmup, requested_tokens=requested, closed=closed)
        self._samples.append(sample)
        assert self._client is not None
        task = asyncio.create_task(self._client.send(sample, body))
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Sample]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        sample = task.result()
        if not sample.warmup:
            self._done += 1
            if sample.error is not None:
                self._errors += 1

    async def _open_loop(self, start: float, rate: float) -> None:
        uniform = self.config.arrival == "uniform"
        draw = self._arrivals.expovariate
        scheduled, count = start, 0
        while True:
            now = time.perf_counter()
            # Everything already due goes now, each keeping its own scheduled time.
            while scheduled <= now:
                if not self._more(scheduled):
                    return
                self._launch(scheduled)
                count += 1
                # Evenly spaced times are computed, not summed, so rounding does not drift.
                scheduled = start + count / rate if uniform else scheduled + draw(rate)
            try:
                await asyncio.wait_for(self._stopping.wait(), scheduled - now)
                return
            except TimeoutError:
                pass

    async def _closed_loop(self, concurrency: int) -> None:
        async def worker() -> None:
            while True:
                scheduled = time.perf_counter()
                if not self._more(scheduled):
                    return
                # wait() rather than await: an aborted (cancelled) request ends this worker's
                # turn without cancelling the worker.
                await asyncio.wait((self._launch(scheduled),))

        await asyncio.gather(*(worker() for _ in range(concurrency)))

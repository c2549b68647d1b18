"""Several workers, one exposition: real processes writing to one PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics, prepare_dir
from gateway.metrics.export import Exporter, GoodputWindow
from gateway.metrics.multiprocess import ENV, FileSource, active_dir

WORKER = """
import asyncio, os, sys
from gateway.metrics import Metrics
from gateway.record import RequestRecord

requests, in_flight = int(sys.argv[1]), int(sys.argv[2])


async def main() -> None:
    metrics = Metrics(refresh_s=0.05)
    assert metrics.multiprocess_dir == os.environ["PROMETHEUS_MULTIPROC_DIR"], "not multiprocess"
    metrics.bind_names(routes=["chat"], deployments=["pool-a"], teams=["search"])
    for i in range(requests):
        metrics.observe(RequestRecord(
            f"req-{i}", 0.0, route="chat", deployment="pool-a", team="search", status="ok",
            http_status=200, prompt_tokens=10, completion_tokens=3, cost_usd=0.25,
            slo_met=i % 2 == 0, stream=True, ttft_ms=100.0, total_ms=300.0,
        ))
    metrics.upstream_error("pool-a", "upstream_timeout")
    refreshed = asyncio.Event()

    def balancer() -> None:  # the owner of the in-flight counts, polled by the worker itself
        metrics.set_in_flight("pool-a", "replica-1", in_flight)
        refreshed.set()

    metrics.add_updater(balancer)
    await metrics.start()
    await refreshed.wait()
    metrics.set_ledger(in_flight, float(in_flight))
    metrics.set_budget_remaining("search", "day", "tokens", 1000 - requests)
    print("ready", flush=True)
    command = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if command.strip() == "close":
        await metrics.aclose()
    print("bye", flush=True)


asyncio.run(main())
"""


@contextmanager
def worker(directory: Path, requests: int, in_flight: int) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, ENV: str(directory)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(requests), str(in_flight)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"worker did not start: {line!r} {err}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(directory: Path) -> Samples:
    """What the worker answering a scrape serves: every worker's files, aggregated."""
    text = Exporter(FileSource(str(directory)), GoodputWindow()).render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


SERIES = {"route": "chat", "deployment": "pool-a", "team": "search"}
REPLICA = {"deployment": "pool-a", "replica": "replica-1"}


def test_two_workers_aggregate(tmp_path: Path) -> None:
    with worker(tmp_path, 30, 2) as first, worker(tmp_path, 50, 5) as second:
        samples = scrape(tmp_path)
        assert get(samples, "tollgate_requests_total", status="ok", **SERIES) == 80
        assert get(samples, "tollgate_tokens_total", kind="prompt", **SERIES) == 800
        assert get(samples, "tollgate_tokens_total", kind="completion", **SERIES) == 240
        assert get(samples, "tollgate_cost_usd_total", **SERIES) == pytest.approx(20.0)
        latency = {"route": "chat", "deployment": "pool-a"}
        assert get(samples, "tollgate_ttft_seconds_count", **latency) == 80
        assert get(samples, "tollgate_ttft_seconds_bucket", le="0.1", **latency) == 80
        assert get(samples, "tollgate_ttft_seconds_bucket", le="0.075", **latency) == 0
        assert get(samples, "tollgate_slo_requests_total", route="chat", met="true") == 40
        assert get(samples, "tollgate_goodput_ratio", route="chat") == pytest.approx(0.5)
        errors = {"deployment": "pool-a", "type": "upstream_timeout"}
        assert get(samples, "tollgate_upstream_errors_total", **errors) == 2
        # Gauges combine by their mode: in flight adds up, lag takes the worst.
        assert get(samples, "tollgate_in_flight", **REPLICA) == 7
        assert get(samples, "tollgate_ledger_backlog") == 7
        assert get(samples, "tollgate_ledger_lag_seconds") == 5
        remaining = get(
            samples, "tollgate_budget_remaining", team="search", window="day", unit="tokens"
        )
        assert remaining in (970, 950)  # the most recent of the two (both read one Redis)

        # One worker shuts down cleanly, the other is killed: their counters stay, their
        # gauges go (the clean one withdraws itself; the killed one is swept by the scrape).
        assert first.stdin is not None
        first.stdin.write("close\n")
        first.stdin.flush()
        assert first.wait(timeout=30) == 0
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)

        samples = scrape(tmp_path)
        assert get(samples, "tollgate_requests_total", status="ok", **SERIES) == 80
        assert get(samples, "tollgate_ttft_seconds_count", **latency) == 80
        assert get(samples, "tollgate_in_flight", **REPLICA) is None
        assert get(samples, "tollgate_ledger_backlog") is None
        assert not list(tmp_path.glob("gauge_live*"))


def test_prepare_dir_empties_and_exports_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "/nonexistent")  # restored after the test
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_12345.db").write_bytes(b"stale")
    prepare_dir(directory)
    assert os.environ[ENV] == str(directory.resolve())
    assert list(directory.iterdir()) == []


def test_single_process_ignores_a_late_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prometheus_client chose in-memory values when it was imported; a variable set afterwards
    # must not make the exporter read (empty) files instead of this process's values.
    monkeypatch.setenv(ENV, str(tmp_path))
    assert active_dir() is None
    assert Metrics().multiprocess_dir is None


def worker_app() -> Any:
    """An app per uvicorn worker (``factory=True``): its own Metrics, GET /metrics, and a
    POST /observe that counts one request and says which process took it."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from gateway.api import metrics as metrics_api
    from gateway.record import RequestRecord

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await metrics.start()
        yield
        await metrics.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.services = SimpleNamespace(metrics=metrics)
    app.include_router(metrics_api.router)

    @app.post("/observe")
    async def observe() -> PlainTextResponse:
        record = RequestRecord("r", 0.0, route="chat", team="search", status="ok", http_status=200)
        record.prompt_tokens = 7
        metrics.observe(record)
        return PlainTextResponse(str(os.getpid()))

    return app


SERVE = """
import sys, uvicorn
from gateway.metrics import workers_dir

with workers_dir() as path:
    print(path, flush=True)
    uvicorn.run(
        "tests.unit.test_metrics_multiprocess:worker_app", factory=True, workers=2,
        host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
    )
"""


def test_uvicorn_workers_export_one_total() -> None:
    """``serve --workers 2`` in miniature: whichever worker answers the scrape, the totals
    cover the requests both served."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        directory = Path(proc.stdout.readline().strip())
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(base + "/metrics") is not None, "the workers to start")
        pids: dict[str, int] = {}
        for _ in range(60):
            # A new connection each time, so the kernel spreads them over the workers.
            with httpx.Client() as client:
                pid = client.post(base + "/observe").text
            pids[pid] = pids.get(pid, 0) + 1
        print("requests per worker:", pids)
        series = {"route": "chat", "deployment": "none", "team": "search", "status": "ok"}
        tokens = {**{k: v for k, v in series.items() if k != "status"}, "kind": "prompt"}

        def totals() -> tuple[float | None, float | None]:
            text = _get(base + "/metrics") or ""
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            return (
                get(samples, "tollgate_requests_total", **series),
                get(samples, "tollgate_tokens_total", **tokens),
            )

        # Each worker flushes to its file every second; then every scrape agrees.
        wait_until(lambda: totals() == (60, 420), "the totals to include every request")
        assert all(totals() == (60, 420) for _ in range(6))
        assert len(list(directory.glob("counter_*.db"))) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _, err = proc.communicate()
        print(err[-2000:])
    assert not directory.exists()  # the temporary directory went with the server


def _get(url: str) -> str | None:
    try:
        with httpx.Client(timeout=5) as client:
            answer = client.get(url)
    except httpx.HTTPError:
        return None
    return answer.text if answer.status_code == 200 else None


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port

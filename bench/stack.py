"""Bringing up what a run measures: the stub, the policy, and gateways (1 or N workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Target, bearer
from bench.procs import Processes, Started, free_port, wait_for_lines, wait_ready

REPO = Path(__file__).resolve().parent.parent
POLICIES = Path(__file__).resolve().parent / "policies"
HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"

# What the full policy turns on (bench/policies/full/bench.yaml), for the results.
FULL_FEATURES = (
    "key auth (Postgres)",
    "token counting",
    "budgets: team + key, tokens + USD (Redis)",
    "rate limits rpm/tpm",
    "routing: cheapest-within-slo, 2 candidates",
    "cache: mode all, distinct prompts (miss = lookup + write)",
    "usage ledger",
    "access log (to a file)",
)
CORE_FEATURES = (
    "key auth (Postgres)",
    "token counting",
    "failover order, 2 candidates",
    "usage ledger (if the gateway writes one)",
    "access log (to a file)",
)


@dataclass(slots=True)
class Stub:
    """The running stub and its base URL."""

    started: Started
    url: str  # http://127.0.0.1:PORT

    @property
    def port(self) -> int:
        """The port from the URL."""
        return int(self.url.rsplit(":", 1)[1])

    def target(self, prefix: str) -> Target:
        """A client target for the stub's chat route under ``prefix`` (``/fast`` or ``/real``)."""
        return Target("direct", HOST, self.port, prefix + CHAT, b"")


def start_stub(procs: Processes, ttft_ms: float, tokens_per_s: float, tokens: int) -> Stub:
    """``python -m bench.stub`` on a free port."""
    argv = [sys.executable, "-m", "bench.stub", "--port", "0", "--ttft-ms", str(ttft_ms)]
    argv += ["--tokens-per-s", str(tokens_per_s), "--tokens", str(tokens)]
    started = procs.start("stub", argv, cwd=REPO)
    prefix = "bench stub listening on "
    url = wait_for_lines(started, [prefix], 30)[prefix]
    stub = Stub(started, url)
    wait_ready(started, HOST, stub.port, "/healthz", 30)
    return stub


@dataclass(slots=True)
class Backends:
    """Where the gateway keeps state: Redis + Postgres, or the embedded mode (both None)."""

    redis_url: str | None
    redis_prefix: str
    database_url: str | None
    data_dir: Path
    gateway_src: Path | None = None  # another checkout's gateway/ to measure (PYTHONPATH)
    busy_poll_us: int | None = None  # TOLLGATE_BUSY_POLL_US; None: the gateway's default
    # The interpreter the gateway runs on (another Python version's venv); the stub and the
    # load generator stay on the bench's own, so only the gateway changes between runs.
    gateway_python: str = sys.executable
    # What that interpreter runs, before "serve ...": bench/opcount.py replaces it with itself.
    gateway_entry: tuple[str, ...] = ("-m", "gateway")


@dataclass(slots=True)
class PolicyChoice:
    """The bench policy served, what it turns on, and why the full one was not used."""

    name: str  # "full" or "core"
    directory: Path
    features: tuple[str, ...]
    refused: list[str] = field(default_factory=list)  # why the full policy was not used


def python_version(python: str) -> str:
    """``platform.python_version()`` of the interpreter ``python``."""
    code = "import platform; print(platform.python_version())"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{python} did not run: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def check_policy(directory: Path, env: dict[str, str], python: str) -> tuple[bool, str]:
    """``tollgate check-policy DIR``: (accepted, what it said on stderr)."""
    done = subprocess.run(
        [python, "-m", "gateway", "check-policy", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=env["TOLLGATE_DATA_DIR"],
    )
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def choose_policy(backends: Backends, stub_url: str, wanted: str) -> PolicyChoice:
    """The full policy if the running code accepts it (unless ``wanted`` is "core")."""
    env = gateway_env(backends, stub_url, POLICIES / "full")
    full = PolicyChoice("full", POLICIES / "full", FULL_FEATURES)
    core = PolicyChoice("core", POLICIES / "core", CORE_FEATURES)
    if wanted == "core":
        core.refused.append("--policy core")
        return core
    ok, said = check_policy(full.directory, env, backends.gateway_python)
    if ok:
        return full
    if wanted == "full":
        raise RuntimeError(f"check-policy refused bench/policies/full:\n{said}")
    core.refused.append(f"check-policy refused the full policy: {said[-800:]}")
    return core


@dataclass(slots=True)
class Gateway:
    """A running gateway: its process, port, demo key and worker count."""

    started: Started
    port: int
    key: str
    workers: int

    def target(self, path: str = CHAT, name: str = "gateway") -> Target:
        """A client target on this gateway, with its key."""
        return Target(name, HOST, self.port, path, bearer(self.key))


@dataclass(slots=True)
class Passthrough:
    """The issue's reference proxy (``bench/passthrough.py``), running: its process and port."""

    started: Started
    port: int

    def target(self, prefix: str) -> Target:
        """A client target for the stub's route under ``prefix`` (``/fast`` or ``/real``)."""
        return Target("passthrough", HOST, self.port, prefix + CHAT, b"")


def start_passthrough(procs: Processes, stub_url: str) -> Passthrough:
    """A bare FastAPI + aiohttp proxy in front of the stub, started as the issue runs it."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.passthrough:app", "--host", HOST]
    argv += ["--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    started = procs.start("passthrough", argv, {**os.environ, "UPSTREAM": stub_url}, cwd=REPO)
    try:
        wait_ready(started, HOST, port, "/docs", 30)
    except BaseException:
        procs.stop(started)  # not left running through the sections after it
        raise
    return Passthrough(started, port)


def gateway_env(backends: Backends, stub_url: str, policy: Path) -> dict[str, str]:
    """The environment of a gateway process: the inherited one minus any TOLLGATE_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env |= {
        "TOLLGATE_BENCH_STUB": stub_url,
        "TOLLGATE_POLICY": str(policy),
        "TOLLGATE_DATA_DIR": str(backends.data_dir),
        "TOLLGATE_REDIS_PREFIX": backends.redis_prefix,
        "TOLLGATE_ACCESS_LOG": "true",  # part of the product: on, into a file
        "TOLLGATE_LOG_LEVEL": "info",
        "TOLLGATE_REPLICA": "bench",
    }
    if backends.gateway_src is not None:
        env["PYTHONPATH"] = str(backends.gateway_src)
    if backends.busy_poll_us is not None:
        env["TOLLGATE_BUSY_POLL_US"] = str(backends.busy_poll_us)
    if backends.redis_url:
        env["TOLLGATE_REDIS_URL"] = backends.redis_url
    if backends.database_url:
        env["TOLLGATE_DATABASE_URL"] = backends.database_url
    return env


def start_gateway(
    procs: Processes,
    backends: Backends,
    stub_url: str,
    policy: Path,
    workers: int = 1,
    name: str = "gateway",
) -> Gateway:
    """``tollgate serve`` on a free port; waits for its demo key and for /readyz."""
    port = free_port()
    argv = [backends.gateway_python, *backends.gateway_entry, "serve", "--policy", str(policy)]
    argv += ["--port", str(port), "--workers", str(workers)]
    # Not run from the repository: `python -m` would put it first on sys.path, and
    # --gateway-src (PYTHONPATH) could not point at another checkout.
    backends.data_dir.mkdir(parents=True, exist_ok=True)
    env = gateway_env(backends, stub_url, policy)
    started = procs.start(name, argv, env, cwd=backends.data_dir)
    serving, key_line = "Tollgate serving on ", "Demo key (team demo): "
    found = wait_for_lines(started, [serving, key_line], 120)
    wait_ready(started, HOST, port, "/readyz", 120)
    return Gateway(started, port, found[key_line], workers)

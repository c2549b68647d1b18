"""``tollgate serve`` as a real process, for tests that need one (or several)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-secret-for-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def demo_key(self) -> str:
        for line in self.lines:
            found = re.search(r"(tg-[A-Za-z0-9_-]{8,})", line)
            if found:
                return found.group(1)
        raise AssertionError(f"no demo key printed; stdout was {self.lines}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def serve(tmp_path: Path, policy: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    """Start ``tollgate serve`` and wait until it answers /healthz."""
    port = free_port()
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("TOLLGATE_DATABASE_URL", "TOLLGATE_REDIS_URL")
    }
    environment.update(
        {
            "TOLLGATE_DATA_DIR": str(tmp_path / "data"),
            "TOLLGATE_ADMIN_KEY": ADMIN_KEY,
            **(env or {}),
        }
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--policy",
            str(policy),
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO,
    )
    served = Served(process, port)
    assert process.stdout is not None and process.stderr is not None
    threading.Thread(target=_drain, args=(process.stdout, served.lines), daemon=True).start()
    threading.Thread(target=_drain, args=(process.stderr, served.errors), daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}: {served.errors[-20:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return served
        except httpx.HTTPError:
            time.sleep(0.1)
    served.stop(signal.SIGKILL)
    raise AssertionError(f"serve did not come up: {served.errors[-20:]}")


def _drain(stream: object, into: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.append(line.rstrip("\n"))

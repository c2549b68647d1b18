"""``tollgate sim`` as a real process on a free port, for tests that need an HTTP upstream."""

from __future__ import annotations

import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

LISTENING = "tollgate sim listening on "


@contextmanager
def sim_process(*args: str) -> Iterator[str]:
    """Start ``tollgate sim --port 0 ARGS...``; yield its base URL (``.../v1``); stop it after."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stderr.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "sim", "--port", "0", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        try:
            yield _wait_for_listening(proc, log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_listening(proc: subprocess.Popen[bytes], log: Path) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith(LISTENING):
        proc.kill()
        raise AssertionError(f"tollgate sim did not start: {line!r}\n{log.read_text()}")
    return line.removeprefix(LISTENING).strip()


def sim_admin(url: str) -> httpx.Client:
    """A client on the sim's root, for /sim/config and /sim/stats."""
    return httpx.Client(base_url=url.removesuffix("/v1"), timeout=10)

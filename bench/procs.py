"""Starting, watching and stopping the processes a run needs, and reading their memory.

Every process is started in its own session (so a Ctrl-C in the terminal reaches the harness,
which then stops them in order) with ``PR_SET_PDEATHSIG`` (so they die with the harness even if it
is killed outright). Output goes to files in the run directory, never to an undrained pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A process did not start, or did not become ready, in time."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Started:
    """A process the harness started, with where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        """The process id (with ``start_new_session``, also its process group's)."""
        return self.proc.pid

    def tail(self, chars: int = 2000) -> str:
        """The end of its stdout and stderr, for error messages."""
        parts = []
        for path in (self.stdout, self.stderr):
            if path.exists():
                text = path.read_text(errors="replace")[-chars:]
                parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts)


class Processes:
    """Owns every process of a run; leaving the ``with`` block stops them all."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.started: list[Started] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Started:
        """Start ``argv`` with stdout/stderr in ``run_dir/name.{out,err}``."""
        stdout, stderr = self.run_dir / f"{name}.out", self.run_dir / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        started = Started(name, proc, stdout, stderr)
        self.started.append(started)
        return started

    def stop(self, started: Started, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (a graceful stop: the gateway flushes its ledger), then SIGKILL the group."""
        proc = started.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout_s)
        # Its own session: whatever it started (uvicorn workers) is in its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if started in self.started:
            self.started.remove(started)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running, the most recently started first."""
        for started in reversed(list(self.started)):
            self.stop(started)


def wait_for_lines(
    started: Started, prefixes: Sequence[str], timeout_s: float = 60.0
) -> dict[str, str]:
    """Wait until stdout has a line starting with each prefix; returns prefix -> rest of line."""
    deadline = time.monotonic() + timeout_s
    found: dict[str, str] = {}
    while True:
        text = started.stdout.read_text(errors="replace") if started.stdout.exists() else ""
        for line in text.splitlines():
            for prefix in prefixes:
                if line.startswith(prefix) and prefix not in found:
                    found[prefix] = line.removeprefix(prefix).strip()
        if len(found) == len(prefixes):
            return found
        if started.proc.poll() is not None:
            raise ProcessError(
                f"{started.name} exited with status {started.proc.returncode}\n{started.tail()}"
            )
        if time.monotonic() > deadline:
            raise ProcessError(f"{started.name} did not print {prefixes}\n{started.tail()}")
        time.sleep(0.05)


def http_get(host: str, port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (for readiness and counters, not for measuring)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(started: Started, host: str, port: int, path: str, timeout_s: float = 60.0) -> None:
    """Poll ``GET path`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if started.proc.poll() is not None:
            raise ProcessError(f"{started.name} exited early\n{started.tail()}")
        try:
            status, body = http_get(host, port, path)
            if status == 200:
                return
            last = f"{status} {body[:300]!r}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise ProcessError(f"{started.name} not ready on {path}: {last}\n{started.tail()}")


# --- memory ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MiB (NaN if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def parent_of(stat_line: str) -> int:
    """The parent pid from a ``/proc/PID/stat`` line (the command may contain ``) ``)."""
    return int(stat_line.rsplit(")", 1)[1].split()[1])


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time used so far by ``pids`` (those still running)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def run_queue_seconds(pids: Sequence[int]) -> float:
    """Time ``pids``' threads have spent runnable but waiting for a core so far (the second
    field of ``/proc/PID/task/TID/schedstat``, in nanoseconds); 0 where the kernel keeps none.
    Live threads only: a thread that exits takes its share with it."""
    total = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as stat:
                    total += int(stat.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def _stat_lines() -> Iterator[tuple[int, str]]:
    """(pid, ``/proc/PID/stat`` line) of every running process (skipping any that exit)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                line = stat.read()
        except OSError:
            continue
        yield int(entry), line


def pids_named(names: Collection[str]) -> list[int]:
    """The running processes whose command name (``/proc/PID/stat``'s, e.g. ``redis-server``
    or ``postgres``) is one of ``names``."""
    return [
        pid for pid, line in _stat_lines() if line[line.find("(") + 1 : line.rfind(")")] in names
    ]


@dataclass(frozen=True, slots=True)
class HostTicks:
    """The machine's CPU time so far, from the first line of ``/proc/stat`` (clock ticks)."""

    total: int
    steal: int
    idle: int = 0  # idle + iowait

    @classmethod
    def now(cls) -> HostTicks:
        """A reading (zeros where ``/proc/stat`` cannot be read)."""
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(value) for value in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return cls(0, 0)
        # user nice system idle iowait irq softirq steal (guest time is already in user).
        return cls(sum(fields[:8]), fields[7] if len(fields) > 7 else 0, sum(fields[3:5]))

    def steal_share_since(self, earlier: HostTicks) -> float | None:
        """The share of the machine's CPU time the hypervisor gave to others since ``earlier``:
        on a shared VM a busy neighbour shows up here, and in every latency."""
        elapsed = self.total - earlier.total
        return (self.steal - earlier.steal) / elapsed if elapsed > 0 else None

    def busy_share_since(self, earlier: HostTicks) -> float | None:
        """The share of the machine's CPU time that ran something since ``earlier`` (neither
        idle nor stolen): near 1, every process on the path waits for a core."""
        elapsed = self.total - earlier.total
        if elapsed <= 0:
            return None
        return (elapsed - (self.idle - earlier.idle) - (self.steal - earlier.steal)) / elapsed


def wait_idle(root: int, busy_share: float = 0.05, timeout_s: float = 30.0) -> float:
    """Wait until ``root``'s process tree uses under ``busy_share`` of a core (e.g. until a
    gateway has worked off the queue an overloaded step left behind); returns seconds waited."""
    started = time.monotonic()
    pids = process_tree(root)
    last = cpu_seconds(pids)
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = cpu_seconds(pids)
        if now - last < busy_share * 0.5:
            break
        last = now
    return time.monotonic() - started


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (uvicorn's supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for pid, line in _stat_lines():
        try:
            ppid = parent_of(line)
        except (IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
    tree, frontier = [root], [root]
    while frontier:
        frontier = [child for pid in frontier for child in children.get(pid, [])]
        tree.extend(frontier)
    return tree

"""Several worker processes (``tollgate serve --workers N``) exporting one set of metrics.

How it works, and how it coexists with "one registry per app":

* prometheus_client decides **when it is imported** whether metric values live in process memory
  or in memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` (one file per process and metric
  type). ``tollgate serve --workers N`` starts the workers inside :func:`workers_dir`, which
  sets the variable, so every worker imports prometheus_client with it set.
* Each worker still builds its own app, its own :class:`~gateway.metrics.Metrics` and its own
  ``CollectorRegistry``; the instruments in it write their values to this process's files. The
  registry itself is not what ``/metrics`` serves in that mode: the worker that answers the
  scrape reads *every* worker's files with ``MultiProcessCollector`` (:class:`FileSource`), so
  Prometheus sees the sum over workers whichever worker it reaches.
* Counters and histograms add up across workers, also those of workers that have exited (a
  counter never goes back). Gauges combine by their ``multiprocess_mode`` (``livesum``,
  ``livemax``, ``livemostrecent``); the ``live`` files of a worker that is gone are removed by
  that worker on a clean shutdown and, for one that was killed, by the next scrape
  (:func:`sweep_dead`).
* Each worker flushes its buffered counts to its files every second (``Metrics.start``), so a
  scrape may miss at most the last second of the other workers' requests.
* The directory is emptied when the server starts (:func:`prepare_dir`), so counters start from
  zero as they would in a single process.

In one process (the default) none of this applies: the app's registry is served directly.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def prepare_dir(path: Path) -> Path:
    """Create (or empty) ``path`` and point ``PROMETHEUS_MULTIPROC_DIR`` at it.

    Call it in the parent before the workers start: they inherit the variable, and
    prometheus_client reads it when first imported. Files of an earlier run are removed.
    """
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV] = str(path.resolve())
    return path


@contextmanager
def workers_dir() -> Iterator[Path]:
    """For ``serve --workers N``: a prepared directory for the workers' metric files.

    ``$PROMETHEUS_MULTIPROC_DIR`` when set (emptied first), else a fresh temporary directory of
    this server's own (removed on exit), so two servers sharing a data volume never mix their
    files. Wrap the call that starts the workers::

        with workers_dir():
            uvicorn.run(..., workers=n)
    """
    given = os.environ.get(ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="tollgate-metrics-"))
    prepare_dir(path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def active_dir() -> str | None:
    """The multiprocess directory when this process writes its metrics there, else None.

    Decided by prometheus_client at import time: setting the variable later changes nothing,
    so the variable alone is not trusted.
    """
    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(ENV) or os.environ.get(ENV.lower())


def sweep_dead(path: str) -> None:
    """Drop the live-gauge files of processes that no longer exist (killed workers)."""
    for name in {os.path.basename(f) for f in glob.glob(os.path.join(path, "gauge_live*.db"))}:
        match = _LIVE_FILE.fullmatch(name)
        if match is not None and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), path)  # type: ignore[no-untyped-call]


def forget_self(path: str) -> None:
    """On a clean shutdown: this process's gauges stop counting (its counters stay)."""
    mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


class FileSource:
    """Every worker's metrics, read from the multiprocess directory at each scrape."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._collector = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        sweep_dead(self.path)
        families: Iterable[Metric] = self._collector.collect()  # type: ignore[no-untyped-call]
        return families


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True

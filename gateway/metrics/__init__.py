"""Prometheus metrics: the instruments, ``Metrics.observe(record)`` and GET /metrics.

Built per app (``Metrics()``), never in prometheus_client's global registry. See ``core`` for the
request path, ``export`` for the goodput window and ``multiprocess`` for ``--workers N``.
"""

from gateway.metrics.core import Metrics, Updater
from gateway.metrics.export import CONTENT_TYPE
from gateway.metrics.labels import NONE, OTHER, LabelValues
from gateway.metrics.multiprocess import prepare_dir, workers_dir

__all__ = [
    "CONTENT_TYPE",
    "NONE",
    "OTHER",
    "LabelValues",
    "Metrics",
    "Updater",
    "prepare_dir",
    "workers_dir",
]

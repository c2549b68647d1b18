"""Routing: the cheapest deployment predicted to meet the route's latency target.

``Router.plan`` (router.py) is the entry point; it reads ``RoutingStats`` (stats.py, synced by
``StatsSync`` in sync.py) and ``Breakers`` (breaker.py). Everything on the request path is
synchronous and in memory.
"""

from gateway.routing.affinity import affinity_key
from gateway.routing.breaker import Breakers
from gateway.routing.plan import Attempt, RoutePlan, parse_ttft_override
from gateway.routing.router import Router, RouterConfig
from gateway.routing.stats import RoutingStats, StatsConfig
from gateway.routing.sync import StatsSync

__all__ = [
    "Attempt",
    "Breakers",
    "RoutePlan",
    "Router",
    "RouterConfig",
    "RoutingStats",
    "StatsConfig",
    "StatsSync",
    "affinity_key",
    "parse_ttft_override",
]

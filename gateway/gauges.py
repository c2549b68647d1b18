"""Gauges read from their owners when Prometheus scrapes: breakers, replicas in flight,
budgets remaining and the ledger's backlog (nothing is pushed per request for these)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.budget import Limiter, PlanCache
from gateway.ledger.writer import LedgerWriter
from gateway.metrics import Metrics
from gateway.policy.schema import Policy
from gateway.providers.base import Upstream
from gateway.routing import Breakers


def install(
    metrics: Metrics,
    *,
    policy: Callable[[], Policy],
    upstreams: Callable[[], Mapping[str, Upstream]],
    breakers: Breakers,
    limiter: Limiter,
    plans: PlanCache,
    ledger: LedgerWriter,
) -> None:
    """Register the updaters that keep the scrape-time gauges current."""

    def health() -> None:
        document = policy().document
        clients = upstreams()
        for name, deployment in document.models.items():
            state = breakers.snapshot(name)["state"]
            metrics.set_breaker_open(name, None, state == "open")
            balancer = getattr(clients.get(deployment.provider), "balancer", None)
            if balancer is None:
                continue
            for replica in balancer.snapshot():
                metrics.set_in_flight(name, replica["replica"], replica["in_flight"])
                metrics.set_breaker_open(name, replica["replica"], replica["state"] == "open")

    async def budgets() -> None:
        current = policy()
        for team, spec in current.document.teams.items():
            if not spec.budgets:
                continue
            for window in await limiter.snapshot(plans.get(current, team)):
                if window.spec.kind != "budget" or window.key_id is not None:
                    continue
                shown = window.as_dict()
                metrics.set_budget_remaining(
                    team, window.spec.window, window.spec.unit, float(shown["remaining"])
                )

    metrics.add_updater(health)
    metrics.add_updater(budgets)
    metrics.add_updater(lambda: metrics.set_ledger(ledger.backlog_rows, ledger.lag_seconds))

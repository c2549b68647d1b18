"""GET /metrics on a live gateway: every documented family, and scrape-time gauges."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import GatewayFactory, sim_policy

REQUIRED = {
    "tollgate_requests",
    "tollgate_tokens",
    "tollgate_cost_usd",
    "tollgate_cost_saved_usd",
    "tollgate_ttft_seconds",
    "tollgate_time_per_output_token_seconds",
    "tollgate_request_duration_seconds",
    "tollgate_gateway_overhead_seconds",
    "tollgate_slo_requests",
    "tollgate_goodput_ratio",
    "tollgate_cache_requests",
    "tollgate_budget_rejections",
    "tollgate_budget_remaining",
    "tollgate_upstream_errors",
    "tollgate_breaker_open",
    "tollgate_in_flight",
    "tollgate_ledger_backlog",
    "tollgate_ledger_lag_seconds",
}


async def test_metrics_families_and_gauges(make_gateway: GatewayFactory) -> None:
    policy = sim_policy().replace(
        "  search:\n    routes: [chat, embed]\n",
        "  search:\n    routes: [chat, embed]\n    budgets: [{tokens: 1000, window: day}]\n",
    )
    gateway = await make_gateway(policy)
    await gateway.client().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=10
    )
    response = await gateway.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert set(families) >= REQUIRED, REQUIRED - set(families)
    remaining = [
        s for s in families["tollgate_budget_remaining"].samples if s.labels["team"] == "search"
    ]
    assert remaining and remaining[0].value < 1000
    assert remaining[0].labels["window"] == "day" and remaining[0].labels["unit"] == "tokens"
    breakers = families["tollgate_breaker_open"].samples
    assert {s.labels["deployment"] for s in breakers} >= {"sim-chat", "sim-embed"}
    assert all(s.value == 0 for s in breakers)

"""GET /metrics on a live gateway: every documented family, and scrape-time gauges."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import GatewayFactory, sim_policy
from tests.unit.test_metrics import EXPORTED_FAMILIES


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
    assert set(families) >= EXPORTED_FAMILIES, EXPORTED_FAMILIES - set(families)
    remaining = [
        s for s in families["tollgate_budget_remaining"].samples if s.labels["team"] == "search"
    ]
    assert remaining and remaining[0].value < 1000
    assert remaining[0].labels["window"] == "day" and remaining[0].labels["unit"] == "tokens"
    breakers = families["tollgate_breaker_open"].samples
    assert {s.labels["deployment"] for s in breakers} >= {"sim-chat", "sim-embed"}
    assert all(s.value == 0 for s in breakers)

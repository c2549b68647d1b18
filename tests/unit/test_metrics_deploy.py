"""The monitoring deployment agrees with the code: the dashboard queries only metrics the gateway
exports, Prometheus scrapes the replicas docker-compose.yml runs, Grafana's files are mounted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.record import RequestRecord


@dataclass(slots=True)
class TimedRecord(RequestRecord):
    overhead_ms: float | None = None


ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/tollgate.json"


async def exported_names() -> set[str]:
    metrics = Metrics()
    metrics.observe(
        TimedRecord(
            "r",
            0.0,
            route="chat",
            deployment="d",
            team="t",
            status="ok",
            slo_met=True,
            cache="hit",
            prompt_tokens=1,
            completion_tokens=5,
            cost_usd=0.1,
            cost_saved_usd=0.1,
            stream=True,
            ttft_ms=50.0,
            total_ms=90.0,
            overhead_ms=0.2,
        )
    )
    metrics.observe(RequestRecord("r", 0.0, route="chat", status="rejected_budget", team="t"))
    metrics.upstream_error("d", "upstream_timeout")
    metrics.set_budget_remaining("t", "day", "usd", 1.0)
    metrics.set_breaker_open("d", None, False)
    metrics.set_in_flight("d", "r", 0)
    text = (await metrics.render()).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return found


async def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = await exported_names()
    used = {n for e in expressions(dashboard) for n in re.findall(r"tollgate_[a-z_]+", e)}
    assert used, "no queries found"
    assert used <= names, used - names
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("spend per team", "goodput per route", "ttft p95 per deployment", "cache hit"):
        assert wanted in titles
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"][0]
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_runs_prometheus_and_grafana_on_the_replicas() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in targets} == {"gateway-1", "gateway-2"}
    assert all(t.endswith(":8080") for t in targets) and set(targets) <= {
        f"{name}:8080" for name in services
    }
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in compose["volumes"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/dashboards/" + DASHBOARD.name

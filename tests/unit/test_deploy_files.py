"""docker-compose.yml, the Dockerfile and nginx.conf, checked by reading them.

No Docker engine runs on our machines, so the mistakes `docker compose config` or a first `up`
would catch are caught here: dangling references, missing files, commands our CLI would refuse,
settings the gateway does not know, and a policy that does not load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from gateway.cli import build_parser
from gateway.policy.loader import load_policy
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict) and services
    return services


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the Tollgate image."""
    return {n: s for n, s in _services(compose).items() if s.get("image") == "tollgate:latest"}


def test_every_service_has_an_image_and_known_keys(compose: dict[str, Any]) -> None:
    allowed = {
        "build",
        "image",
        "command",
        "environment",
        "volumes",
        "healthcheck",
        "restart",
        "depends_on",
        "ports",
        "expose",
        "entrypoint",
        "deploy",
    }
    for name, service in _services(compose).items():
        assert "image" in service or "build" in service, name
        assert set(service) <= allowed, f"{name}: unexpected keys {set(service) - allowed}"
        if service.get("build") is not None:
            assert (REPO / service["build"] / "Dockerfile").is_file(), name


def test_depends_on_points_at_services_with_what_the_condition_needs(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = rule.get("condition", "service_started")
            assert condition in CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"


def test_volumes_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in _services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} uses undeclared volume {source}"


def test_tollgate_commands_parse_with_our_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name, service in _ours(compose).items():
        args = parser.parse_args(service["command"])
        assert args.command in {"serve", "sim"}, name


def test_gateway_environment_is_known_to_settings(compose: dict[str, Any]) -> None:
    fields = {f"TOLLGATE_{name.upper()}" for name in Settings.model_fields}
    gateways = {n: s for n, s in _ours(compose).items() if s["command"][0] == "serve"}
    assert len(gateways) == 2, "two gateway replicas"
    for name, service in gateways.items():
        environment = service["environment"]
        unknown = {k for k in environment if k.startswith("TOLLGATE_")} - fields
        assert not unknown, f"{name}: {unknown}"
        assert environment["TOLLGATE_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert environment["TOLLGATE_REDIS_URL"].startswith("redis://")
        assert "healthcheck" in service


def test_the_compose_policy_loads_and_points_at_compose_services(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    gateway = next(s for s in _ours(compose).values() if s["command"][0] == "serve")
    container_dir = gateway["environment"]["TOLLGATE_POLICY"]
    assert container_dir.startswith("/app/")
    policy = load_policy(REPO / container_dir.removeprefix("/app/"))
    for provider in policy.document.providers.values():
        for url in getattr(provider, "base_urls", []):
            host, port = urlparse(url).hostname, urlparse(url).port
            assert host in services, f"{url}: no service {host}"
            pool = services[host]
            assert str(port) in pool["command"], f"{url}: {host} does not listen on {port}"


def test_nginx_balances_the_gateway_replicas(compose: dict[str, Any]) -> None:
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    servers = set(re.findall(r"server\s+([\w.-]+):(\d+)", conf))
    gateways = {n for n, s in _ours(compose).items() if s["command"][0] == "serve"}
    assert {host for host, _ in servers} == gateways
    assert "proxy_buffering off" in conf  # streams must pass through unbuffered


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"

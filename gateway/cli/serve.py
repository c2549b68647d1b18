"""``tollgate serve``: run the gateway."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gateway import logs
from gateway.errors import PolicyError
from gateway.settings import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve", help="run the gateway (the embedded default needs no setup)"
    )
    parser.add_argument("--policy", type=Path, help="policy directory (TOLLGATE_POLICY; policies/)")
    parser.add_argument("--host", help="bind address (TOLLGATE_HOST; 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (TOLLGATE_PORT; 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (TOLLGATE_WORKERS; 1)")
    parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    parser.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        name: value
        for name in ("policy", "host", "port", "workers")
        if (value := getattr(args, name)) is not None
    }
    if args.no_migrate:
        overrides["migrate"] = False
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    logs.configure(settings.log_level)
    # Imported here so `tollgate --help` and the other commands stay quick to start.
    from gateway.policy.loader import load_policy

    try:
        policy = load_policy(settings.policy)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if settings.workers > 1 and not settings.redis_url:
        print(
            "--workers above 1 needs TOLLGATE_REDIS_URL: budgets, limits and routing state kept "
            "in process would not be shared between workers, so limits would be multiplied.",
            file=sys.stderr,
        )
        return 2
    url = settings.resolved_database_url()
    from gateway.auth.demo import ensure_demo_key
    from gateway.auth.store import KeyStore
    from gateway.db.engine import create_engine, session_factory
    from gateway.db.migrate import MigrationFailed, upgrade_in_subprocess

    async def prepare() -> str | None:
        if settings.migrate:
            # In a child process: Alembic would otherwise stay imported in this one, which goes
            # on to serve (or to supervise the workers) for as long as it runs.
            await upgrade_in_subprocess(url, log_level=settings.log_level)
        if policy.team(settings.demo_team) is None:
            return None
        engine = create_engine(url)
        try:
            store = KeyStore(session_factory(engine))
            return await ensure_demo_key(store, settings.data_dir, settings.demo_team)
        finally:
            await engine.dispose()

    try:
        demo_key = asyncio.run(prepare())
    except MigrationFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    base_url = f"http://{_display_host(settings.host)}:{settings.port}/v1"
    print(f"Tollgate serving on {base_url}", flush=True)
    if demo_key:
        print(f"Demo key (team {settings.demo_team}): {demo_key}", flush=True)
    _serve(settings)
    return 0


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """What uvicorn is given, one worker or several."""
    from gateway.cli.http_protocol import GatewayHttpProtocol

    return {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        # Longer than clients keep idle connections (httpx, so the openai SDK: 5 s; load
        # balancers: 60 s), so the client always closes first. With uvicorn's default of 5 s a
        # client reusing a connection just as the gateway closed it lost the request.
        "timeout_keep_alive": settings.keep_alive_s,
        "loop": "uvloop",
        # uvicorn's httptools protocol, writing each connection's output once per loop
        # iteration (a JSON answer's head and body in one write(2)) and telling the billed
        # endpoints when a client leaves (see gateway/cli/http_protocol.py).
        "http": GatewayHttpProtocol,
        "ws": "none",  # the gateway serves no WebSockets
        "server_header": False,
        # Nothing in the gateway reads the client's address, so X-Forwarded-* need no
        # rewriting: one ASGI layer less on every request.
        "proxy_headers": False,
    }


def _serve(settings: Settings) -> None:
    import uvicorn

    common = uvicorn_options(settings)
    if settings.workers == 1:
        from gateway.app import create_app

        # Migrations already ran above.
        app = create_app(settings.model_copy(update={"migrate": False}), handle_signals=True)
        uvicorn.Server(uvicorn.Config(app, **common)).run()  # type: ignore[arg-type]
        return
    # Workers build their own app from the environment: hand them the resolved settings.
    for name, value in settings.model_dump().items():
        if value is not None:
            os.environ[f"TOLLGATE_{name.upper()}"] = str(value)
    os.environ["TOLLGATE_MIGRATE"] = "false"
    from gateway.metrics import workers_dir

    # Workers write their metrics to files in one directory, so any worker's /metrics shows all.
    with workers_dir():
        uvicorn.run(
            "gateway.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )

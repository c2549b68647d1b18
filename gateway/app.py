"""Assembling the application: ``create_app(settings)`` builds everything in one place.

The lifespan builds one :class:`Services` object (no globals) and hangs it on ``app.state``;
handlers reach it through ``gateway.api.deps``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from gateway import gauges
from gateway.api import admin, health, openai, reports
from gateway.api import metrics as metrics_api
from gateway.api.completions import CompletionEndpoints
from gateway.api.context import RequestContext
from gateway.api.failures import note_error
from gateway.auth.resolver import KeyResolver
from gateway.auth.store import KeyStore
from gateway.budget import Limiter, MemoryLimiter, RedisLimiter
from gateway.busy_poll import STATE_KEY as BUSY_POLL
from gateway.busy_poll import BusyPoll
from gateway.cache import PromptCache
from gateway.db.engine import AsyncEngine, create_engine, ping, session_factory
from gateway.db.migrate import upgrade
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.heap_trim import (
    LOADING_MAPS_FROM,
    SERVING_MAPS_FROM,
    HeapTrimmer,
    map_blocks_from,
)
from gateway.ledger.queries import SpendQueries
from gateway.ledger.writer import LedgerWriter
from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.pipeline.background import Background
from gateway.policy.loader import load_policy
from gateway.policy.schema import Policy
from gateway.policy.store import PolicyStore
from gateway.pricing import PriceTables
from gateway.providers.base import Upstream
from gateway.providers.registry import Upstreams
from gateway.record import RequestRecord
from gateway.routing import Breakers, Router, RoutingStats, StatsSync
from gateway.settings import Settings
from gateway.state import StateStore
from gateway.tokens import TokenCounter

log = logging.getLogger("tollgate")
# The requests that are billed: one ledger row each (listing models costs nothing).
_LEDGERED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request may need, built once per process by the lifespan."""

    settings: Settings
    policies: PolicyStore
    upstreams: Upstreams
    engine: AsyncEngine
    key_store: KeyStore
    keys: KeyResolver
    state: StateStore
    prices: PriceTables
    limiter: Limiter
    cache: PromptCache
    background: Background
    metrics: Metrics
    ledger: LedgerWriter
    spend: SpendQueries
    router: Router
    routing_sync: StatsSync
    pipeline: Pipeline

    def finish(self, record: RequestRecord) -> None:
        """Account for a finished request, once: before its response completes."""
        if record.finished:
            return
        record.finished = True
        if record.route is not None and record.slo_met is not None:
            self.router.stats.judged(record.route, record.slo_met)
        if record.path.startswith("/v1/"):
            self.metrics.observe(record)
        if record.path in _LEDGERED:
            try:
                self.ledger.append_record(record)
            except OSError as exc:
                log.error(
                    "ledger spool write failed",
                    extra={"fields": {"request_id": record.request_id, "error": str(exc)}},
                )

    def reload_policy(self) -> Policy:
        """Load the policy again; on success new requests use it (in-flight ones keep theirs)."""
        policy = self.policies.reload()
        log.info("policy reloaded", extra={"fields": {"sources": list(policy.sources)}})
        return policy

    async def readiness(self) -> dict[str, dict[str, Any]]:
        policy = self.policies.current
        checks: dict[str, dict[str, Any]] = {
            "policy": {
                "ok": True,
                "routes": len(policy.document.routes),
                "sources": list(policy.sources),
            }
        }
        started = time.perf_counter()
        try:
            await asyncio.wait_for(ping(self.engine), timeout=2.0)
            checks["database"] = {
                "ok": True,
                "backend": self.engine.dialect.name,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        except Exception as exc:  # any failure to answer means not ready; say which kind
            checks["database"] = {"ok": False, "error": type(exc).__name__}
        checks["state"] = await self.state.check()
        checks["budget"] = self.limiter.status()
        return checks


async def build_services(settings: Settings) -> Services:
    """Open every connection and build the request pipeline."""
    policies = PolicyStore(settings.policy, load_policy(settings.policy))
    prices = PriceTables()
    prices.get(policies.current)  # reads litellm's cost map now, not on a request

    def reprice(_old: Policy, new: Policy) -> None:
        prices.get(new)

    policies.on_swap.append(reprice)
    database_url = settings.resolved_database_url()
    if settings.migrate:
        await upgrade(database_url)
    engine = create_engine(database_url)
    key_store = KeyStore(session_factory(engine))
    upstreams = Upstreams(policies.current, grace_s=settings.shutdown_grace_s + 60)
    policies.on_swap.append(lambda _old, new: upstreams.update(new))
    state = StateStore(settings.redis_url, settings.redis_prefix)
    limiter: Limiter = (
        RedisLimiter(state.redis, settings.redis_prefix, scripts=state.scripts)
        if state.redis is not None
        else MemoryLimiter(settings.redis_prefix)
    )
    cache = PromptCache.build(
        state.redis, settings.redis_prefix, memory_max_bytes=settings.cache_memory_bytes
    )
    background = Background()
    routing_stats = RoutingStats()
    breakers = Breakers()
    router = Router(routing_stats, breakers, random.Random())
    routing_sync = StatsSync(
        routing_stats, state.redis, settings.redis_prefix, settings.replica_name()
    )
    metrics = Metrics()
    ledger = LedgerWriter(settings.resolved_ledger_dir(), database_url, settings.replica_name())
    await ledger.start()

    def name_labels(_old: Policy | None, new: Policy) -> None:
        document = new.document
        metrics.bind_names(
            routes=document.routes, deployments=document.models, teams=document.teams
        )

    name_labels(None, policies.current)
    policies.on_swap.append(name_labels)
    finish_hook: list[Callable[[RequestRecord], None]] = []

    def current_upstreams() -> Mapping[str, Upstream]:
        return upstreams.clients

    pipeline = Pipeline(
        policy=lambda: policies.current,
        upstreams=current_upstreams,
        tokens=TokenCounter(),
        prices=prices,
        limiter=limiter,
        cache=cache,
        finish=lambda record: finish_hook[0](record),
        background=background,
        metrics=metrics,
        router=router,
        stats=routing_stats,
        breakers=breakers,
        count_exactly_below_bytes=settings.count_exactly_below_bytes,
    )
    services = Services(
        settings=settings,
        policies=policies,
        upstreams=upstreams,
        engine=engine,
        key_store=key_store,
        keys=KeyResolver(key_store, ttl_s=settings.key_cache_ttl_s),
        state=state,
        prices=prices,
        limiter=limiter,
        cache=cache,
        background=background,
        metrics=metrics,
        ledger=ledger,
        spend=SpendQueries(engine),
        router=router,
        routing_sync=routing_sync,
        pipeline=pipeline,
    )
    finish_hook.append(services.finish)
    gauges.install(
        metrics,
        policy=lambda: policies.current,
        upstreams=current_upstreams,
        breakers=breakers,
        limiter=limiter,
        plans=pipeline.plans,
        ledger=ledger,
    )
    return services


async def close_services(services: Services) -> None:
    await services.background.drain()
    await services.metrics.aclose()
    # Drained into the database before exit; what cannot be sent stays in the spool for the
    # next start (or a sibling replica) to replay.
    await services.ledger.aclose()
    await services.routing_sync.aclose()
    await services.upstreams.aclose()
    await services.cache.aclose()
    await services.state.aclose()
    await services.engine.dispose()


def create_app(settings: Settings, *, handle_signals: bool = False) -> FastAPI:
    """The ASGI application. ``handle_signals`` installs SIGHUP = reload the policy."""

    # Off when the access log is, or when the log level hides info lines.
    level = logging.getLevelName(settings.log_level.upper())
    access = AccessLog() if settings.access_log and level in (logging.DEBUG, logging.INFO) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, BusyPoll] | None]:
        manage_heap = settings.heap_trim_s > 0
        if manage_heap:
            # The tokenizers' big tables get mappings of their own while they load, not holes
            # in the heap (gateway/heap_trim.py says why).
            map_blocks_from(LOADING_MAPS_FROM)
        services = await build_services(settings)
        app.state.services = services
        await asyncio.to_thread(services.pipeline.warm_tokenizers)
        if manage_heap:
            map_blocks_from(SERVING_MAPS_FROM)
        # Everything allocated so far lives as long as the process: move it out of the
        # collector's sight, so full collections under load scan only request garbage (they took
        # 70-80 ms with ~145k objects tracked, 1-2 ms after this).
        gc.collect()
        gc.freeze()
        await services.metrics.start()
        services.routing_sync.start()
        trimmer = HeapTrimmer(settings.heap_trim_s) if manage_heap else None
        if trimmer is not None:
            trimmer.start()
        loop = asyncio.get_running_loop()
        if handle_signals:
            loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, services)
        # The lifespan state reaches uvicorn's connection protocols (app_state): the serving
        # protocol arms the poller from there.
        poller = BusyPoll(loop, settings.busy_poll_us / 1e6) if settings.busy_poll_us else None
        try:
            yield {BUSY_POLL: poller} if poller is not None else None
        finally:
            if poller is not None:
                poller.close()
            if handle_signals:
                loop.remove_signal_handler(signal.SIGHUP)
            if trimmer is not None:
                await trimmer.aclose()
            await close_services(services)
            if access is not None:
                access.flush()

    app = _GatewayApp(
        access,
        title="Tollgate",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks look up three global providers on every request;
        # the gateway exports Prometheus metrics and its access log instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(metrics_api.router)
    app.include_router(reports.operators)
    app.include_router(reports.own)
    app.include_router(openai.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # An error no handler expected, in a FastAPI route: Starlette's outermost layer answers
    # with this (in the OpenAI format) and re-raises for the request context to log.
    app.add_exception_handler(Exception, _unexpected_error)
    return app


class _GatewayApp(FastAPI):
    """FastAPI with the request context and the three billed endpoints outside its stack.

    Those endpoints are nearly all the traffic and use nothing of Starlette's error, telemetry
    and body-limit layers, which otherwise wrap every request and every ``send`` (the raw lane
    does its own error handling and body limit). Everything else (admin, reports, health,
    metrics, models, unknown paths) still goes through FastAPI's whole stack.
    """

    def __init__(self, access_log: AccessLog | None, **kwargs: Any) -> None:
        self._access_log = access_log
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        lane = CompletionEndpoints(super().build_middleware_stack(), services=self._services)
        return RequestContext(lane, access_log=self._access_log, finish=self._finish)

    def _services(self) -> Services:
        found: Services = self.state.services
        return found

    def _finish(self, record: RequestRecord) -> None:
        services: Services | None = getattr(self.state, "services", None)
        if services is not None:
            services.finish(record)


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn workers (``--workers N``): settings come from TOLLGATE_* variables."""
    return create_app(Settings(), handle_signals=True)


def _reload_on_signal(services: Services) -> None:
    try:
        services.reload_policy()
    except GatewayError as exc:
        log.error("policy reload refused", extra={"fields": {"error": exc.message}})
    except Exception as exc:  # PolicyError: the old policy keeps serving
        problems = getattr(exc, "problems", [str(exc)])
        log.error(
            "policy reload refused; the old policy keeps serving",
            extra={"fields": {"problems": problems}},
        )


def _error_response(request: Request, error: GatewayError) -> Response:
    record: RequestRecord | None = request.scope.get("state", {}).get("record")
    if record is not None:
        note_error(record, error)
    headers = dict(error.headers)
    return Response(error.body(), error.status, headers=headers, media_type="application/json")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: GatewayError = NotFound(
            f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"
        )
    elif exc.status_code == 405:
        error = InvalidRequest(
            f"Method {request.method} is not allowed for {request.url.path}.",
            status=405,
            code="method_not_allowed",
        )
    else:
        error = GatewayError(str(exc.detail), status=exc.status_code)
    return _error_response(request, error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return _error_response(request, InvalidRequest("The request is malformed."))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    record: RequestRecord | None = request.scope.get("state", {}).get("record")
    request_id = record.request_id if record is not None else "unknown"
    error = GatewayError(f"The gateway failed to handle this request (request id {request_id}).")
    return Response(error.body(), error.status, media_type="application/json")

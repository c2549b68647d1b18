"""The request path, top to bottom. Orchestration only: each step lives in its own package.

::

    resolve the route          policy snapshot taken once      pure
    token budgeting            budget.completion_limit         pure (may clamp max_tokens)
    single flight              cache                           in process
    count prompt tokens        tokens                          CPU; big prompts off the loop
    choose deployments         routing                         pure, over in-memory stats
    cache lookup + reserve     budget (Hold) + cache           1 Redis round trip (one Lua call)
    call the upstream          providers.<kind>                failover re-enters extend/call
    ledger                     finish                          before the response completes
    settle + cache write       closing                         1 Redis round trip, after it

The cache lookup rides in the reserve's Lua call when the store can carry it (Redis, a team-scoped
cache key, a limited budget plan); otherwise it is a round trip of its own before counting.

The pipeline never imports the web framework: it returns a :class:`JsonResult` or a
:class:`StreamResult` and the API layer renders it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.auth.resolver import Principal
from gateway.budget import (
    NO_COMPLETION,
    Charge,
    Completion,
    Limiter,
    PlanCache,
    Probe,
    completion_limit,
)
from gateway.cache import CacheEntry, CachePlan, PendingWrite, PromptCache
from gateway.errors import (
    GatewayError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
)
from gateway.metrics import Metrics
from gateway.pipeline.accounting import Hold
from gateway.pipeline.attempts import Attempt
from gateway.pipeline.background import Background
from gateway.pipeline.closing import settle_and_write
from gateway.pipeline.options import RequestOptions, parse_options
from gateway.pipeline.prompt_count import PromptCount
from gateway.pipeline.relay import StreamRelay
from gateway.pipeline.results import JsonResult, StreamResult
from gateway.policy.schema import Deployment, Policy, Route
from gateway.pricing import Price, PriceTables
from gateway.providers.base import Endpoint, Upstream, UpstreamReply, UpstreamRequest, Usage
from gateway.record import RequestRecord
from gateway.routing import Breakers, Router, RoutingStats, affinity_key
from gateway.tokens import TokenCounter

Finish = Callable[[RequestRecord], None]


class Pipeline:
    """Serves one OpenAI request for an authenticated principal."""

    def __init__(
        self,
        *,
        policy: Callable[[], Policy],
        upstreams: Callable[[], Mapping[str, Upstream]],
        tokens: TokenCounter,
        prices: PriceTables,
        limiter: Limiter,
        cache: PromptCache,
        finish: Finish,
        background: Background,
        metrics: Metrics,
        router: Router,
        stats: RoutingStats,
        breakers: Breakers,
        count_exactly_below_bytes: int = 64 * 1024,
    ) -> None:
        self._policy = policy
        self._upstreams = upstreams
        self._tokens = tokens
        self._prices = prices
        self._limiter = limiter
        # Public: the budget endpoints read the same plans the requests were held to.
        self.plans = PlanCache()
        self._cache = cache
        self._finish = finish
        self._background = background
        self._metrics = metrics
        self._router = router
        self._stats = stats
        self._breakers = breakers
        self._count_below = count_exactly_below_bytes

    @property
    def tokens(self) -> TokenCounter:
        return self._tokens

    def warm_tokenizers(self) -> None:
        """Load the encodings requests count with (each route's first candidate's model), so
        the first request does not load one on the event loop. Blocking: run it in a thread."""
        document = self._policy().document
        for route in document.routes.values():
            if route.candidates:
                self._tokens.encoding(document.models[route.candidates[0]].model)

    async def handle(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        principal: Principal,
        record: RequestRecord,
        headers: Mapping[str, str],
    ) -> JsonResult | StreamResult:
        # One snapshot of each for the whole request: a reload mid-request changes nothing here.
        policy = self._policy()
        upstreams = self._upstreams()
        route_name: str = body["model"]
        route = self._route(policy, route_name, principal, record)
        options = parse_options(headers)
        record.tags = options.tags
        stream = record.stream = bool(body.get("stream"))
        user = body.get("user")
        record.end_user = user if isinstance(user, str) else None

        team = policy.team(principal.team)
        if endpoint is Endpoint.EMBEDDINGS:
            completion = NO_COMPLETION
        else:
            completion = completion_limit(body, team, policy.document.defaults)
            completion.apply(body)
        client_wants_usage = _wants_usage(body)
        if stream and not client_wants_usage:
            # Completion tokens are billed from the upstream's usage, so ask for it on every
            # stream; the extra usage-only chunk is removed before the client sees it.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}

        hold = Hold(self._limiter, self.plans.get(policy, principal.team), record)
        out_headers = {"x-tollgate-route": route_name}
        cache_args = (policy.document, route_name, endpoint.value, body, headers, principal.team)
        if self._bounded(record):
            # A prompt too big to count up front is also too big to hash on the event loop.
            cache_plan = await self._cache.plan_off_loop(*cache_args)
        else:
            cache_plan = self._cache.plan(*cache_args)
        if cache_plan is not None:
            record.cache = cache_plan.status
            out_headers["x-tollgate-cache"] = cache_plan.status
            hit = await self._cache.lookup(cache_plan, probe=hold.probes)
            if hit is not None:
                return await self._serve_hit(
                    cache_plan, hit, hold, record, out_headers, stream, client_wants_usage
                )
        try:
            # On success the hold is settled (JSON) or owned by the stream relay.
            return await self._call(
                endpoint,
                body,
                route,
                policy,
                upstreams,
                completion,
                hold,
                record,
                out_headers,
                cache_plan,
                client_wants_usage,
                options,
            )
        except BaseException as exc:
            if cache_plan is not None:
                self._cache.abandon(cache_plan)
            if isinstance(exc, asyncio.CancelledError):
                # The client left: the release must outlive this cancelled task.
                self._background.spawn(hold.release())
            else:
                await hold.release()
            raise

    def _route(
        self, policy: Policy, name: str, principal: Principal, record: RequestRecord
    ) -> Route:
        record.requested_model = name
        route = policy.route(name)
        if route is None:
            raise NotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if not policy.team_may_use(principal.team, name):
            raise PermissionDenied(
                f"Team '{principal.team}' may not use the model '{name}'.", param="model"
            )
        record.route = name
        return route

    async def _serve_hit(
        self,
        plan: CachePlan,
        hit: CacheEntry,
        hold: Hold,
        record: RequestRecord,
        headers: dict[str, str],
        stream: bool,
        client_wants_usage: bool,
        counted: bool = False,
    ) -> JsonResult | StreamResult:
        """A cached answer: no reservation and no upstream tokens; rpm still applies.

        ``counted``: the probe that found it counted it already."""
        if not counted:
            charge = (
                Charge(hit.prompt_tokens + hit.completion_tokens, 0)
                if plan.settings.count_hits
                else None
            )
            await hold.count_hit(charge)
        headers.update(hold.limit_headers())
        record.status, record.cache = "cache_hit", "hit"
        record.deployment = hit.deployment or None
        record.prompt_tokens, record.completion_tokens = hit.prompt_tokens, hit.completion_tokens
        record.cached_tokens = hit.cached_tokens
        record.cost_usd, record.cost_saved_usd = 0.0, hit.cost_usd
        headers["x-tollgate-cache"] = "hit"
        headers["x-tollgate-cost-usd"] = "0"
        record.ttft_ms = (time.perf_counter() - record.started) * 1000
        record.overhead_ms = record.ttft_ms
        if stream:
            self._finish(record)
            return StreamResult(
                self._cache.stream_events(hit, include_usage=client_wants_usage), headers
            )
        return JsonResult(200, self._cache.replay_json(hit), "application/json", headers)

    async def _call(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        route: Route,
        policy: Policy,
        upstreams: Mapping[str, Upstream],
        completion: Completion,
        hold: Hold,
        record: RequestRecord,
        headers: dict[str, str],
        cache_plan: CachePlan | None,
        client_wants_usage: bool,
        options: RequestOptions,
    ) -> JsonResult | StreamResult:
        prices = self._prices.get(policy)
        # Counted with the first candidate's encoding: choosing needs the count first.
        first = policy.document.models[route.candidates[0]]
        prompt = await self._count_prompt(endpoint, body, first, record)
        prompt_tokens = record.prompt_tokens = prompt.tokens
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        plan = self._router.plan(
            record.route or "",
            route,
            prices,
            prompt_tokens,
            expected_output_tokens=asked if isinstance(asked, int) else None,
            slo_ttft_override_ms=options.slo_ttft_ms,
            pinned=options.deployment,
        )
        if plan.probe or plan.predicted_miss:
            record.extra["routing"] = "probe" if plan.probe else "predicted_miss"
        affinity = affinity_key(body) if endpoint is not Endpoint.EMBEDDINGS else None
        last_error: GatewayError | None = None
        refused_by_breaker: list[str] = []
        upstream_s = 0.0  # time spent waiting on upstreams, to tell the gateway's own apart
        for step in plan.attempts:
            deployment_name = step.deployment
            if not self._breakers.allow(deployment_name):
                refused_by_breaker.append(deployment_name)
                continue
            deployment = policy.document.models[deployment_name]
            price = prices[deployment_name]
            estimate = Charge(
                prompt_tokens + completion.max_tokens,
                price.cost_nanos(prompt_tokens, completion.max_tokens),
            )
            if record.attempts == 0:
                if cache_plan is not None and cache_plan.probe_token is not None:
                    try:
                        hit, counted = await self._probe(cache_plan, hold, estimate, route)
                    except (QuotaExceeded, RateLimited):
                        if prompt.exact:
                            raise
                        # The bound did not fit (the refused probe dropped its lock again): look
                        # up alone, then reserve the exact count below.
                        prompt_tokens, estimate = await self._exactly(prompt, completion, price)
                        record.prompt_tokens = prompt_tokens
                        hit = await self._cache.lookup_unprobed(cache_plan)
                        counted = False
                    if hit is not None:
                        return await self._serve_hit(
                            cache_plan,
                            hit,
                            hold,
                            record,
                            headers,
                            record.stream,
                            client_wants_usage,
                            counted,
                        )
                if hold.held is None and not hold.unenforced:
                    try:
                        await hold.reserve(estimate, route.timeout_s)
                    except (QuotaExceeded, RateLimited):
                        if prompt.exact:
                            raise
                        # The bound did not fit: the exact count may.
                        prompt_tokens, estimate = await self._exactly(prompt, completion, price)
                        record.prompt_tokens = prompt_tokens
                        await hold.reserve(estimate, route.timeout_s)
            elif not await hold.extend(estimate, route.timeout_s):
                continue  # the budget cannot cover this dearer candidate: skip it
            record.estimated_cost_usd = estimate.usd
            record.attempts += 1
            record.deployment, record.provider = deployment_name, deployment.provider
            request = UpstreamRequest(
                endpoint=endpoint,
                body={**body, "model": deployment.model},
                stream=record.stream,
                timeout_s=route.timeout_s,
                request_id=record.request_id,
                affinity_key=affinity,
            )
            upstream = upstreams[deployment.provider]
            attempt = Attempt(self._stats, self._breakers, plan, record, deployment_name)
            called = time.perf_counter()
            try:
                if record.stream:
                    opened = await upstream.open_stream(request)
                else:
                    opened = await upstream.send(request)
            except UpstreamError as exc:
                last_error = exc
                record.error_type = exc.code
                attempt.failed(exc)
                self._metrics.upstream_error(deployment_name, exc.code)
                if not exc.retryable:
                    raise
                continue
            except BaseException:
                # Cancelled (the client left): the attempt still ends, once.
                attempt.succeeded(0, complete=False)
                raise
            finally:
                upstream_s += time.perf_counter() - called
            headers["x-tollgate-deployment"] = deployment_name
            headers["x-tollgate-attempts"] = str(record.attempts)
            # Only now: a stream's head goes out long before its first token, so they are off
            # that token's path (see Hold).
            headers.update(hold.limit_headers())
            if isinstance(opened, UpstreamReply):
                result = await self._reply(
                    opened, record, headers, hold, price, cache_plan, prompt, deployment.model
                )
                record.overhead_ms = (record.ttft_ms or 0.0) - upstream_s * 1000
                attempt.succeeded(record.completion_tokens)
                return result
            record.replica, record.error_type = opened.replica, None
            headers["x-tollgate-cost-usd"] = f"{estimate.usd:.9f}"
            relay = StreamRelay(
                opened,
                record,
                hold=hold,
                price=price,
                model=deployment.model,
                client_wants_usage=client_wants_usage,
                cache=self._cache,
                cache_plan=cache_plan,
                prompt=prompt,
                tokens=self._tokens,
                finish=self._finish,
                background=self._background,
                metrics=self._metrics,
                attempt=attempt,
                upstream_s=upstream_s,
                timeout_s=route.timeout_s,
            )
            return StreamResult(relay.__aiter__(), headers)
        if last_error is not None:
            raise last_error
        if cache_plan is not None and cache_plan.probe_token is not None:
            # No candidate got as far as the reserve that was to carry the lookup.
            hit = await self._cache.lookup_unprobed(cache_plan)
            if hit is not None:
                return await self._serve_hit(
                    cache_plan, hit, hold, record, headers, record.stream, client_wants_usage
                )
        if refused_by_breaker and record.attempts == 0:
            wait = min(self._breakers.retry_after_s(name) for name in refused_by_breaker)
            raise ServiceUnavailable(
                f"Every deployment of route '{record.route}' is cooling down after failures.",
                code="all_deployments_unavailable",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )
        raise _budget_exhausted(record)

    @staticmethod
    async def _exactly(
        prompt: PromptCount, completion: Completion, price: Price
    ) -> tuple[int, Charge]:
        """The prompt counted exactly (in a worker thread) and the estimate it makes."""
        tokens = await prompt.exactly_async()
        return tokens, Charge(
            tokens + completion.max_tokens, price.cost_nanos(tokens, completion.max_tokens)
        )

    async def _probe(
        self,
        plan: CachePlan,
        hold: Hold,
        estimate: Charge,
        route: Route,
    ) -> tuple[CacheEntry | None, bool]:
        """The cache lookup and the reserve in one round trip: (the hit or None, whether the
        hit was counted already). On a miss the hold is made unless another replica held the
        key's lock (then the lookup waited for its answer and the caller reserves now)."""
        probe = Probe(
            plan.key,
            plan.lock,
            plan.probe_token or "",
            plan.lock_ms,
            count_hit=not plan.settings.count_hits,
        )
        found = await hold.reserve_probing(estimate, route.timeout_s, probe)
        if found is None:  # the store did not answer: as a lookup would, go ahead alone
            return await self._cache.probed(plan, None, locked=False, busy=False), False
        busy = found.value is None and not found.locked
        hit = await self._cache.probed(plan, found.value, locked=found.locked, busy=busy)
        return hit, found.value is not None and found.admission is not None

    async def _reply(
        self,
        reply: UpstreamReply,
        record: RequestRecord,
        headers: dict[str, str],
        hold: Hold,
        price: Price,
        cache_plan: CachePlan | None,
        counted: PromptCount,
        model: str,
    ) -> JsonResult:
        record.replica, record.error_type = reply.replica, None
        record.ttft_ms = record.total_ms = (time.perf_counter() - record.started) * 1000
        if reply.status >= 400:
            # The upstream refused the request itself: nothing was generated.
            record.status, record.error_type = "upstream_client_error", f"upstream_{reply.status}"
            await hold.release()
            if cache_plan is not None:
                self._cache.abandon(cache_plan)
            return JsonResult(reply.status, reply.body, reply.content_type, headers)
        usage = reply.usage
        if usage is None:
            usage = self._usage_from_text(reply.body, model, await counted.exactly_async())
        record.prompt_tokens = usage.prompt_tokens or await counted.exactly_async()
        record.completion_tokens, record.cached_tokens = (
            usage.completion_tokens,
            usage.cached_tokens,
        )
        prompt, completion, cached = (
            record.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        )
        charge = Charge(prompt + completion, price.cost_nanos(prompt, completion, cached))
        # The ledger records exactly what the budget was charged (nano-dollars, rounded up).
        record.cost_usd = charge.usd
        headers["x-tollgate-cost-usd"] = f"{record.cost_usd:.9f}"
        keep = None
        if cache_plan is not None:
            keep = functools.partial(
                self._keep_json,
                cache_plan,
                reply.body,
                record.deployment or "",
                record.cost_usd,
                (prompt, completion, cached),
            )
        # Settling only gives back what the hold over-reserved, so the answer need not wait
        # for it: the budget stays conservative until the settle lands a moment later. Nor for
        # its cache entry: identical requests wait on this one's flight until it is kept.
        self._background.spawn(settle_and_write(hold, self._cache, charge, None, keep=keep))
        return JsonResult(reply.status, reply.body, reply.content_type, headers)

    def _keep_json(
        self,
        plan: CachePlan,
        body: bytes,
        deployment: str,
        cost_usd: float,
        usage: tuple[int, int, int],
    ) -> PendingWrite | None:
        """The answer's cache entry, made and handed to the cache (its flight ends here)."""
        try:
            entry = PromptCache.entry_from_json(
                plan, body, deployment=deployment, cost_usd=cost_usd, usage=usage
            )
        except BaseException:
            self._cache.abandon(plan)  # the requests waiting on this one go ahead alone
            raise
        return self._cache.finish(plan, entry)

    def _usage_from_text(self, body: bytes, model: str, prompt_tokens: int) -> Usage:
        """An upstream that reports no usage: count the answer's text ourselves (with the
        deployment's upstream model's tokenizer)."""
        try:
            parsed: Any = orjson.loads(body)
            texts = [
                (choice.get("message") or {}).get("content") or choice.get("text") or ""
                for choice in parsed.get("choices") or []
            ]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            texts = []
        completion = sum(self._tokens.count_text(t, model) for t in texts if isinstance(t, str))
        return Usage(prompt_tokens, completion, 0)

    def _bounded(self, record: RequestRecord) -> bool:
        """Whether this request's prompt is reserved on a bound rather than counted first."""
        return 0 < self._count_below <= record.body_bytes

    async def _count_prompt(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        deployment: Deployment,
        record: RequestRecord,
    ) -> PromptCount:
        model = deployment.model
        tokens = self._tokens
        if endpoint is Endpoint.CHAT:
            messages, tools, functions = body["messages"], body.get("tools"), body.get("functions")
            count = functools.partial(tokens.count_chat, messages, model, tools, functions)
            if self._bounded(record):
                return PromptCount(record.body_bytes, False, count)
            exact = await tokens.count_chat_async(messages, model, tools, functions)
        else:
            field = body["prompt"] if endpoint is Endpoint.COMPLETIONS else body["input"]
            count = functools.partial(tokens.count_prompt, field, model)
            if self._bounded(record):
                return PromptCount(record.body_bytes, False, count)
            exact = await tokens.count_prompt_async(field, model)
        return PromptCount(exact, True, count)


def _budget_exhausted(record: RequestRecord) -> GatewayError:
    return QuotaExceeded(
        f"No candidate of route '{record.route}' fits in the remaining budget.",
        code="insufficient_quota",
    )


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))

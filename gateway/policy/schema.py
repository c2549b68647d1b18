"""The policy schema. Unknown keys are errors everywhere (``extra="forbid"``).

This module only describes and validates shapes; ``loader.py`` turns YAML files into a
:class:`PolicyDocument` (with file:line in errors) and checks the cross-references.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- prices -----------------------------------------------------------------------------------


class TokenPricing(Strict):
    """An explicit per-token price, in US dollars per million tokens."""

    input_per_mtok: NonNegativeFloat
    output_per_mtok: NonNegativeFloat = 0.0


class TcoCost(Strict):
    """The brief's total-cost-of-ownership model for a self-hosted GPU pool."""

    server_usd: NonNegativeFloat
    amortization_years: PositiveFloat = 4
    hosting_usd_per_year: NonNegativeFloat = 0
    software_usd_per_year: NonNegativeFloat = 0
    gpus_per_server: Annotated[int, Field(gt=0)] = 8
    power_kw: NonNegativeFloat = 0
    usd_per_kwh: NonNegativeFloat = 0
    tokens_per_s_per_gpu: PositiveFloat
    prefill_tokens_per_s_per_gpu: PositiveFloat | None = None
    utilization: Fraction = 0.6
    cloud_usd_per_hour: PositiveFloat | None = None


class TcoPricing(Strict):
    tco: TcoCost


class HourlyPricing(Strict):
    """A rented GPU pool: a price per hour for ``gpus`` GPUs."""

    usd_per_hour: PositiveFloat
    gpus: Annotated[int, Field(gt=0)] = 1
    tokens_per_s_per_gpu: PositiveFloat
    prefill_tokens_per_s_per_gpu: PositiveFloat | None = None
    utilization: Fraction = 0.6


ProviderPricing = TcoPricing | HourlyPricing | TokenPricing | Literal["free"]
ModelPricing = TokenPricing | Literal["free"]


# --- providers --------------------------------------------------------------------------------


class OpenAIProvider(Strict):
    """Any OpenAI-compatible HTTP API: OpenAI itself, vLLM, TGI, Ollama, a `tollgate sim`."""

    type: Literal["openai"]
    base_urls: Annotated[list[str], Field(min_length=1)]
    api_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    pricing: ProviderPricing | None = None
    connect_timeout_s: PositiveFloat = 5.0
    max_connections: Annotated[int, Field(gt=0)] = 256
    # Requests in flight per replica before the next ones queue (briefly) or are shed.
    max_in_flight: Annotated[int, Field(gt=0)] | None = None

    @field_validator("base_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [url.rstrip("/") for url in urls]


class LiteLLMProvider(Strict):
    """Any provider litellm supports (Anthropic, Bedrock, Vertex, Gemini, Azure...)."""

    type: Literal["litellm"]
    api_key: str | None = None
    api_base: str | None = None
    params: dict[str, object] = Field(default_factory=dict)
    pricing: ProviderPricing | None = None


class SimProvider(Strict):
    """The built-in simulated model, served in process."""

    type: Literal["sim"]
    ttft_ms: NonNegativeFloat = 0
    tokens_per_s: NonNegativeFloat = 0  # 0 = as fast as possible
    error_rate: Annotated[float, Field(ge=0, le=1)] = 0
    output: str | None = None
    pricing: ProviderPricing | None = None


Provider = Annotated[OpenAIProvider | LiteLLMProvider | SimProvider, Field(discriminator="type")]


# --- deployments, routes, teams ---------------------------------------------------------------


class Deployment(Strict):
    """One model on one provider (a key under ``models:``)."""

    provider: Name
    model: Annotated[str, Field(min_length=1)]
    pricing: ModelPricing | None = None


class Slo(Strict):
    """A route's latency target, met by a request when both bounds hold."""

    ttft_ms: PositiveFloat | None = None
    total_ms: PositiveFloat | None = None
    percentile: Annotated[float, Field(gt=0, lt=100)] = 95


class CacheSpec(Strict):
    """Exact-match prompt caching (top level for every route, or per route to override)."""

    enabled: bool = True
    ttl_s: PositiveFloat = 600
    scope: Literal["team", "shared"] = "team"
    mode: Literal["deterministic", "all"] = "deterministic"
    count_hits: bool = False
    max_entry_bytes: Annotated[int, Field(gt=0)] = 262_144


Strategy = Literal["cheapest-within-slo", "fastest", "ordered", "weighted"]


class Route(Strict):
    """A name clients put in ``model``, served by one of its candidate deployments."""

    candidates: Annotated[list[Name], Field(min_length=1)]
    slo: Slo | None = None
    strategy: Strategy = "cheapest-within-slo"
    # For strategy: weighted, the share of traffic per candidate (missing ones weigh 1).
    weights: dict[Name, NonNegativeFloat] = Field(default_factory=dict)
    # Extra attempts after the first; default: every other candidate once.
    retries: Annotated[int, Field(ge=0)] | None = None
    timeout_s: PositiveFloat = 60.0
    cache: CacheSpec | None = None


Window = Literal["minute", "hour", "day", "week", "month"]
RedisDownMode = Literal["fail_open", "fail_closed"]


class Budget(Strict):
    """A cap on tokens or on dollars per UTC calendar window (exactly one of the two)."""

    tokens: Annotated[int, Field(gt=0)] | None = None
    usd: PositiveFloat | None = None
    window: Window

    @model_validator(mode="after")
    def _one_unit(self) -> Budget:
        if (self.tokens is None) == (self.usd is None):
            raise ValueError("a budget sets exactly one of tokens or usd")
        return self


class Limits(Strict):
    """Rate limits per minute: requests and tokens."""

    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None


class Team(Strict):
    routes: list[str] = Field(default_factory=lambda: ["*"])
    keys: list[Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]] = Field(
        default_factory=list
    )
    budgets: list[Budget] = Field(default_factory=list)
    limits: Limits | None = None
    # Default max_tokens when a request sets none, and the cap when it asks for more.
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    on_cap: Literal["clamp", "reject"] = "clamp"
    # A budget every key of the team gets on its own, under the team's.
    keys_budget: Budget | None = None
    on_redis_down: RedisDownMode | None = None


class Defaults(Strict):
    """What applies when neither a request nor its team says otherwise."""

    max_tokens: Annotated[int, Field(gt=0)] = 4096
    on_redis_down: RedisDownMode = "fail_closed"


class PolicyDocument(Strict):
    """The merged contents of every policy file."""

    providers: dict[Name, Provider] = Field(default_factory=dict)
    models: dict[Name, Deployment] = Field(default_factory=dict)
    routes: dict[Name, Route] = Field(default_factory=dict)
    teams: dict[Name, Team] = Field(default_factory=dict)
    cache: CacheSpec | None = None
    defaults: Defaults = Field(default_factory=Defaults)


class Policy:
    """A validated, cross-checked policy with the lookups the request path needs.

    Immutable once built; a reload builds a new one and swaps the reference, so a request keeps
    the policy it started with.
    """

    __slots__ = ("document", "sources", "static_keys")

    def __init__(self, document: PolicyDocument, sources: tuple[str, ...]) -> None:
        self.document = document
        self.sources = sources
        self.static_keys: dict[str, str] = {
            key.removeprefix("sha256:"): team_name
            for team_name, team in document.teams.items()
            for key in team.keys
        }

    def route(self, name: str) -> Route | None:
        return self.document.routes.get(name)

    def team(self, name: str) -> Team | None:
        return self.document.teams.get(name)

    def team_may_use(self, team: str, route: str) -> bool:
        spec = self.document.teams.get(team)
        if spec is None:
            return False
        return "*" in spec.routes or route in spec.routes

    def routes_for(self, team: str) -> list[str]:
        return [name for name in self.document.routes if self.team_may_use(team, name)]

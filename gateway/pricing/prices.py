"""The price of every deployment, computed once per policy, and exact integer charges.

Resolution order for a deployment (a key under ``models:``):

1. its own ``pricing`` (per-token, or ``free``);
2. its provider's ``pricing`` (per-token, TCO, hourly, or ``free``);
3. a ``sim`` provider with neither: free;
4. litellm's bundled cost map, by the deployment's ``model`` (see :class:`CostMap`).

A deployment priced by none of them is a policy problem (:func:`policy_problems`).

Money on the request path is an ``int`` of nano-dollars (1e-9 USD), so a budget adds and compares
exactly. A :class:`Price` keeps each per-token price as integer femto-dollars (1e-15 USD), rounded
up once when the table is built, so a charge is a few integer multiplications and one ceiling
division, never below the true cost: budgets never undercount.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Literal

from gateway.errors import PolicyError
from gateway.policy.schema import (
    Deployment,
    HourlyPricing,
    LiteLLMProvider,
    OpenAIProvider,
    Policy,
    PolicyDocument,
    Provider,
    SimProvider,
    TcoPricing,
    TokenPricing,
)
from gateway.policy.yaml_nodes import render_path
from gateway.pricing.costmap import CostMap, bundled_cost_map, provider_for_host
from gateway.pricing.tco import hourly_cost, tco_cost

PriceSource = Literal["explicit", "tco", "hourly", "cost_map", "free"]
PricePath = tuple[str | int, ...]
PriceProblem = tuple[PricePath, str]

NANOS_PER_USD = 1_000_000_000
_FEMTOS_PER_NANO = 1_000_000
_FEMTOS_PER_USD = Decimal(10) ** 15


def _femtos(usd: float) -> int:
    # repr() is the shortest decimal that round-trips, so 1.5e-07 is exactly 150,000,000 femtos
    # rather than the binary float's 149,999,999.99999998...
    return int((Decimal(repr(usd)) * _FEMTOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def usd_to_nanos(usd: float) -> int:
    """Dollars as integer nano-dollars, rounded up (for limits and estimates; not per request)."""
    return int((Decimal(repr(usd)) * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def nanos_to_usd(nanos: int) -> float:
    """Nano-dollars back to dollars, for headers, logs and the ledger."""
    return nanos / NANOS_PER_USD


@dataclass(frozen=True, slots=True)
class Price:
    """What one token costs on one deployment, in US dollars.

    ``cached_input_usd_per_token`` applies to prompt tokens the upstream served from its prompt
    cache (OpenAI's ``prompt_tokens_details.cached_tokens``); ``None`` when the source knows no
    cheaper rate, and those tokens are charged the input price. ``basis`` says where the price
    came from (the cost-map entry, the provider name), for explanations.
    """

    input_usd_per_token: float
    output_usd_per_token: float
    source: PriceSource
    cached_input_usd_per_token: float | None = None  # None: the input price
    basis: str = ""
    input_femtos: int = field(init=False, repr=False, compare=False)
    output_femtos: int = field(init=False, repr=False, compare=False)
    cached_input_femtos: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cached = self.cached_input_usd_per_token
        # Frozen, so the derived integers are set the one way a frozen dataclass allows.
        object.__setattr__(self, "input_femtos", _femtos(self.input_usd_per_token))
        object.__setattr__(self, "output_femtos", _femtos(self.output_usd_per_token))
        object.__setattr__(
            self,
            "cached_input_femtos",
            self.input_femtos if cached is None else _femtos(cached),
        )

    @classmethod
    def per_mtok(
        cls, input_per_mtok: float, output_per_mtok: float, source: PriceSource, basis: str = ""
    ) -> Price:
        """A price given in dollars per million tokens (the policy's unit)."""
        million = Decimal(1_000_000)
        return cls(
            input_usd_per_token=float(Decimal(repr(input_per_mtok)) / million),
            output_usd_per_token=float(Decimal(repr(output_per_mtok)) / million),
            source=source,
            basis=basis,
        )

    @property
    def usd_per_mtok_input(self) -> float:
        """The input price in dollars per million tokens."""
        return self.input_usd_per_token * 1_000_000

    @property
    def usd_per_mtok_output(self) -> float:
        """The output price in dollars per million tokens."""
        return self.output_usd_per_token * 1_000_000

    def cost_nanos(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The charge in nano-dollars, rounded up. Hot path: integer arithmetic only.

        ``cached_tokens`` are part of ``prompt_tokens`` (as in OpenAI's usage) and are charged
        the cached-input rate. For a reservation, pass the estimated output as
        ``completion_tokens``.
        """
        if cached_tokens > prompt_tokens:
            cached_tokens = prompt_tokens
        femtos = (
            (prompt_tokens - cached_tokens) * self.input_femtos
            + cached_tokens * self.cached_input_femtos
            + completion_tokens * self.output_femtos
        )
        return -(-femtos // _FEMTOS_PER_NANO)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """:meth:`cost_nanos` in dollars (for ``x-tollgate-cost-usd`` and the ledger)."""
        return self.cost_nanos(prompt_tokens, completion_tokens, cached_tokens) / NANOS_PER_USD


FREE = Price(0.0, 0.0, "free")

PriceTable = dict[str, Price]


def resolve_price(
    deployment: Deployment, provider: Provider | None, cost_map: CostMap
) -> Price | None:
    """A deployment's price by the resolution order above, or ``None`` if nothing prices it."""
    own = deployment.pricing
    if own == "free":
        return FREE
    if isinstance(own, TokenPricing):
        return Price.per_mtok(own.input_per_mtok, own.output_per_mtok, "explicit", "models")
    pricing = provider.pricing if provider is not None else None
    if pricing == "free":
        return Price(0.0, 0.0, "free", basis=deployment.provider)
    if isinstance(pricing, TokenPricing):
        return Price.per_mtok(
            pricing.input_per_mtok, pricing.output_per_mtok, "explicit", deployment.provider
        )
    if isinstance(pricing, TcoPricing):
        pool = tco_cost(pricing.tco)
        return Price.per_mtok(
            pool.usd_per_mtok_input, pool.usd_per_mtok_output, "tco", deployment.provider
        )
    if isinstance(pricing, HourlyPricing):
        pool = hourly_cost(pricing)
        return Price.per_mtok(
            pool.usd_per_mtok_input, pool.usd_per_mtok_output, "hourly", deployment.provider
        )
    if isinstance(provider, SimProvider):
        return Price(0.0, 0.0, "free", basis=deployment.provider)
    entry = cost_map.lookup(deployment.model, _litellm_provider(deployment, provider))
    if entry is None:
        return None
    return Price(
        entry.input_usd_per_token,
        entry.output_usd_per_token,
        "cost_map",
        cached_input_usd_per_token=entry.cached_input_usd_per_token,
        basis=entry.key,
    )


def price_table(policy: Policy | PolicyDocument, cost_map: CostMap | None = None) -> PriceTable:
    """Every deployment's :class:`Price`, by its key under ``models:``. Pure; no I/O but the
    cost map's one-time read.

    Raises :class:`PolicyError` if a deployment has no price; the loader reports that earlier
    (:func:`policy_problems`), so a loaded policy always has a complete table.
    """
    document = policy.document if isinstance(policy, Policy) else policy
    costs = cost_map if cost_map is not None else bundled_cost_map()
    table: PriceTable = {}
    problems: list[PriceProblem] = []
    for name, deployment in document.models.items():
        price = resolve_price(deployment, document.providers.get(deployment.provider), costs)
        if price is None:
            problems.append(_missing(name, deployment, costs))
        else:
            table[name] = price
    if problems:
        raise PolicyError(format_problems(problems))
    return table


class PriceTables:
    """The price table of the policy in force, rebuilt when the policy object changes.

    ``get(policy)`` on the request path is one identity check while the policy is unchanged.
    Build the first table at startup and on every policy swap (``get(new)`` in the store's
    hook) so no request pays for it. ``(policy, table)`` is one tuple assigned at once, so a
    reader never pairs a new policy with an old table.
    """

    __slots__ = ("_cost_map", "_current")

    def __init__(self, cost_map: CostMap | None = None) -> None:
        self._cost_map = cost_map
        self._current: tuple[Policy | None, PriceTable] = (None, {})

    def get(self, policy: Policy) -> PriceTable:
        """The table for ``policy`` (built on first sight of a new policy object)."""
        current = self._current
        if current[0] is policy:
            return current[1]
        table = price_table(policy, self._cost_map)
        self._current = (policy, table)
        return table


def policy_problems(
    policy: Policy | PolicyDocument, cost_map: CostMap | None = None
) -> list[PriceProblem]:
    """Deployments with no price known anywhere, as ``(path, message)`` pairs.

    ``path`` is the YAML path of the deployment's ``pricing`` (``("models", name, "pricing")``),
    so the loader can put ``file:line`` in front: ``f"{where(path)}: {message}"``.
    """
    document = policy.document if isinstance(policy, Policy) else policy
    costs = cost_map if cost_map is not None else bundled_cost_map()
    return [
        _missing(name, deployment, costs)
        for name, deployment in document.models.items()
        if deployment.provider in document.providers
        and resolve_price(deployment, document.providers[deployment.provider], costs) is None
    ]


def format_problems(
    problems: list[PriceProblem], where: Callable[[PricePath], str] | None = None
) -> list[str]:
    """``path: message`` lines; ``where`` renders a path (the loader's adds ``file:line``)."""
    render = where if where is not None else render_path
    return [f"{render(path)}: {message}" for path, message in problems]


def _missing(name: str, deployment: Deployment, cost_map: CostMap) -> PriceProblem:
    why = "not in litellm's cost map" if cost_map.available else "litellm's cost map not found"
    message = (
        f'no price for "{deployment.model}" ({why}); '
        "set pricing: {input_per_mtok, output_per_mtok} or pricing: free"
    )
    return ("models", name, "pricing"), message


def _litellm_provider(deployment: Deployment, provider: Provider | None) -> str | None:
    if isinstance(provider, OpenAIProvider):
        return provider_for_host(provider.base_urls[0])
    if isinstance(provider, LiteLLMProvider):
        named = provider.params.get("custom_llm_provider")
        return named if isinstance(named, str) else None
    return None

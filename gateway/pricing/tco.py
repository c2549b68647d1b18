"""What a GPU pool costs: the brief's total-cost-of-ownership model, turned into $ per token.

For a self-hosted server (``pricing: {tco: ...}``), per server and per year::

    yearly cost     = server_usd / amortization_years + hosting + software
                      + power_kw x 8,760 h x usd_per_kwh
    per GPU-hour    = yearly cost / gpus_per_server / 8,760 h
    $ per 1M output = per GPU-hour / (tokens_per_s_per_gpu x utilization x 3,600 s) x 10^6
    $ per 1M input  = the same with prefill_tokens_per_s_per_gpu (default 10x the output figure)

A rented pool (``pricing: {usd_per_hour, gpus, ...}``) starts at per GPU-hour = usd_per_hour / gpus.

Break-even: how many months of renting an equivalent cloud instance pay for the server::

    break-even months = server_usd / (cloud $ per month - on-prem opex per month)

with a month of 8,760 / 12 = 730 h of rent, and opex = hosting + software + power (everything
but the server itself). When the opex is as high as the rent the server never pays for itself
(``None``). The comparator is ``cloud_usd_per_hour`` for an instance with as many GPUs as the
server; without one, the brief's range of $50-$100 per hour for 8 GPUs, scaled to the server's
GPU count, and the midpoint ($75/h for 8 GPUs) is used; both ends are available from
:func:`break_even_months`.

Sizing (the brief's rule): servers = ceil(instances x GPUs per instance / GPUs per server).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import ValidationError

from gateway.policy.schema import HourlyPricing, PolicyDocument, TcoCost, TcoPricing

HOURS_PER_YEAR = 8_760
MONTHS_PER_YEAR = 12
HOURS_PER_MONTH = HOURS_PER_YEAR / MONTHS_PER_YEAR  # 730
SECONDS_PER_HOUR = 3_600
PREFILL_FACTOR = 10  # prefill throughput when a pool does not state it: 10x decode
# The brief: "Cloud GPU hosting costs roughly $50-$100 per hour for an 8-GPU instance".
BRIEF_CLOUD_USD_PER_HOUR = (50.0, 100.0)
BRIEF_CLOUD_GPUS = 8

PoolKind = Literal["tco", "hourly"]
PoolPricing = TcoCost | HourlyPricing


@dataclass(frozen=True, slots=True)
class PoolCost:
    """A GPU pool's cost, per server (or rented instance) and per year, and its token prices.

    The breakdown sums to ``total_usd_per_year``; a rented pool has only ``rent_usd_per_year``.
    ``break_even_months`` is ``None`` for a rented pool (nothing to pay back) and when the
    server never pays for itself.
    """

    kind: PoolKind
    gpus_per_server: int
    capex_usd: float
    amortized_capex_usd_per_year: float
    hosting_usd_per_year: float
    software_usd_per_year: float
    power_usd_per_year: float
    rent_usd_per_year: float
    total_usd_per_year: float
    usd_per_gpu_year: float
    opex_usd_per_gpu_year: float
    usd_per_gpu_hour: float
    usd_per_mtok_output: float
    usd_per_mtok_input: float
    cloud_usd_per_hour: float | None
    break_even_months: float | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Sizing:
    """The brief's sizing rule applied to a pool: how many servers, and what they cost."""

    instances: int
    gpus_per_instance: int
    servers: int
    servers_capex_usd: float
    servers_usd_per_year: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values."""
        return asdict(self)


def usd_per_mtok(usd_per_gpu_hour: float, tokens_per_s_per_gpu: float, utilization: float) -> float:
    """Dollars per million tokens for a GPU at a throughput and a share of time busy."""
    tokens_per_hour = tokens_per_s_per_gpu * utilization * SECONDS_PER_HOUR
    return usd_per_gpu_hour / tokens_per_hour * 1_000_000


def prefill_throughput(pricing: PoolPricing) -> float:
    """Input tokens per second per GPU: as stated, else 10x the output figure."""
    if pricing.prefill_tokens_per_s_per_gpu is not None:
        return pricing.prefill_tokens_per_s_per_gpu
    return pricing.tokens_per_s_per_gpu * PREFILL_FACTOR


def default_cloud_usd_per_hour(gpus: int) -> tuple[float, float]:
    """The brief's $50-$100/h for 8 GPUs, scaled to ``gpus`` GPUs: (low, high)."""
    low, high = BRIEF_CLOUD_USD_PER_HOUR
    scale = gpus / BRIEF_CLOUD_GPUS
    return low * scale, high * scale


def break_even_months(cost: TcoCost, cloud_usd_per_hour: float) -> float | None:
    """Months of renting ``cloud_usd_per_hour`` after which owning the server is cheaper.

    ``None`` when the on-prem opex is at least the rent: the server never pays for itself.
    """
    cloud_per_month = cloud_usd_per_hour * HOURS_PER_MONTH
    opex_per_month = _opex_per_year(cost) / MONTHS_PER_YEAR
    saving = cloud_per_month - opex_per_month
    if saving <= 0:
        return None
    return cost.server_usd / saving


def tco_cost(cost: TcoCost) -> PoolCost:
    """Cost and token prices of a self-hosted pool from its TCO block."""
    amortized = cost.server_usd / cost.amortization_years
    power = _power_per_year(cost)
    total = amortized + cost.hosting_usd_per_year + cost.software_usd_per_year + power
    gpus = cost.gpus_per_server
    per_gpu_hour = total / gpus / HOURS_PER_YEAR
    if cost.cloud_usd_per_hour is not None:
        comparator = cost.cloud_usd_per_hour
    else:
        comparator = sum(default_cloud_usd_per_hour(gpus)) / 2
    return PoolCost(
        kind="tco",
        gpus_per_server=gpus,
        capex_usd=cost.server_usd,
        amortized_capex_usd_per_year=amortized,
        hosting_usd_per_year=cost.hosting_usd_per_year,
        software_usd_per_year=cost.software_usd_per_year,
        power_usd_per_year=power,
        rent_usd_per_year=0.0,
        total_usd_per_year=total,
        usd_per_gpu_year=total / gpus,
        opex_usd_per_gpu_year=_opex_per_year(cost) / gpus,
        usd_per_gpu_hour=per_gpu_hour,
        usd_per_mtok_output=usd_per_mtok(per_gpu_hour, cost.tokens_per_s_per_gpu, cost.utilization),
        usd_per_mtok_input=usd_per_mtok(per_gpu_hour, prefill_throughput(cost), cost.utilization),
        cloud_usd_per_hour=comparator,
        break_even_months=break_even_months(cost, comparator),
    )


def hourly_cost(pricing: HourlyPricing) -> PoolCost:
    """Cost and token prices of a rented pool priced per hour."""
    per_gpu_hour = pricing.usd_per_hour / pricing.gpus
    rent = pricing.usd_per_hour * HOURS_PER_YEAR
    return PoolCost(
        kind="hourly",
        gpus_per_server=pricing.gpus,
        capex_usd=0.0,
        amortized_capex_usd_per_year=0.0,
        hosting_usd_per_year=0.0,
        software_usd_per_year=0.0,
        power_usd_per_year=0.0,
        rent_usd_per_year=rent,
        total_usd_per_year=rent,
        usd_per_gpu_year=rent / pricing.gpus,
        opex_usd_per_gpu_year=rent / pricing.gpus,
        usd_per_gpu_hour=per_gpu_hour,
        usd_per_mtok_output=usd_per_mtok(
            per_gpu_hour, pricing.tokens_per_s_per_gpu, pricing.utilization
        ),
        usd_per_mtok_input=usd_per_mtok(
            per_gpu_hour, prefill_throughput(pricing), pricing.utilization
        ),
        cloud_usd_per_hour=None,
        break_even_months=None,
    )


def pool_cost(pricing: PoolPricing) -> PoolCost:
    """:func:`tco_cost` or :func:`hourly_cost`, whichever ``pricing`` is."""
    if isinstance(pricing, TcoCost):
        return tco_cost(pricing)
    return hourly_cost(pricing)


def servers_needed(instances: int, gpus_per_instance: int, gpus_per_server: int) -> int:
    """The brief's sizing rule: instances x GPUs per instance / GPUs per server, rounded up."""
    if instances < 0 or gpus_per_instance <= 0 or gpus_per_server <= 0:
        raise ValueError("instances must be >= 0 and GPU counts > 0")
    # Integer ceiling division: no float rounding can lose a server.
    return -(-(instances * gpus_per_instance) // gpus_per_server)


def sizing(cost: PoolCost, instances: int, gpus_per_instance: int) -> Sizing:
    """How many of a pool's servers ``instances`` model instances need, and what they cost."""
    servers = servers_needed(instances, gpus_per_instance, cost.gpus_per_server)
    return Sizing(
        instances=instances,
        gpus_per_instance=gpus_per_instance,
        servers=servers,
        servers_capex_usd=servers * cost.capex_usd,
        servers_usd_per_year=servers * cost.total_usd_per_year,
    )


def priced_pools(document: PolicyDocument) -> dict[str, PoolPricing]:
    """Every provider priced as a GPU pool (TCO or hourly), by provider name."""
    pools: dict[str, PoolPricing] = {}
    for name, provider in document.providers.items():
        pricing = provider.pricing
        if isinstance(pricing, TcoPricing):
            pools[name] = pricing.tco
        elif isinstance(pricing, HourlyPricing):
            pools[name] = pricing
    return pools


def what_if_fields() -> frozenset[str]:
    """The names ``--what-if`` may change: any field of a TCO block or an hourly price."""
    return frozenset(TcoCost.model_fields) | frozenset(HourlyPricing.model_fields)


def with_changes(pricing: PoolPricing, changes: Mapping[str, object]) -> PoolPricing:
    """``pricing`` with the ``changes`` that apply to its kind, validated like the policy.

    Names that belong to the other kind (``usd_per_kwh`` for a rented pool) are ignored; a value
    the schema refuses raises :class:`ValueError` with pydantic's explanation.
    """
    relevant = {key: value for key, value in changes.items() if key in type(pricing).model_fields}
    if not relevant:
        return pricing
    try:
        return type(pricing).model_validate({**pricing.model_dump(), **relevant})
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(details) from None


def _power_per_year(cost: TcoCost) -> float:
    return cost.power_kw * HOURS_PER_YEAR * cost.usd_per_kwh


def _opex_per_year(cost: TcoCost) -> float:
    return cost.hosting_usd_per_year + cost.software_usd_per_year + _power_per_year(cost)

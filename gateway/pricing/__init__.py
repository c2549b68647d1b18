"""Prices: $/token for every deployment (explicit, litellm's cost map, or a GPU pool's TCO).

Never imports litellm: the cost map is read from the JSON file the litellm package ships.
"""

from gateway.pricing.costmap import CostEntry, CostMap, bundled_cost_map
from gateway.pricing.prices import (
    FREE,
    NANOS_PER_USD,
    Price,
    PriceProblem,
    PriceSource,
    PriceTable,
    PriceTables,
    format_problems,
    nanos_to_usd,
    policy_problems,
    price_table,
    resolve_price,
    usd_to_nanos,
)
from gateway.pricing.tco import PoolCost, Sizing, pool_cost, priced_pools, servers_needed, sizing

__all__ = [
    "FREE",
    "NANOS_PER_USD",
    "CostEntry",
    "CostMap",
    "PoolCost",
    "Price",
    "PriceProblem",
    "PriceSource",
    "PriceTable",
    "PriceTables",
    "Sizing",
    "bundled_cost_map",
    "format_problems",
    "nanos_to_usd",
    "policy_problems",
    "pool_cost",
    "price_table",
    "priced_pools",
    "resolve_price",
    "servers_needed",
    "sizing",
    "usd_to_nanos",
]

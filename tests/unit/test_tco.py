"""The brief's cost model (DESIGN.md), checked against figures worked out by hand.

Every expected value below is written out from the formulas, not computed by the code under test:
    yearly cost per server = server / amortization years + hosting + software + kW x 8,760 x $/kWh
    per GPU-hour           = yearly cost / GPUs per server / 8,760
    $ per 1M output tokens = per GPU-hour / (tokens/s/GPU x utilization x 3,600) x 10^6
    break-even months      = server / (cloud $/h x 730 - opex per month)
"""

from __future__ import annotations

import pytest

from gateway.policy.schema import HourlyPricing, PolicyDocument, TcoCost
from gateway.pricing.tco import (
    break_even_months,
    default_cloud_usd_per_hour,
    hourly_cost,
    priced_pools,
    servers_needed,
    sizing,
    tco_cost,
    what_if_fields,
    with_changes,
)

approx = pytest.approx

# The brief's TCO example with the pool of issue 4.
BRIEF_POOL = TcoCost(
    server_usd=320_000,
    amortization_years=4,
    hosting_usd_per_year=3_000,
    software_usd_per_year=4_500,
    gpus_per_server=8,
    power_kw=6.5,
    usd_per_kwh=0.12,
    tokens_per_s_per_gpu=2_400,
    prefill_tokens_per_s_per_gpu=24_000,
    utilization=0.6,
    cloud_usd_per_hour=98.0,
)

# The brief: "about $200,000 for an 8-GPU server; operating cost can fall to about $6,600 per GPU
# per year": 8 x 6,600 = $52,800 a year of hosting, power and the rest for the server.
BRIEF_200K_SERVER = TcoCost(
    server_usd=200_000,
    amortization_years=4,
    hosting_usd_per_year=52_800,
    gpus_per_server=8,
    tokens_per_s_per_gpu=2_400,
    utilization=0.6,
)


def test_yearly_breakdown_of_the_brief_tco_example() -> None:
    cost = tco_cost(BRIEF_POOL)
    assert cost.kind == "tco"
    assert cost.amortized_capex_usd_per_year == approx(80_000.0)  # 320,000 / 4
    assert cost.hosting_usd_per_year == approx(3_000.0)
    assert cost.software_usd_per_year == approx(4_500.0)
    assert cost.power_usd_per_year == approx(6_832.80)  # 6.5 kW x 8,760 h x $0.12
    assert cost.rent_usd_per_year == 0.0
    assert cost.total_usd_per_year == approx(94_332.80)  # 80,000 + 3,000 + 4,500 + 6,832.80
    assert cost.usd_per_gpu_year == approx(11_791.60)  # 94,332.80 / 8
    assert cost.opex_usd_per_gpu_year == approx(1_791.60)  # (3,000 + 4,500 + 6,832.80) / 8


def test_token_prices_of_the_brief_tco_example() -> None:
    cost = tco_cost(BRIEF_POOL)
    # 11,791.60 / 8,760 h = 1.3460731
    assert cost.usd_per_gpu_hour == approx(1.3460731, rel=1e-7)
    # 2,400 tok/s x 0.6 x 3,600 s = 5,184,000 tokens per GPU-hour: 1.3460731 / 5.184
    assert cost.usd_per_mtok_output == approx(0.25965915, rel=1e-7)
    # 24,000 tok/s prefill: ten times as many tokens, a tenth of the price
    assert cost.usd_per_mtok_input == approx(0.025965915, rel=1e-7)


def test_prefill_throughput_defaults_to_ten_times_decode() -> None:
    implicit = BRIEF_POOL.model_copy(update={"prefill_tokens_per_s_per_gpu": None})
    assert tco_cost(implicit).usd_per_mtok_input == approx(0.025965915, rel=1e-7)
    slower = BRIEF_POOL.model_copy(update={"prefill_tokens_per_s_per_gpu": 12_000})
    assert tco_cost(slower).usd_per_mtok_input == approx(0.05193183, rel=1e-7)


def test_break_even_of_the_brief_tco_example_against_its_comparator() -> None:
    cost = tco_cost(BRIEF_POOL)
    assert cost.cloud_usd_per_hour == 98.0
    # rent: 98 x 730 h = 71,540 a month; opex: 14,332.80 / 12 = 1,194.40 a month;
    # 320,000 / (71,540 - 1,194.40) = 320,000 / 70,345.60
    assert cost.break_even_months == approx(4.5489697, rel=1e-7)


def test_the_200k_server_at_6600_per_gpu_year() -> None:
    cost = tco_cost(BRIEF_200K_SERVER)
    assert cost.opex_usd_per_gpu_year == approx(6_600.0)
    assert cost.total_usd_per_year == approx(102_800.0)  # 200,000 / 4 + 52,800
    assert cost.usd_per_gpu_year == approx(12_850.0)
    assert cost.usd_per_gpu_hour == approx(1.4668950, rel=1e-7)  # 12,850 / 8,760
    # no comparator given: the midpoint of the brief's $50-100/h for 8 GPUs, $75/h;
    # 75 x 730 = 54,750 a month against 52,800 / 12 = 4,400: 200,000 / 50,350
    assert cost.cloud_usd_per_hour == 75.0
    assert cost.break_even_months == approx(3.9721946, rel=1e-7)


def test_break_even_at_both_ends_of_the_brief_cloud_range() -> None:
    low, high = default_cloud_usd_per_hour(8)
    assert (low, high) == (50.0, 100.0)
    # $50/h: 36,500 a month - 4,400 = 32,100 -> 200,000 / 32,100
    assert break_even_months(BRIEF_200K_SERVER, low) == approx(6.2305296, rel=1e-7)
    # $100/h: 73,000 - 4,400 = 68,600 -> 200,000 / 68,600
    assert break_even_months(BRIEF_200K_SERVER, high) == approx(2.9154519, rel=1e-7)


def test_the_default_comparator_scales_with_the_gpu_count() -> None:
    assert default_cloud_usd_per_hour(4) == (25.0, 50.0)
    four = BRIEF_200K_SERVER.model_copy(update={"gpus_per_server": 4})
    assert tco_cost(four).cloud_usd_per_hour == 37.5


def test_a_server_whose_opex_exceeds_the_rent_never_breaks_even() -> None:
    # $500,000 a year of hosting is 41,666.67 a month, more than 50 x 730 = 36,500 of rent
    costly = BRIEF_200K_SERVER.model_copy(update={"hosting_usd_per_year": 500_000})
    assert break_even_months(costly, 50.0) is None
    # exactly equal: 36,500 x 12 = 438,000 a year of opex against $50/h
    equal = BRIEF_200K_SERVER.model_copy(update={"hosting_usd_per_year": 438_000})
    assert break_even_months(equal, 50.0) is None


def test_hourly_pool_from_the_brief_cloud_price() -> None:
    rented = HourlyPricing(usd_per_hour=98.0, gpus=8, tokens_per_s_per_gpu=2_400, utilization=0.6)
    cost = hourly_cost(rented)
    assert cost.kind == "hourly"
    assert cost.usd_per_gpu_hour == approx(12.25)  # 98 / 8
    assert cost.rent_usd_per_year == approx(858_480.0)  # 98 x 8,760
    assert cost.total_usd_per_year == approx(858_480.0)
    assert cost.usd_per_mtok_output == approx(2.3630401, rel=1e-7)  # 12.25 / 5.184
    assert cost.usd_per_mtok_input == approx(0.23630401, rel=1e-7)  # prefill 10x by default
    assert cost.break_even_months is None  # nothing to pay back
    assert cost.capex_usd == 0.0


@pytest.mark.parametrize(
    ("instances", "gpus_per_instance", "gpus_per_server", "servers"),
    [
        (10, 2, 8, 3),  # 20 GPUs / 8 = 2.5 -> 3
        (8, 1, 8, 1),
        (9, 1, 8, 2),
        (4, 8, 8, 4),
        (3, 3, 4, 3),  # 9 / 4 = 2.25 -> 3
        (0, 4, 8, 0),
        (1_000_001, 8, 8, 1_000_001),  # exact for big counts (no float rounding)
    ],
)
def test_sizing_rule(
    instances: int, gpus_per_instance: int, gpus_per_server: int, servers: int
) -> None:
    assert servers_needed(instances, gpus_per_instance, gpus_per_server) == servers


def test_sizing_costs_the_servers() -> None:
    sized = sizing(tco_cost(BRIEF_POOL), instances=10, gpus_per_instance=2)
    assert sized.servers == 3
    assert sized.servers_capex_usd == approx(960_000.0)  # 3 x 320,000
    assert sized.servers_usd_per_year == approx(282_998.40)  # 3 x 94,332.80


def test_sizing_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        servers_needed(1, 0, 8)
    with pytest.raises(ValueError):
        servers_needed(-1, 1, 8)


def test_what_if_changes_only_fields_of_the_pool_kind() -> None:
    changed = with_changes(BRIEF_POOL, {"utilization": "0.8", "usd_per_kwh": "0.2"})
    assert isinstance(changed, TcoCost)
    cost = tco_cost(changed)
    assert cost.power_usd_per_year == approx(11_388.0)  # 6.5 x 8,760 x 0.2
    assert cost.total_usd_per_year == approx(98_888.0)
    # 98,888 / 8 / 8,760 = 1.4110731 per GPU-hour over 2,400 x 0.8 x 3,600 = 6,912,000 tokens
    assert cost.usd_per_mtok_output == approx(0.20414831, rel=1e-7)
    rented = HourlyPricing(usd_per_hour=98.0, gpus=8, tokens_per_s_per_gpu=2_400)
    assert with_changes(rented, {"usd_per_kwh": "0.2"}) is rented
    assert "usd_per_kwh" in what_if_fields()
    assert "usd_per_hour" in what_if_fields()


def test_what_if_values_are_validated_like_the_policy() -> None:
    with pytest.raises(ValueError, match="utilization"):
        with_changes(BRIEF_POOL, {"utilization": "1.5"})
    with pytest.raises(ValueError, match="server_usd"):
        with_changes(BRIEF_POOL, {"server_usd": "lots"})


def test_priced_pools_are_providers_with_tco_or_hourly_pricing() -> None:
    document = PolicyDocument.model_validate(
        {
            "providers": {
                "own": {
                    "type": "openai",
                    "base_urls": ["http://10.0.0.5/v1"],
                    "pricing": {"tco": BRIEF_POOL.model_dump()},
                },
                "rented": {
                    "type": "openai",
                    "base_urls": ["http://10.0.0.6/v1"],
                    "pricing": {"usd_per_hour": 98, "gpus": 8, "tokens_per_s_per_gpu": 2400},
                },
                "cloud": {"type": "openai", "base_urls": ["https://api.openai.com/v1"]},
                "token-priced": {
                    "type": "sim",
                    "pricing": {"input_per_mtok": 1, "output_per_mtok": 2},
                },
                "gratis": {"type": "sim", "pricing": "free"},
            }
        }
    )
    pools = priced_pools(document)
    assert list(pools) == ["own", "rented"]
    assert pools["own"] == BRIEF_POOL

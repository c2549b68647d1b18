"""Deployment prices: resolution order, litellm's shipped cost map, problems, exact charges."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import PolicyError
from gateway.policy.loader import load_policy
from gateway.policy.schema import Policy, PolicyDocument
from gateway.pricing import (
    FREE,
    CostMap,
    Price,
    PriceTables,
    bundled_cost_map,
    format_problems,
    nanos_to_usd,
    policy_problems,
    price_table,
    usd_to_nanos,
)

REPO = Path(__file__).resolve().parents[2]

OPENAI = {"type": "openai", "base_urls": ["https://api.openai.com/v1"]}
SELF_HOSTED = {"type": "openai", "base_urls": ["http://10.0.0.5:8000/v1"]}
TCO = {
    "server_usd": 320_000,
    "amortization_years": 4,
    "hosting_usd_per_year": 3_000,
    "software_usd_per_year": 4_500,
    "gpus_per_server": 8,
    "power_kw": 6.5,
    "usd_per_kwh": 0.12,
    "tokens_per_s_per_gpu": 2_400,
    "prefill_tokens_per_s_per_gpu": 24_000,
    "utilization": 0.6,
}


def policy(providers: dict[str, Any], models: dict[str, Any]) -> Policy:
    document = PolicyDocument.model_validate(
        {"providers": providers, "models": models, "routes": {"r": {"candidates": list(models)}}}
    )
    return Policy(document, sources=())


def one_price(provider: dict[str, Any], model: str, pricing: Any = None) -> Price:
    deployment: dict[str, Any] = {"provider": "p", "model": model}
    if pricing is not None:
        deployment["pricing"] = pricing
    return price_table(policy({"p": provider}, {"d": deployment}))["d"]


# --- litellm's bundled cost map ----------------------------------------------------------------


def test_gpt_4o_mini_from_the_shipped_cost_map() -> None:
    price = one_price(OPENAI, "gpt-4o-mini")
    assert price.source == "cost_map"
    assert price.input_usd_per_token == 1.5e-07
    assert price.output_usd_per_token == 6e-07
    assert price.cached_input_usd_per_token == 7.5e-08
    assert price.basis == "gpt-4o-mini"


def test_embedding_model_from_the_shipped_cost_map() -> None:
    price = one_price(OPENAI, "text-embedding-3-small")
    assert (price.input_usd_per_token, price.output_usd_per_token) == (2e-08, 0.0)
    assert price.source == "cost_map"


def test_anthropic_model_through_a_litellm_provider() -> None:
    litellm = {"type": "litellm"}
    prefixed = one_price(litellm, "anthropic/claude-haiku-4-5")
    bare = one_price(litellm, "claude-haiku-4-5")
    assert (prefixed.input_usd_per_token, prefixed.output_usd_per_token) == (1e-06, 5e-06)
    assert prefixed == bare
    assert prefixed.cached_input_usd_per_token == 1e-07


def test_fine_tune_gets_the_fine_tune_price_of_its_base() -> None:
    # OpenAI bills a fine-tuned gpt-4o-mini at $0.30/$1.20 per 1M, and the map says so.
    price = one_price(OPENAI, "ft:gpt-4o-mini-2024-07-18:acme::9abcdefg")
    assert price.basis == "ft:gpt-4o-mini-2024-07-18"
    assert (price.input_usd_per_token, price.output_usd_per_token) == (3e-07, 1.2e-06)


def test_fine_tune_of_a_base_without_a_fine_tune_price_gets_the_base_price() -> None:
    price = one_price(OPENAI, "ft:gpt-4o-mini:acme:support:abc123")
    assert price.basis == "gpt-4o-mini"
    assert (price.input_usd_per_token, price.output_usd_per_token) == (1.5e-07, 6e-07)


def test_cost_map_is_read_from_the_installed_litellm_package() -> None:
    path = bundled_cost_map().path
    assert path is not None
    assert path.name == "model_prices_and_context_window_backup.json"
    assert path.parent.name == "litellm"
    assert len(bundled_cost_map()) > 1000
    assert bundled_cost_map() is bundled_cost_map()


def write_map(tmp_path: Path, entries: dict[str, Any]) -> CostMap:
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps(entries))
    return CostMap(path)


def test_lookup_order_with_a_small_map(tmp_path: Path) -> None:
    costs = write_map(
        tmp_path,
        {
            "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "x"},
            "groq/llama-3.1-8b-instant": {
                "input_cost_per_token": 5e-08,
                "output_cost_per_token": 8e-08,
                "litellm_provider": "groq",
            },
            "llama-3.1-8b-instant": {
                "input_cost_per_token": 1.0,
                "output_cost_per_token": 1.0,
                "litellm_provider": "other",
            },
            "Mixed-Case-Model": {"input_cost_per_token": 2e-07, "litellm_provider": "openai"},
            "family-model": {"input_cost_per_token": 3e-07, "litellm_provider": "openai"},
            "dall-e-3": {"output_cost_per_image": 0.04, "litellm_provider": "openai"},
        },
    )
    # provider/model first: Groq's price, not another provider's for the same name
    groq = costs.lookup("llama-3.1-8b-instant", "groq")
    assert groq is not None and groq.key == "groq/llama-3.1-8b-instant"
    plain = costs.lookup("llama-3.1-8b-instant")
    assert plain is not None and plain.key == "llama-3.1-8b-instant"
    # case-insensitive, dated snapshots fall back to the family, per-image prices are no price
    mixed = costs.lookup("mixed-case-model")
    assert mixed is not None and mixed.output_usd_per_token == 0.0
    dated = costs.lookup("family-model-2025-01-31")
    assert dated is not None and dated.key == "family-model"
    compact = costs.lookup("family-model-20250131")
    assert compact is not None and compact.key == "family-model"
    assert costs.lookup("dall-e-3") is None
    assert costs.lookup("sample_spec") is None
    assert costs.providers >= {"groq", "openai", "other"}


def test_only_a_litellm_provider_prefix_is_stripped(tmp_path: Path) -> None:
    costs = write_map(
        tmp_path,
        {
            "Llama-3.1-8B-Instruct": {"input_cost_per_token": 1e-07, "litellm_provider": "x"},
            "gpt-4o": {"input_cost_per_token": 2.5e-06, "litellm_provider": "openai"},
        },
    )
    # meta-llama/ is part of a Hugging Face name, not a provider: no borrowed price
    assert costs.lookup("meta-llama/Llama-3.1-8B-Instruct") is None
    found = costs.lookup("openai/gpt-4o")
    assert found is not None and found.key == "gpt-4o"


def test_openrouter_style_name_tries_the_provider_prefix_first(tmp_path: Path) -> None:
    costs = write_map(
        tmp_path,
        {
            "openrouter/anthropic/claude-x": {
                "input_cost_per_token": 1e-06,
                "litellm_provider": "openrouter",
            }
        },
    )
    assert (
        costs.candidates("anthropic/claude-x", "openrouter")[0] == "openrouter/anthropic/claude-x"
    )
    found = costs.lookup("anthropic/claude-x", "openrouter")
    assert found is not None and found.provider == "openrouter"


def test_a_missing_cost_map_prices_nothing(tmp_path: Path) -> None:
    costs = CostMap(tmp_path / "absent.json")
    assert costs.lookup("gpt-4o-mini") is None
    assert not costs.available
    doc = policy({"p": OPENAI}, {"mini": {"provider": "p", "model": "gpt-4o-mini"}})
    [(path, message)] = policy_problems(doc, costs)
    assert path == ("models", "mini", "pricing")
    assert "(litellm's cost map not found)" in message


# --- resolution order ---------------------------------------------------------------------------


def test_explicit_price_wins_over_everything() -> None:
    price = one_price(
        {**SELF_HOSTED, "pricing": {"tco": TCO}},
        "gpt-4o-mini",
        {"input_per_mtok": 0.30, "output_per_mtok": 1.20},
    )
    assert price.source == "explicit"
    assert (price.input_usd_per_token, price.output_usd_per_token) == (3e-07, 1.2e-06)
    assert price.usd_per_mtok_input == pytest.approx(0.30)
    assert price.usd_per_mtok_output == pytest.approx(1.20)


def test_provider_token_price_applies_to_its_deployments() -> None:
    price = one_price(
        {**OPENAI, "pricing": {"input_per_mtok": 2, "output_per_mtok": 8}}, "gpt-4o-mini"
    )
    assert price.source == "explicit"
    assert (price.input_usd_per_token, price.output_usd_per_token) == (2e-06, 8e-06)


def test_tco_pool_price_per_token() -> None:
    price = one_price({**SELF_HOSTED, "pricing": {"tco": TCO}}, "meta-llama/Llama-3.1-8B-Instruct")
    assert price.source == "tco"
    assert price.basis == "p"
    # 94,332.80 / 8 / 8,760 = $1.3460731 per GPU-hour over 5,184,000 output tokens
    assert price.usd_per_mtok_output == pytest.approx(0.25965915, rel=1e-7)
    assert price.usd_per_mtok_input == pytest.approx(0.025965915, rel=1e-7)


def test_hourly_pool_price_per_token() -> None:
    hourly = {"usd_per_hour": 98.0, "gpus": 8, "tokens_per_s_per_gpu": 2_400, "utilization": 0.6}
    price = one_price({**SELF_HOSTED, "pricing": hourly}, "llama")
    assert price.source == "hourly"
    assert price.usd_per_mtok_output == pytest.approx(2.3630401, rel=1e-7)  # 12.25 / 5.184


def test_free_on_the_deployment_or_the_provider() -> None:
    assert one_price(SELF_HOSTED, "anything", "free") == FREE
    on_provider = one_price({**SELF_HOSTED, "pricing": "free"}, "anything")
    assert on_provider.source == "free"
    assert on_provider.cost_nanos(1_000_000, 1_000_000) == 0


def test_sim_is_free_unless_priced() -> None:
    assert one_price({"type": "sim"}, "sim-chat").source == "free"
    priced = one_price(
        {"type": "sim", "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}, "x"
    )
    assert priced.source == "explicit"
    assert priced.input_usd_per_token == 1.5e-07
    own = one_price({"type": "sim"}, "x", {"input_per_mtok": 0.5, "output_per_mtok": 1.5})
    assert own.output_usd_per_token == 1.5e-06


def test_a_self_hosted_model_is_not_priced_from_the_cloud() -> None:
    # No provider prefix, an unknown host: the cost map is not consulted under another name.
    problems = policy_problems(
        policy(
            {"p": SELF_HOSTED},
            {"llama": {"provider": "p", "model": "meta-llama/Llama-3.1-8B-Instruct"}},
        )
    )
    assert [path for path, _ in problems] == [("models", "llama", "pricing")]


# --- problems ------------------------------------------------------------------------------------


def test_a_deployment_with_no_price_is_a_problem() -> None:
    doc = policy(
        {"p": SELF_HOSTED, "s": {"type": "sim"}},
        {
            "my-model": {"provider": "p", "model": "foo-model"},
            "gratis": {"provider": "p", "model": "foo-model", "pricing": "free"},
            "sim": {"provider": "s", "model": "sim"},
        },
    )
    problems = policy_problems(doc)
    assert problems == [
        (
            ("models", "my-model", "pricing"),
            'no price for "foo-model" (not in litellm\'s cost map); '
            "set pricing: {input_per_mtok, output_per_mtok} or pricing: free",
        )
    ]
    assert format_problems(problems) == [
        'models.my-model.pricing: no price for "foo-model" (not in litellm\'s cost map); '
        "set pricing: {input_per_mtok, output_per_mtok} or pricing: free"
    ]
    assert format_problems(problems, lambda path: f"policies/x.yaml:7 {'.'.join(map(str, path))}")[
        0
    ].startswith("policies/x.yaml:7 models.my-model.pricing: no price")
    with pytest.raises(PolicyError) as caught:
        price_table(doc)
    assert caught.value.problems == format_problems(problems)


def test_the_example_policy_prices_every_deployment() -> None:
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y"}
    example = load_policy(REPO / "policies" / "examples" / "full.yaml", env=env)
    assert policy_problems(example) == []
    table = price_table(example)
    assert set(table) == set(example.document.models)
    assert {name: price.source for name, price in table.items()} == {
        "llama-8b": "tco",
        "llama-8b-burst": "hourly",
        "gpt-4o-mini": "cost_map",
        "claude-haiku": "cost_map",
        "text-embedding-3-small": "cost_map",
        "my-finetune": "explicit",
        "sim-chat": "free",
    }
    demo = load_policy(REPO / "policies" / "demo.yaml", env={})
    assert policy_problems(demo) == []


def test_price_tables_rebuild_only_for_a_new_policy() -> None:
    tables = PriceTables()
    first = policy({"s": {"type": "sim"}}, {"a": {"provider": "s", "model": "a"}})
    table = tables.get(first)
    assert tables.get(first) is table
    second = policy({"s": {"type": "sim"}}, {"b": {"provider": "s", "model": "b"}})
    assert set(tables.get(second)) == {"b"}
    assert set(tables.get(first)) == {"a"}


# --- charges -------------------------------------------------------------------------------------


def test_charges_are_exact_integer_nano_dollars() -> None:
    price = Price.per_mtok(0.30, 1.20, "explicit")
    assert price.input_femtos == 300_000_000
    # 1,000 x $0.0000003 + 500 x $0.0000012 = $0.0009
    assert price.cost_nanos(1_000, 500) == 900_000
    assert price.cost_usd(1_000, 500) == 0.0009
    mini = one_price(OPENAI, "gpt-4o-mini")
    assert mini.cost_nanos(1_000, 1_000) == 750_000  # 150,000 + 600,000
    # cached prompt tokens at $0.075 per 1M instead of $0.15
    assert mini.cost_nanos(1_000, 0, cached_tokens=1_000) == 75_000
    assert mini.cost_nanos(1_000, 0, cached_tokens=400) == 90_000 + 30_000
    assert mini.cost_nanos(10, 0, cached_tokens=50) == 750  # never more cached than prompt
    assert mini.cost_nanos(0, 0) == 0


def test_charges_round_up() -> None:
    tiny = Price(1e-12, 0.0, "explicit")  # a thousandth of a nano-dollar per token
    assert tiny.cost_nanos(1, 0) == 1
    assert tiny.cost_nanos(1_000, 0) == 1
    assert tiny.cost_nanos(1_001, 0) == 2
    uneven = Price(1 / 3 * 1e-6, 0.0, "tco")
    assert uneven.cost_nanos(3, 0) >= 1_000


@given(
    input_micros=st.integers(0, 100_000_000),  # per-1M prices with up to 6 decimals, to $100
    output_micros=st.integers(0, 100_000_000),
    prompt=st.integers(0, 2_000_000),
    completion=st.integers(0, 200_000),
)
def test_a_charge_is_never_below_the_exact_cost_and_never_a_nano_above(
    input_micros: int, output_micros: int, prompt: int, completion: int
) -> None:
    input_per_mtok = float(Decimal(input_micros) / 1_000_000)
    output_per_mtok = float(Decimal(output_micros) / 1_000_000)
    price = Price.per_mtok(input_per_mtok, output_per_mtok, "explicit")
    exact = (
        Fraction(input_micros, 10**12) * prompt + Fraction(output_micros, 10**12) * completion
    ) * 10**9
    charged = price.cost_nanos(prompt, completion)
    assert exact <= charged < exact + 1


def test_dollar_conversions() -> None:
    assert usd_to_nanos(500) == 500_000_000_000
    assert usd_to_nanos(0.1) == 100_000_000  # no float noise: 0.1 is exactly 1e8 nanos
    assert usd_to_nanos(1e-10) == 1  # rounded up
    assert nanos_to_usd(1_500_000_000) == 1.5


# --- no litellm import --------------------------------------------------------------------------


def test_pricing_never_imports_litellm() -> None:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from gateway.policy.loader import load_policy
        from gateway.pricing import bundled_cost_map, policy_problems, price_table
        from gateway.cli import tco

        policy = load_policy(
            Path("policies/examples/full.yaml"),
            env={"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y"},
        )
        table = price_table(policy)
        assert table["gpt-4o-mini"].source == "cost_map", table
        assert policy_problems(policy) == []
        assert len(bundled_cost_map()) > 1000
        loaded = sorted(name for name in sys.modules if name.split(".")[0] == "litellm")
        print(loaded)
        assert not loaded, loaded
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

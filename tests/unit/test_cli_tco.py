"""``tollgate tco``: each GPU pool's figures as JSON and as a table, with what-if and sizing."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.cli import main

POLICY = """\
providers:
  pool-a100:
    type: openai
    base_urls: [http://10.0.0.5:8000/v1]
    api_key: ${POOL_KEY}            # unset: costing needs no secrets
    pricing:
      tco:
        server_usd: 320000
        amortization_years: 4
        hosting_usd_per_year: 3000
        software_usd_per_year: 4500
        gpus_per_server: 8
        power_kw: 6.5
        usd_per_kwh: 0.12
        tokens_per_s_per_gpu: 2400
        prefill_tokens_per_s_per_gpu: 24000
        utilization: 0.6
        cloud_usd_per_hour: 98.0
  cloud-gpu:
    type: openai
    base_urls: [http://10.0.0.6:8000/v1]
    pricing: {usd_per_hour: 98.0, gpus: 8, tokens_per_s_per_gpu: 2400, utilization: 0.6}
  sim:
    type: sim
models:
  llama-8b: {provider: pool-a100, model: llama}
  llama-8b-burst: {provider: cloud-gpu, model: llama}
  sim-chat: {provider: sim, model: sim-chat}
routes:
  chat:
    candidates: [llama-8b, llama-8b-burst, sim-chat]
"""

REQUIRED_KEYS = {
    "pool",
    "kind",
    "amortized_capex_usd_per_year",
    "hosting_usd_per_year",
    "software_usd_per_year",
    "power_usd_per_year",
    "total_usd_per_year",
    "usd_per_gpu_hour",
    "usd_per_mtok_output",
    "usd_per_mtok_input",
    "break_even_months",
}


@pytest.fixture
def policy_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("POOL_KEY", raising=False)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["tco", *argv, "--format", "json"]) == 0
    out = capsys.readouterr().out
    rows: list[dict[str, Any]] = orjson.loads(out)
    return rows


def test_json_has_every_figure_as_a_plain_number(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run_json(capsys, str(policy_dir))
    assert [row["pool"] for row in rows] == ["pool-a100", "cloud-gpu"]
    own, rented = rows
    assert set(own) >= REQUIRED_KEYS
    for key in REQUIRED_KEYS - {"pool", "kind"}:
        assert isinstance(own[key], int | float), key
    assert own["kind"] == "tco"
    assert own["amortized_capex_usd_per_year"] == pytest.approx(80_000.0)
    assert own["power_usd_per_year"] == pytest.approx(6_832.80)
    assert own["total_usd_per_year"] == pytest.approx(94_332.80)
    assert own["usd_per_gpu_hour"] == pytest.approx(1.3460731, rel=1e-7)
    assert own["usd_per_mtok_output"] == pytest.approx(0.25965915, rel=1e-7)
    assert own["usd_per_mtok_input"] == pytest.approx(0.025965915, rel=1e-7)
    assert own["break_even_months"] == pytest.approx(4.5489697, rel=1e-7)
    assert "servers" not in own  # sizing only when asked
    assert rented["kind"] == "hourly"
    assert rented["usd_per_gpu_hour"] == pytest.approx(12.25)
    assert rented["break_even_months"] is None


def test_what_if_shows_before_and_after(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run_json(capsys, str(policy_dir), "--what-if", "utilization=0.8,usd_per_kwh=0.2")
    assert [(row["pool"], row["scenario"]) for row in rows] == [
        ("pool-a100", "before"),
        ("pool-a100", "after"),
        ("cloud-gpu", "before"),
        ("cloud-gpu", "after"),
    ]
    before, after, rented_before, rented_after = rows
    assert before["usd_per_mtok_output"] == pytest.approx(0.25965915, rel=1e-7)
    # power 6.5 x 8,760 x 0.2 = 11,388; total 98,888 a year; 98,888 / 8 / 8,760 per GPU-hour
    # over 2,400 x 0.8 x 3,600 = 6,912,000 tokens
    assert after["power_usd_per_year"] == pytest.approx(11_388.0)
    assert after["total_usd_per_year"] == pytest.approx(98_888.0)
    assert after["usd_per_mtok_output"] == pytest.approx(0.20414830, rel=1e-7)
    # opex 3,000 + 4,500 + 11,388 = 18,888 a year, 1,574 a month: 320,000 / (71,540 - 1,574)
    assert after["break_even_months"] == pytest.approx(4.5736500, rel=1e-7)
    # the rented pool has no power bill; utilization still applies: 12.25 / 6.912
    assert rented_after["power_usd_per_year"] == rented_before["power_usd_per_year"] == 0.0
    assert rented_after["usd_per_mtok_output"] == pytest.approx(1.7722801, rel=1e-7)


def test_sizing_when_asked(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_json(capsys, str(policy_dir), "--instances", "10", "--gpus-per-instance", "2")
    own = rows[0]
    assert (own["instances"], own["gpus_per_instance"], own["servers"]) == (10, 2, 3)
    assert own["servers_capex_usd"] == pytest.approx(960_000.0)
    assert own["servers_usd_per_year"] == pytest.approx(282_998.40)


def test_table_puts_pools_side_by_side(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tco", str(policy_dir), "--what-if", "utilization=0.8"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert "pool-a100 (before)" in lines[0] and "cloud-gpu (after)" in lines[0]
    by_label = {line.split("  ")[0]: line for line in lines[1:]}
    assert "0.2597" in by_label["$ per 1M output tokens"]
    assert "0.1947" in by_label["$ per 1M output tokens"]  # 1.3460731 / 6.912
    assert "94,332.80" in by_label["total $/year per server"]
    assert "4.5" in by_label["break-even months"]


def test_default_directory_comes_from_the_environment(
    policy_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLGATE_POLICY", str(policy_dir))
    assert main(["tco", "--format", "json"]) == 0
    assert len(orjson.loads(capsys.readouterr().out)) == 2


def test_a_policy_without_pools_prints_an_empty_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text(
        textwrap.dedent(
            """\
            providers: {sim: {type: sim}}
            models: {m: {provider: sim, model: m}}
            routes: {r: {candidates: [m]}}
            """
        )
    )
    assert main(["tco", str(tmp_path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out) == []
    assert "no provider is priced as a GPU pool" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--instances", "3"], "--instances and --gpus-per-instance go together"),
        (["--what-if", "utilisation=0.8"], 'unknown field "utilisation"'),
        (["--what-if", "utilization"], '"utilization" is not NAME=VALUE'),
        (["--what-if", "utilization=1.5"], "less than or equal to 1"),
    ],
)
def test_bad_options_exit_2_with_a_message(
    policy_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["tco", str(policy_dir), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_an_invalid_policy_exits_1_with_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.yaml").write_text(POLICY.replace("server_usd: 320000", "server_usd: lots"))
    assert main(["tco", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "server_usd" in captured.err

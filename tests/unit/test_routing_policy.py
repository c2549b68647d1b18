"""The policy's routing fields: weights must name the route's own candidates."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy.loader import load_policy

POLICY = """\
providers:
  sim-fast:
    type: sim
models:
  gpt-5-mini:
    provider: sim-fast
    model: gpt-5-mini
  gpt-5-nano:
    provider: sim-fast
    model: gpt-5-nano
routes:
  chat:
    candidates: [gpt-5-mini, gpt-5-nano]
    strategy: weighted
    weights:
      gpt-5-mini: 3
      {other}: 1
"""


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "prod.yaml").write_text(textwrap.dedent(POLICY.format(other=other)))
    try:
        load_policy(Path("policies"), env={})
    except PolicyError as exc:
        return exc.problems
    return []


def test_weights_of_candidates_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(tmp_path, monkeypatch, "gpt-5-nano") == []


def test_a_weight_for_a_non_candidate_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load(tmp_path, monkeypatch, "gpt-5-nanp") == [
        'policies/prod.yaml:17 routes.chat.weights.gpt-5-nanp: unknown candidate "gpt-5-nanp" '
        '(did you mean "gpt-5-nano"?)'
    ]

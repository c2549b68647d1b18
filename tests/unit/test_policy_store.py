"""PolicyStore (swap on reload, keep the old policy on error) and ``tollgate check-policy``."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.errors import PolicyError
from gateway.policy.schema import Policy
from gateway.policy.store import PolicyStore

REPO = Path(__file__).resolve().parents[2]

POLICY = """\
providers:
  sim-fast: {type: sim}
models:
  m: {provider: sim-fast, model: "${MODEL:-sim-chat}"}
routes:
  chat: {candidates: [m]}
teams:
  demo: {routes: ["*"]}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY)
    return directory


# --- PolicyStore ------------------------------------------------------------------------------


def test_open_loads_the_directory(policy_dir: Path) -> None:
    store = PolicyStore.open(policy_dir, env={"MODEL": "from-env"})
    assert store.directory == policy_dir
    assert store.current.document.models["m"].model == "from-env"
    assert store.current.sources == (str(policy_dir / "policy.yaml"),)


def test_open_refuses_an_invalid_policy(policy_dir: Path) -> None:
    (policy_dir / "policy.yaml").write_text("routes: {}\n")
    with pytest.raises(PolicyError) as caught:
        PolicyStore.open(policy_dir, env={})
    assert caught.value.problems == [
        f"{policy_dir}/policy.yaml:1 routes: at least one route is required"
    ]


def test_reload_swaps_in_the_new_policy_and_calls_the_hooks(policy_dir: Path) -> None:
    swaps: list[tuple[Policy, Policy]] = []
    store = PolicyStore.open(
        policy_dir, env={}, on_swap=[lambda old, new: swaps.append((old, new))]
    )
    old = store.current
    (policy_dir / "routes.yaml").write_text("routes:\n  embed: {candidates: [m]}\n")

    new = store.reload()

    assert store.current is new
    assert new is not old
    assert list(new.document.routes) == ["chat", "embed"]
    assert list(old.document.routes) == ["chat"]  # a request holding the old one is unaffected
    assert swaps == [(old, new)]


def test_hooks_can_be_added_after_construction(policy_dir: Path) -> None:
    store = PolicyStore.open(policy_dir, env={})
    seen: list[str] = []
    store.on_swap.append(lambda old, new: seen.append("first"))
    store.on_swap.append(lambda old, new: seen.append("second"))
    store.reload()
    assert seen == ["first", "second"]


def test_failed_reload_keeps_the_old_policy(policy_dir: Path) -> None:
    calls: list[Policy] = []
    store = PolicyStore.open(policy_dir, env={}, on_swap=[lambda old, new: calls.append(new)])
    old = store.current
    (policy_dir / "policy.yaml").write_text(POLICY.replace("candidates: [m]", "candidates: [n]"))

    with pytest.raises(PolicyError) as caught:
        store.reload()

    assert caught.value.problems == [
        f'{policy_dir}/policy.yaml:6 routes.chat.candidates[0]: unknown model "n"'
    ]
    assert store.current is old
    assert calls == []


def test_a_failing_hook_does_not_stop_the_others(policy_dir: Path) -> None:
    def broken(old: Policy, new: Policy) -> None:
        raise RuntimeError("cannot rebuild clients")

    seen: list[Policy] = []
    store = PolicyStore.open(
        policy_dir, env={}, on_swap=[broken, lambda old, new: seen.append(new)]
    )

    with pytest.raises(RuntimeError, match="cannot rebuild clients"):
        store.reload()

    assert seen == [store.current]  # the valid new policy is in force and later hooks ran


def test_reload_reads_the_environment_given_at_construction(policy_dir: Path) -> None:
    env = {"MODEL": "one"}
    store = PolicyStore.open(policy_dir, env=env)
    env["MODEL"] = "two"
    assert store.reload().document.models["m"].model == "two"


# --- tollgate check-policy --------------------------------------------------------------------


def test_check_policy_ok(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (policy_dir / "teams.yml").write_text("teams:\n  other: {routes: [chat]}\n")
    assert main(["check-policy", str(policy_dir)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: 2 files, 1 provider, 1 model, 1 route, 2 teams\n"
    assert err == ""


def test_check_policy_defaults_to_tollgate_policy(
    policy_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLGATE_POLICY", str(policy_dir))
    assert main(["check-policy"]) == 0
    assert capsys.readouterr().out == "ok: 1 file, 1 provider, 1 model, 1 route, 1 team\n"


def test_check_policy_defaults_to_policies(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLGATE_POLICY", raising=False)
    monkeypatch.chdir(REPO)
    assert main(["check-policy"]) == 0
    assert capsys.readouterr().out == "ok: 1 file, 3 providers, 3 models, 2 routes, 1 team\n"


def test_check_policy_json(policy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-policy", str(policy_dir), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert orjson.loads(out) == {
        "ok": True,
        "sources": [str(policy_dir / "policy.yaml")],
        "providers": {"sim-fast": "sim"},
        "models": {"m": "sim-fast"},
        "routes": {"chat": ["m"]},
        "teams": {"demo": ["*"]},
    }
    assert err == ""


def test_check_policy_reports_problems_on_stderr(
    policy_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(policy_dir.parent)
    (policy_dir / "policy.yaml").write_text(
        POLICY.replace("{type: sim}", "{type: sim, ttft: 1}").replace("[m]", "[m, n]")
    )
    (policy_dir / "z.yaml").write_text("routes:\n  chat: {candidates: [m]}\n")

    assert main(["check-policy", "policies"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        'policies/z.yaml:2 routes.chat: "chat" is already defined at policies/policy.yaml:6',
        'policies/policy.yaml:2 providers.sim-fast.ttft: unknown field "ttft" '
        '(did you mean "ttft_ms"?)',
    ]


def test_check_policy_json_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-policy", str(tmp_path), "--format", "json"]) == 1
    out, err = capsys.readouterr()
    problem = f"{tmp_path}: no policy files (*.yaml, *.yml)"
    assert orjson.loads(out) == {"ok": False, "problems": [problem]}
    assert err == problem + "\n"

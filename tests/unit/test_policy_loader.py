"""The policy loader: merged files, ``${VAR}``, and every problem as ``file:line path: message``."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from gateway.errors import PolicyError
from gateway.policy.loader import load_policy
from gateway.policy.schema import HourlyPricing, OpenAIProvider, SimProvider, TcoPricing

REPO = Path(__file__).resolve().parents[2]

Write = Callable[[str, str], Path]

# A small valid policy; tests append to it or write their own. Line numbers matter below.
VALID = """\
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
teams:
  demo:
    routes: ["*"]
"""

KEY_A = "sha256:" + "a" * 64
KEY_B = "sha256:" + "b" * 64


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Write:
    """Write files under ./policies (cwd is tmp_path, so messages say ``policies/x.yaml``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()

    def write_file(name: str, text: str) -> Path:
        path = tmp_path / "policies" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write_file


def problems(env: Mapping[str, str] | None = None, directory: str = "policies") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(Path(directory), env={} if env is None else env)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- valid policies ---------------------------------------------------------------------------


def test_demo_policy_loads_with_no_environment() -> None:
    policy = load_policy(REPO / "policies", env={})

    assert policy.sources == (str(REPO / "policies" / "demo.yaml"),)  # examples/ is not read
    document = policy.document
    assert set(document.providers) >= {"sim-fast", "sim-embed"}
    assert isinstance(document.providers["sim-fast"], SimProvider)
    assert document.providers["sim-fast"].ttft_ms == 40
    assert document.providers["sim-fast"].tokens_per_s == 200
    assert document.routes["chat"].candidates == ["sim-chat", "sim-chat-backup"]
    assert document.routes["embed"].candidates == ["sim-embed"]
    assert document.models["sim-embed"].provider == "sim-embed"
    assert policy.routes_for("demo") == ["chat", "embed"]


def test_full_example_loads_when_its_keys_are_set() -> None:
    env = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}
    policy = load_policy(REPO / "policies" / "examples" / "full.yaml", env=env)

    providers = policy.document.providers
    pool = providers["pool-a100"]
    assert isinstance(pool, OpenAIProvider)
    assert pool.api_key == "none"
    assert pool.base_urls == ["http://10.0.0.11:8000/v1", "http://10.0.0.12:8000/v1"]
    assert isinstance(pool.pricing, TcoPricing)
    assert pool.pricing.tco.server_usd == 320000
    cloud = providers["cloud-gpu"]
    assert isinstance(cloud, OpenAIProvider)
    assert isinstance(cloud.pricing, HourlyPricing)
    openai = providers["openai"]
    assert isinstance(openai, OpenAIProvider)
    assert openai.api_key == "sk-test"
    assert providers["anthropic"].type == "litellm"
    assert set(policy.document.models) >= {
        "llama-8b",
        "gpt-4o-mini",
        "claude-haiku",
        "text-embedding-3-small",
        "my-finetune",
    }
    assert set(policy.document.routes) >= {"chat", "embed"}
    assert policy.static_keys == {
        "a61ca0f943056e9e13b07842223e891901e8de2f89ac381cacdb95c3137bc8dc": "search"
    }


def test_full_example_names_each_missing_key_with_its_line() -> None:
    path = REPO / "policies" / "examples" / "full.yaml"
    lines = path.read_text().splitlines()
    openai_line = lines.index("    api_key: ${OPENAI_API_KEY}") + 1
    anthropic_line = lines.index("    api_key: ${ANTHROPIC_API_KEY}") + 1

    assert problems(directory=str(path)) == [
        f"{path}:{openai_line} providers.openai.api_key: "
        "environment variable OPENAI_API_KEY is not set",
        f"{path}:{anthropic_line} providers.anthropic.api_key: "
        "environment variable ANTHROPIC_API_KEY is not set",
    ]


def test_files_are_merged_in_name_order_and_subdirectories_ignored(write: Write) -> None:
    write("b-routes.yml", "routes:\n  chat:\n    candidates: [m]\n")
    write("a-models.yaml", "providers:\n  p: {type: sim}\nmodels:\n  m: {provider: p, model: x}\n")
    write("examples/broken.yaml", "this: [is not: valid\n")
    write("notes.txt", "not yaml at all: [\n")
    write(".hidden.yaml", "garbage: [\n")
    write("empty.yaml", "# only a comment\n")

    policy = load_policy(Path("policies"), env={})

    assert policy.sources == (
        "policies/a-models.yaml",
        "policies/b-routes.yml",
        "policies/empty.yaml",
    )
    assert policy.document.routes["chat"].candidates == ["m"]


def test_a_single_file_can_be_loaded(write: Write) -> None:
    path = write("one.yaml", VALID)
    policy = load_policy(path, env={})
    assert policy.sources == (str(path),)


def test_anchors_and_merge_keys(write: Write) -> None:
    write(
        "p.yaml",
        """\
        providers:
          sim-fast: {type: sim}
        models:
          base: &base
            provider: sim-fast
            model: shared
          copy:
            <<: *base
            model: other
        routes:
          chat: {candidates: [base, copy]}
        """,
    )
    models = load_policy(Path("policies"), env={}).document.models
    assert (models["copy"].provider, models["copy"].model) == ("sim-fast", "other")


# --- ${VAR} interpolation ---------------------------------------------------------------------


def test_interpolation_defaults_escapes_and_several_per_string(write: Write) -> None:
    write(
        "p.yaml",
        """\
        providers:
          up:
            type: openai
            base_urls: ["http://${HOST}:${PORT:-8000}/v1", "${SECOND:-http://b}"]
            api_key: ${EMPTY:-fallback}
            headers:
              X-Literal: "$${NOT_A_VAR} and $$ and ${HOST}"
              X-Number: ${NUMBER}
          sim: {type: sim, ttft_ms: "${TTFT:-25}"}
        models:
          m: {provider: up, model: x, pricing: free}
        routes:
          chat: {candidates: [m]}
        """,
    )
    env = {"HOST": "gpu-1", "EMPTY": "", "NUMBER": "123"}
    providers = load_policy(Path("policies"), env=env).document.providers

    up = providers["up"]
    assert isinstance(up, OpenAIProvider)
    assert up.base_urls == ["http://gpu-1:8000/v1", "http://b"]
    assert up.api_key == "fallback"  # ``:-`` also replaces a set-but-empty variable
    assert up.headers == {"X-Literal": "${NOT_A_VAR} and $$ and gpu-1", "X-Number": "123"}
    sim = providers["sim"]
    assert isinstance(sim, SimProvider)
    assert sim.ttft_ms == 25.0


def test_missing_variable_is_reported_once_with_its_line(write: Write) -> None:
    write(
        "prod.yaml",
        """\
        providers:
          sim-fast:
            type: sim
            ttft_ms: ${TTFT}
          openai:
            type: openai
            api_key: ${OPENAI_API_KEY}
            base_urls: ["https://api.openai.com/v1"]
        models:
          m: {provider: sim-fast, model: x}
        routes:
          chat: {candidates: [m]}
        """,
    )
    # ttft_ms is left empty, which is not a number: that consequence is not reported again.
    assert problems() == [
        "policies/prod.yaml:4 providers.sim-fast.ttft_ms: environment variable TTFT is not set",
        "policies/prod.yaml:7 providers.openai.api_key: "
        "environment variable OPENAI_API_KEY is not set",
    ]


def test_malformed_references(write: Write) -> None:
    write("p.yaml", VALID.replace("model: gpt-5-nano", 'model: "${OOPS and ${1BAD}"'))
    assert problems() == [
        "policies/p.yaml:10 models.gpt-5-nano.model: "
        'invalid variable reference "${OOPS and ${1BAD}"',
    ]
    write("p.yaml", VALID.replace("model: gpt-5-nano", 'model: "gpt-${OOPS"'))
    assert problems() == [
        "policies/p.yaml:10 models.gpt-5-nano.model: "
        'unterminated "${" (write "$${" for a literal "${")',
    ]


def test_keys_are_names_as_written(write: Write) -> None:
    write("p.yaml", VALID.replace("  chat:", "  1:").replace('routes: ["*"]', 'routes: ["1"]'))
    assert list(load_policy(Path("policies"), env={}).document.routes) == ["1"]


def test_recursive_alias(write: Write) -> None:
    write("p.yaml", VALID.replace('routes: ["*"]', "routes: &loop [*loop]"))
    assert problems() == [
        "policies/p.yaml:16 teams.demo.routes[0]: an alias refers to a value that contains it",
    ]


# --- one problem each -------------------------------------------------------------------------


def test_unknown_model_in_candidates(write: Write) -> None:
    write(
        "prod.yaml",
        """\
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
            candidates:
              - gpt-5-nano
              - gpt-5-mini
              - gpt-5-mimi
        """,
    )
    assert problems() == [
        'policies/prod.yaml:16 routes.chat.candidates[2]: unknown model "gpt-5-mimi" '
        '(did you mean "gpt-5-mini"?)'
    ]


def test_unknown_model_without_a_close_name(write: Write) -> None:
    write("prod.yaml", VALID.replace("[gpt-5-mini, gpt-5-nano]", "[gpt-5-mini, zzz]"))
    assert problems() == ['policies/prod.yaml:13 routes.chat.candidates[1]: unknown model "zzz"']


def test_duplicate_candidate(write: Write) -> None:
    write("prod.yaml", VALID.replace("[gpt-5-mini, gpt-5-nano]", "[gpt-5-mini, gpt-5-mini]"))
    assert problems() == [
        "policies/prod.yaml:13 routes.chat.candidates[1]: "
        'duplicate candidate "gpt-5-mini" (also candidates[0])'
    ]


def test_unknown_provider(write: Write) -> None:
    write(
        "prod.yaml",
        VALID.replace(
            "provider: sim-fast\n    model: gpt-5-nano", "provider: sim-fats\n    model: gpt-5-nano"
        ),
    )
    assert problems() == [
        'policies/prod.yaml:9 models.gpt-5-nano.provider: unknown provider "sim-fats" '
        '(did you mean "sim-fast"?)'
    ]


def test_unknown_field_suggests_the_right_one(write: Write) -> None:
    write(
        "p.yaml",
        """\
        providers:
          pool-a100:
            type: openai
            base_url: http://gpu-1:8000/v1
        """,
    )
    assert problems() == [
        'policies/p.yaml:2 providers.pool-a100: missing required field "base_urls"',
        "policies/p.yaml:4 providers.pool-a100.base_url: "
        'unknown field "base_url" (did you mean "base_urls"?)',
    ]


def test_bad_type(write: Write) -> None:
    write("p.yaml", VALID.replace("    candidates:", "    timeout_s: fast\n    candidates:"))
    assert problems() == ['policies/p.yaml:13 routes.chat.timeout_s: expected a number, got "fast"']


def test_constraint_and_list_index_paths(write: Write) -> None:
    write(
        "p.yaml",
        VALID
        + f"""\
    keys: ["{KEY_A}", "sha256:XYZ"]
  other:
    routes: [chat]
    retries: 2
""",
    )
    assert problems() == [
        'policies/p.yaml:17 teams.demo.keys[1]: expected "sha256:" followed by 64 lowercase hex '
        'digits, got "sha256:XYZ"',
        'policies/p.yaml:20 teams.other.retries: unknown field "retries"',
    ]


def test_missing_required_field(write: Write) -> None:
    write("p.yaml", VALID.replace("    candidates: [gpt-5-mini, gpt-5-nano]\n", "    retries: 1\n"))
    assert problems() == ['policies/p.yaml:12 routes.chat: missing required field "candidates"']


def test_unknown_provider_type(write: Write) -> None:
    write("p.yaml", VALID.replace("type: sim", "type: opneai"))
    assert problems() == [
        'policies/p.yaml:3 providers.sim-fast.type: unknown type "opneai" (did you mean '
        '"openai"?); expected one of: "openai", "litellm", "sim"'
    ]


def test_invalid_name(write: Write) -> None:
    write("p.yaml", VALID.replace("  chat:", "  my chat:"))
    assert problems() == [
        'policies/p.yaml:12 routes.my chat: invalid name "my chat": names start with a letter '
        "or digit and contain only letters, digits and ._:/@-"
    ]


def test_pricing_in_an_unknown_shape(write: Write) -> None:
    write("p.yaml", VALID.replace("type: sim", "type: sim\n    pricing: {usd_per_month: 9}"))
    assert problems() == [
        "policies/p.yaml:4 providers.sim-fast.pricing: expected one of: {tco: {...}} | "
        "{usd_per_hour, tokens_per_s_per_gpu, ...} | {input_per_mtok, ...} | 'free', "
        "got {usd_per_month}"
    ]


def test_pricing_that_is_not_a_mapping(write: Write) -> None:
    write(
        "p.yaml", VALID.replace("    model: gpt-5-nano", "    model: gpt-5-nano\n    pricing: paid")
    )
    assert problems() == [
        "policies/p.yaml:11 models.gpt-5-nano.pricing: expected one of: {input_per_mtok, ...} | "
        """'free', got "paid\""""
    ]


def test_pricing_shape_recognised_by_its_keys(write: Write) -> None:
    write(
        "p.yaml",
        VALID.replace(
            "type: sim",
            """type: sim
    pricing:
      tco:
        server_usd: 320000
        hosting_usd_per_yr: 3000""",
        ),
    )
    # Only the TCO shape knows "tco", so only its complaints are relevant.
    assert problems() == [
        "policies/p.yaml:5 providers.sim-fast.pricing.tco: missing required field "
        '"tokens_per_s_per_gpu"',
        "policies/p.yaml:7 providers.sim-fast.pricing.tco.hosting_usd_per_yr: unknown field "
        '"hosting_usd_per_yr" (did you mean "hosting_usd_per_year"?)',
    ]


def test_duplicate_key_in_one_file(write: Write) -> None:
    write("p.yaml", VALID + "  demo:\n    routes: [chat]\n")
    assert problems() == [
        'policies/p.yaml:17 teams.demo: duplicate key "demo" (first defined at line 15)'
    ]


def test_same_name_in_two_files(write: Write) -> None:
    write("a.yaml", VALID)
    write(
        "b.yaml", "routes:\n  embed:\n    candidates: [gpt-5-nano]\n  chat:\n    candidates: [x]\n"
    )
    assert problems() == [
        'policies/b.yaml:4 routes.chat: "chat" is already defined at policies/a.yaml:12'
    ]


def test_bad_yaml_syntax_skips_cross_references(write: Write) -> None:
    write("a.yaml", VALID.replace("gpt-5-nano]", "gpt-5-nano, from-b]"))
    write("b.yaml", "models:\n  from-b:\n    provider: sim-fast\n    model: [unclosed\n")
    assert problems() == [
        "policies/b.yaml:5: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 4)"
    ]


def test_bad_indentation(write: Write) -> None:
    write("a.yaml", "routes:\n  chat:\n    candidates: [a]\n   retries: 1\n")
    assert problems() == [
        "policies/a.yaml:4: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 2)"
    ]


def test_top_level_must_be_a_mapping(write: Write) -> None:
    write("a.yaml", "- routes\n")
    assert problems() == ["policies/a.yaml:1: expected a mapping of sections at the top level"]


def test_python_tags_are_refused(write: Write) -> None:
    write("a.yaml", VALID.replace("model: gpt-5-nano", "model: !!python/name:os.system ''"))
    assert problems() == [
        "policies/a.yaml:10 models.gpt-5-nano.model: unsupported YAML tag "
        "tag:yaml.org,2002:python/name:os.system"
    ]


def test_unknown_top_level_section(write: Write) -> None:
    write("a.yaml", VALID)
    write("b.yaml", "# budgets live elsewhere\n\nrotues:\n  embed:\n    candidates: [x]\n")
    assert problems() == [
        'policies/b.yaml:3 rotues: unknown section "rotues" (did you mean "routes"?)'
    ]


def test_section_of_the_wrong_type(write: Write) -> None:
    write("a.yaml", VALID.replace('teams:\n  demo:\n    routes: ["*"]\n', "teams: [demo]\n"))
    assert problems() == ["policies/a.yaml:14 teams: expected a mapping, got a list"]


def test_team_with_unknown_route(write: Write) -> None:
    write("a.yaml", VALID.replace('routes: ["*"]', "routes: [chat, chta, embed]"))
    assert problems() == [
        'policies/a.yaml:16 teams.demo.routes[1]: unknown route "chta" (did you mean "chat"?)',
        'policies/a.yaml:16 teams.demo.routes[2]: unknown route "embed"',
    ]


def test_static_key_used_by_two_teams(write: Write) -> None:
    write(
        "a.yaml",
        VALID
        + f"""\
    keys:
      - {KEY_A}
  search:
    keys:
      - {KEY_B}
      - {KEY_A}
""",
    )
    assert problems() == [
        "policies/a.yaml:22 teams.search.keys[1]: key sha256:aaaaaaaaaaaa... is already used by "
        'team "demo" (policies/a.yaml:18)'
    ]


def test_at_least_one_route(write: Write) -> None:
    write("a.yaml", "providers:\n  p: {type: sim}\nroutes: {}\n")
    assert problems() == ["policies/a.yaml:3 routes: at least one route is required"]


def test_no_routes_section_at_all(write: Write) -> None:
    write("a.yaml", "# nothing yet\n")
    assert problems() == ["policies/a.yaml:1 routes: at least one route is required"]


def test_empty_directory(write: Write) -> None:
    write("examples/full.yaml", VALID)  # subdirectories do not count
    assert problems() == ["policies: no policy files (*.yaml, *.yml)"]


def test_missing_directory(tmp_path: Path) -> None:
    assert problems(directory=str(tmp_path / "nope")) == [
        f"{tmp_path / 'nope'}: no such file or directory"
    ]


# --- many problems at once --------------------------------------------------------------------


def test_every_problem_is_collected(write: Write) -> None:
    write(
        "a.yaml",
        """\
        providers:
          sim-fast:
            type: sim
            ttft: 40
          openai:
            type: openai
            base_urls: ["https://api.openai.com/v1"]
            api_key: ${OPENAI_API_KEY}
        routes:
          chat:
            timeout_s: -1
            candidates: [gpt-5-mini]
        """,
    )
    write("b.yaml", "models:\n  gpt-5-mini: {provider: sim-fast, model: x}\n  gpt-5-mini: {}\n")
    assert problems() == [
        "policies/a.yaml:8 providers.openai.api_key: "
        "environment variable OPENAI_API_KEY is not set",
        'policies/b.yaml:3 models.gpt-5-mini: duplicate key "gpt-5-mini" (first defined at line 2)',
        'policies/a.yaml:4 providers.sim-fast.ttft: unknown field "ttft" (did you mean "ttft_ms"?)',
        "policies/a.yaml:11 routes.chat.timeout_s: must be greater than 0, got -1",
    ]


def test_cross_reference_problems_are_all_reported(write: Write) -> None:
    write(
        "a.yaml",
        """\
        providers:
          p: {type: sim}
        models:
          m: {provider: q, model: x}
        routes:
          chat: {candidates: [m, n]}
        teams:
          t: {routes: [chat, nope]}
        """,
    )
    assert problems() == [
        'policies/a.yaml:4 models.m.provider: unknown provider "q"',
        'policies/a.yaml:6 routes.chat.candidates[1]: unknown model "n"',
        'policies/a.yaml:8 teams.t.routes[1]: unknown route "nope"',
    ]

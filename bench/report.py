"""The results: the machine they came from, the targets they meet, latest.json and latest.md."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

Json = dict[str, Any]


def machine(repo: Path) -> Json:
    """Where the numbers come from: cores, CPU, Python, kernel, commit, load, date."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": list(os.getloadavg()),
    }


def _idle_lines(idle: Json | None) -> list[str]:
    """One line on what idling costs here (bench/idle_probe.py), when the run measured it."""
    rows = (idle or {}).get("rows") or []
    if len(rows) < 2:
        return []
    first, last = rows[0], rows[-1]
    calls = ""
    if "first_calls_us" in first and "first_calls_us" in last:
        calls = (
            "; three small calls into unrelated code (a JSON parse, a SHA-256, a regex) take "
            f"{first['first_calls_us']['p50']} µs back to back and "
            f"{last['first_calls_us']['p50']} µs after it: a request runs a long chain of "
            "different code, and each link pays that"
        )
    return [
        f"Idle penalty (bench/idle_probe.py): the same {first['python_work_us']['p50']} µs of "
        f"Python takes {last['python_work_us']['p50']} µs after {last['gap_ms']:g} ms asleep; a "
        f"loopback round trip takes {first['loopback_rtt_us']['p50']} µs back to back and "
        f"{last['loopback_rtt_us']['p50']} µs (p99 {last['loopback_rtt_us']['p99']}) after the "
        f"same sleep{calls}. All of it inflates the gateway's added time wherever requests "
        "arrive at an idle process (one in flight with gaps, a paced stream's first token, low "
        "open-loop rates)."
    ]


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip()


def dig(doc: Json, path: str) -> Any:
    """``doc["a"]["b"][0]`` for ``"a.b.0"``; None when any part is missing."""
    node: Any = doc
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


# (name, where in the results, unit, target, comparison) - the targets.
TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    ("added latency p50, 1 in flight", "latency.added_ms.p50", "ms", 1.0, "<="),
    ("added latency p99, 1 in flight", "latency.added_ms.p99", "ms", 3.0, "<="),
    ("req/s per worker, added p99 <= 10 ms", "throughput.best_rps", "req/s", 2000.0, ">="),
    ("x LiteLLM proxy's sustainable rate (same run)", "litellm.ratio", "x", 15.0, ">="),
    # Judged back to back, as the added latency is: with the paced stub the request path sits
    # idle 100 ms before each request, and on this project's VMs that alone costs any Python
    # proxy about half a millisecond (the reference section measures a bare passthrough so).
    ("streaming added TTFT p50, 1 in flight", "streaming.fast.ttft.added_ms.p50", "ms", 1.0, "<="),
    (
        "streaming added TTFT p50, paced stub",
        "streaming.paced.ttft.added_ms.p50",
        "ms",
        0.0,
        "report",
    ),
    ("cache hit p50, end to end", "cache_hit.gateway_ms.p50", "ms", 1.0, "<="),
    ("RSS after soak, largest process", "rss.after_soak_mb", "MB", 150.0, "<="),
    ("RSS growth over the soak (after warm-up)", "soak.growth_mb", "MB", 5.0, "<="),
    (
        "p99 raise with a 100k-token prompt in flight",
        "big_prompt.gateway_raise_ms.p99",
        "ms",
        2.0,
        "<=",
    ),
    ("2 workers / 1 worker", "workers.ratio", "x", 1.7, ">="),
)


def evaluate(results: Json, nproc: int) -> list[Json]:
    """Each target with its measured value and pass / fail / not measured."""
    rows = []
    for name, path, unit, target, op in TARGETS:
        value = dig(results, path)
        if not isinstance(value, int | float):
            status = "not measured"
        elif op == "report":
            reference = dig(results, "reference." + path)
            status = (
                f"reported (a bare passthrough: {reference:.2f})"
                if isinstance(reference, int | float)
                else "reported"
            )
        elif path == "workers.ratio" and nproc < 4:
            # Two workers plus the stub and the load generator need more than two cores.
            status = f"n/a ({nproc} cores)"
        elif (
            path == "cache_hit.gateway_ms.p50"
            and dig(results, "cache_hit.served_from_cache") is False
        ):
            status = "fail (not served from cache)"
        else:
            ok = value <= target if op == "<=" else value >= target
            status = "pass" if ok else "fail"
        rows.append(
            {
                "name": name,
                "value": value,
                "unit": unit,
                "target": "-" if op == "report" else f"{op} {target:g}",
                "status": status,
            }
        )
    return rows


def write(doc: Json, out_dir: Path, stem: str = "latest") -> tuple[Path, Path]:
    """Write ``stem.json`` and ``stem.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    md_path.write_text(markdown(doc))
    return json_path, md_path


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(doc: Json) -> str:
    """The human summary: the machine, the targets table, then each measurement's detail."""
    m = doc.get("machine", {})
    r = doc.get("results", {})
    lines = [
        "# Tollgate benchmark results",
        "",
        f"Mode **{doc.get('mode', '?')}**, {m.get('date_utc', '?')}, commit "
        f"`{str(m.get('git_commit', '?'))[:12]}`{' (dirty tree)' if m.get('git_dirty') else ''}.",
        f"Machine: {m.get('nproc', '?')} cores ({m.get('cpu_model', '?')}), Python "
        f"{m.get('python', '?')}, Linux {m.get('kernel', '?')}; load average at start "
        f"{_fmt(dig(doc, 'machine.loadavg_start.0'))}, at end {_fmt(dig(doc, 'loadavg_end.0'))}.",
        *_idle_lines(m.get("idle")),
        f"Gateway: {dig(doc, 'features.workers') or 1} worker, policy "
        f"`{dig(doc, 'features.policy')}`, features on: "
        f"{', '.join(dig(doc, 'features.declared') or []) or '-'}.{_busy_poll_note(doc)}"
        f"{_gateway_python_note(doc)}",
        f"Observed: {_observed_line(doc)}.",
        "Upstream: `bench/stub.py` on the same machine; every number is against the direct-to-stub "
        "baseline measured in the same run (see bench/README.md).",
        "",
    ]
    if doc.get("interrupted"):
        lines += ["**This run was interrupted: the results are partial.**", ""]
    lines += ["## Targets", ""]
    lines += _table(
        ["measurement", "value", "target", "status"],
        [
            [row["name"], f"{_fmt(row['value'])} {row['unit']}", row["target"], row["status"]]
            for row in doc.get("targets", [])
        ],
    )
    lines += _sections(r)
    errors = doc.get("errors") or {}
    if errors:
        lines += ["## Errors", ""]
        for name, message in errors.items():
            first, _, rest = str(message).partition("\n")
            lines += [f"- **{name}**: {first}"]
            if rest:
                lines += ["", "```", rest[-1500:].rstrip(), "```"]
        lines += [""]
    return "\n".join(lines).rstrip() + "\n"


def _busy_poll_note(doc: Json) -> str:
    """The gateway's busy polling as the run set it (nothing for runs from before the flag)."""
    features = doc.get("features") or {}
    if "busy_poll_us" not in features:
        return ""
    value = features["busy_poll_us"]
    if value is None:
        return " Busy polling: the gateway's default (`TOLLGATE_BUSY_POLL_US`)."
    return f" Busy polling: {'off' if value == 0 else f'{value} µs'} (`--busy-poll-us`)."


def _gateway_python_note(doc: Json) -> str:
    """The gateway's Python when ``--gateway-python`` gave it one the bench does not run on."""
    version = dig(doc, "features.gateway_python")
    if not version or version == dig(doc, "machine.python"):
        return ""
    return f" The gateway ran on Python {version} (`--gateway-python`)."


def _observed_line(doc: Json) -> str:
    obs = dig(doc, "features.observed") or {}
    if not obs:
        return "-"
    return ", ".join(f"{key} {_fmt(value)}" for key, value in obs.items())


def _pct_rows(
    section: Json, label: str, keys: tuple[str, ...] = ("p50", "p90", "p99")
) -> list[Any]:
    return [label] + [
        f"{_fmt(dig(section, 'direct_ms.' + k))} / {_fmt(dig(section, 'gateway_ms.' + k))} / "
        f"**{_fmt(dig(section, 'added_ms.' + k))}**"
        for k in keys
    ]


def _own_lines(measured: Json) -> list[str]:
    """The gateway's own time before the first byte, from its access log (bench/access_log.py),
    for each measurement that has it."""
    parts = [
        f"{name} {_fmt(own.get('p50'))} / {_fmt(own.get('p90'))} / {_fmt(own.get('p99'))} ms"
        for name, m in measured.items()
        if (own := m.get("gateway_own_ms")) and own.get("n")
    ]
    if not parts:
        return []
    return [
        "Of which the gateway's own time before the first byte, inside its process (access "
        f"log `overhead_ms`, p50 / p90 / p99): {'; '.join(parts)}. The rest is the kernel's "
        "hops and wake-ups on the way in and out, and the gateway's handling of the answer "
        "once it arrives.",
        "",
    ]


def _sections(r: Json) -> list[str]:
    lines: list[str] = []
    one = ["", "p50", "p90", "p99"]
    if "latency" in r:
        lines += ["## 1. Added latency, one request in flight (direct / gateway / added, ms)", ""]
        lines += _table(one, [_pct_rows(r["latency"], f"{r['latency'].get('rounds')} rounds")])
        lines += _own_lines({"JSON": r["latency"]})
    if "throughput" in r:
        t = r["throughput"]
        lines += [
            "## 2. Throughput, one worker",
            "",
            f"Method: {t.get('method')}. Best: "
            f"**{_fmt(t.get('best_rps'), 0)} req/s** with added p99 <= "
            f"{_fmt(t.get('max_added_p99_ms'), 0)} ms; stopped because: "
            f"{t.get('stopped_because')}. The generator alone held "
            f"{_fmt(dig(t, 'generator.max_clean_rps'), 0)} req/s against the stub with p99 <= 5 ms"
            " (checked up to 8,000).",
            "",
        ]
        lines += _steps_table(t)
    if "streaming" in r:
        lines += ["## 3. Streaming (direct / gateway / added, ms)", ""]
        rows = []
        for name, s in r["streaming"].items():
            rows.append(_pct_rows(s.get("ttft", {}), f"{name}: time to first token"))
            rows.append(_pct_rows(s.get("gap", {}), f"{name}: gap between chunks"))
        lines += _table(one, rows)
        lines += _own_lines(r["streaming"])
    if "cache_hit" in r:
        c = r["cache_hit"]
        lines += [
            "## 4. Cache hit (direct to stub / gateway hit / difference, ms)",
            "",
            f"Served from cache: {_fmt(c.get('served_from_cache'))}; hits by header: "
            f"{_fmt(c.get('hits'))} of {_fmt(c.get('rounds'))}; upstream calls from the "
            f"gateway during the hits: {_fmt(c.get('upstream_calls_from_gateway'))}.",
            "",
        ]
        lines += _table(one, [_pct_rows(c, "same prompt")])
    if "rss" in r or "soak" in r:
        s = r.get("soak", {})
        lines += ["## 5. Memory (RSS, MB)", ""]
        lines += _table(
            ["idle", "under load (peak)", "after soak", "soak", "growth after warm-up", "slope"],
            [
                [
                    dig(r, "rss.idle_mb"),
                    dig(r, "rss.under_load_mb"),
                    dig(r, "rss.after_soak_mb"),
                    f"{_fmt(s.get('seconds'), 0)} s at {_fmt(s.get('rate'), 0)} req/s",
                    s.get("growth_mb"),
                    f"{_fmt(s.get('slope_mb_per_min'))} MB/min",
                ]
            ],
        )
    if "big_prompt" in r:
        b = r["big_prompt"]
        lines += [
            "## 6. A 100k-token prompt in flight (small requests, p50 / p99, ms)",
            "",
            f"{_fmt(b.get('big_requests'))} big requests of {_fmt(b.get('big_prompt_bytes'))}"
            f" bytes, p50 {_fmt(dig(b, 'big_latency_ms.p50'))} ms each.",
            "",
        ]
        lines += _table(
            ["", "without", "with", "raise"],
            [
                [
                    side,
                    *(
                        f"{_fmt(dig(b, f'{phase}.{side}_ms.p50'))} / "
                        f"{_fmt(dig(b, f'{phase}.{side}_ms.p99'))}"
                        for phase in ("without", "with")
                    ),
                    f"{_fmt(dig(b, f'{side}_raise_ms.p50'))} / "
                    f"**{_fmt(dig(b, f'{side}_raise_ms.p99'))}**",
                ]
                for side in ("direct", "gateway")
            ],
        )
    if "workers" in r:
        w = r["workers"]
        lines += [
            "## 7. Two workers",
            "",
            f"Best rate with 2 workers: **{_fmt(w.get('best_rps'), 0)}"
            f" req/s**, {_fmt(w.get('ratio'))}x one worker.",
            "",
        ]
        lines += _steps_table(w.get("search", {}))
    lines += _reference(r)
    lines += _extras(r)
    return lines


def _reference(r: Json) -> list[str]:
    """The bare passthrough beside the gateway: what the host charges any Python proxy."""
    ref = r.get("reference")
    if not ref:
        return []
    closed = ref.get("wrk") or {}
    gateway_wrk: Json = next(
        (
            run
            for run in dig(r, "wrk.gateway") or []
            if run.get("connections") == closed.get("connections")
        ),
        {},
    )
    rows = [
        [label, *(dig(source, path + key) for source in (ref, r) for key in keys)]
        for label, path, keys in (
            ("added latency, 1 in flight", "latency.added_ms.", ("p50", "p99")),
            ("stream, added time to first token", "streaming.fast.ttft.added_ms.", ("p50", "p99")),
            (
                "paced stream, added time to first token",
                "streaming.paced.ttft.added_ms.",
                ("p50", "p99"),
            ),
        )
    ]
    number = int | float
    for row in rows:  # what the gateway's features cost beyond a bare proxy's, at the median
        bare, full = row[1], row[3]
        # From the figures as shown, so that the row adds up on the page.
        row.append(
            round(round(full, 2) - round(bare, 2), 2)
            if isinstance(bare, number) and isinstance(full, number)
            else None
        )
    lines = [
        "## Reference: a bare FastAPI passthrough on the same host",
        "",
        f"{ref.get('proxy')}; measured in the same run as the gateway and the same way (each "
        "figure against the stub in the same alternation; with every section on, right after "
        "the gateway's streams). It is the issue's calibration point "
        "(about 0.36 ms added at one in flight and 4,700 req/s on its machine): what this host "
        "charges a Python proxy that does nothing, in the same minutes.",
        "",
    ]
    header = ["ms", "passthrough p50", "passthrough p99", "gateway p50", "gateway p99"]
    lines += _table([*header, "gateway - passthrough, p50"], rows)
    lines += [
        f"Closed loop (wrk, {_fmt(closed.get('connections'), 0)} connections): passthrough "
        f"{_fmt(closed.get('rps'), 0)} req/s at {_fmt(closed.get('cpu_us_per_request'), 0)} "
        f"us of its CPU per request; gateway {_fmt(gateway_wrk.get('rps'), 0)} req/s at "
        f"{_fmt(gateway_wrk.get('gateway_cpu_us_per_request'), 0)} us"
        f"{' (wrk: ' + str(closed.get('error')) + ')' if closed.get('error') else ''}.",
        "",
    ]
    return lines


def _steps_table(search: Json) -> list[str]:
    rows = [
        [
            s["rate"],
            dig(s, "direct.latency_ms.p99"),
            dig(s, "gateway.latency_ms.p50"),
            dig(s, "gateway.latency_ms.p99"),
            s.get("added_p99_ms"),
            dig(s, "gateway.achieved_rps"),
            dig(s, "gateway.errors"),
            s.get("gateway_cpu_us_per_request"),
            s.get("gateway_waited_us_per_request"),
            s.get("redis_cpu_us_per_request"),
            s.get("postgres_cpu_us_per_request"),
            s.get("machine_busy_pct"),
            s.get("host_steal_pct"),
            s.get("why"),
        ]
        for s in search.get("steps", [])
    ]
    header = [
        "offered req/s",
        "direct p99",
        "gateway p50",
        "gateway p99",
        "added p99",
        "achieved req/s",
        "errors",
        "gateway CPU us/req",
        "gateway waited for a core us/req",
        "Redis CPU us/req",
        "Postgres CPU us/req",
        "machine busy %",
        "host steal %",
        "verdict",
    ]
    return _table(header, rows)


def _extras(r: Json) -> list[str]:
    lines: list[str] = []
    if "wrk" in r:
        lines += ["## Closed loop (wrk, distinct prompts): peak throughput", ""]
        rows = [
            [
                side,
                run.get("connections"),
                run.get("rps"),
                dig(run, "latency_ms.p50"),
                dig(run, "latency_ms.p99"),
                run.get("non_2xx"),
                run.get("gateway_cpu_us_per_request"),
                run.get("error"),
            ]
            for side, runs in r["wrk"].items()
            if isinstance(runs, list)
            for run in runs
        ]
        header = ["target", "connections", "req/s", "p50 ms", "p99 ms", "non-2xx"]
        lines += _table([*header, "gateway CPU us/req", "error"], rows)
    if "litellm" in r:
        lit = r["litellm"]
        lines += [
            "## LiteLLM proxy, same stub, no database",
            "",
            f"{lit.get('note', '')} Its sustainable rate (all answered, rate held, any "
            f"latency): {_fmt(lit.get('sustainable_rps'), 0)} req/s; Tollgate's best rate with "
            f"added p99 <= 10 ms / that: **{_fmt(lit.get('ratio'))}x**. Closed loop (wrk, 16 "
            f"connections): {_fmt(dig(lit, 'wrk.rps'), 0)} req/s, p99 "
            f"{_fmt(dig(lit, 'wrk.latency_ms.p99'))} ms; Tollgate's best wrk / that: "
            f"{_fmt(lit.get('wrk_ratio'))}x.",
            "",
        ]
        if "latency" in lit:
            lines += _table(
                ["one in flight, ms", "p50", "p90", "p99"],
                [_pct_rows(lit["latency"], "direct / LiteLLM / added")],
            )
    if "profile" in r:
        p = r["profile"]
        lines += ["## Profile (py-spy, gateway under load)", "", f"{p.get('note', '')}", ""]
        top = [[f["function"], f["self_pct"], f["total_pct"]] for f in p.get("top", [])]
        lines += _table(["function", "self %", "total %"], top)
    return lines

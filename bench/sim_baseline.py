"""The core path on the embedded default, against a `tollgate sim` upstream with TTFT 0.

``python -m bench.sim_baseline`` starts ``tollgate sim --ttft-ms 0`` and ``tollgate serve`` on
the embedded default (SQLite, in-process state, access log on) with a one-route policy pointing
at the sim, then measures:

* added latency at one request in flight: direct and via-gateway requests alternate on two
  keep-alive connections, many rounds; added = gateway - direct, per percentile;
* requests/s: wrk (closed loop, 1 thread, 16 connections, 10 s) on each target.

Results go to ``bench/results/sim_baseline.json``. Not a test: nothing here is timed in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "sim_baseline.json"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
POLICY = """
providers:
  pool: {{type: openai, base_urls: ["{url}"]}}
models:
  sim: {{provider: pool, model: sim, pricing: free}}
routes:
  chat: {{candidates: [sim]}}
teams:
  demo: {{routes: ["*"]}}
"""


def _start(
    args: list[str], pattern: str, log: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[str]]:
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if re.search(pattern, line):
            return process, lines
    process.kill()
    raise SystemExit(f"{args[0]} did not start: {lines} {log.read_text()[-2000:]}")


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": round(at(0.50), 3), "p90": round(at(0.90), 3), "p99": round(at(0.99), 3)}


def _alternate(direct: str, gateway: str, key: str, rounds: int) -> dict[str, object]:
    timings: dict[str, list[float]] = {"direct": [], "gateway": []}
    payload = json.dumps(BODY).encode()
    with httpx.Client(timeout=10) as a, httpx.Client(timeout=10) as b:
        targets = [
            ("direct", a, f"{direct}/chat/completions", {}),
            ("gateway", b, f"{gateway}/chat/completions", {"authorization": f"Bearer {key}"}),
        ]
        for round_ in range(rounds + 50):
            order = targets if round_ % 2 == 0 else targets[::-1]
            for name, client, url, headers in order:
                started = time.perf_counter()
                response = client.post(
                    url, content=payload, headers={"content-type": "application/json", **headers}
                )
                elapsed = (time.perf_counter() - started) * 1000
                assert response.status_code == 200, response.text
                if round_ >= 50:  # warm-up rounds are not counted
                    timings[name].append(elapsed)
    direct_p, gateway_p = _percentiles(timings["direct"]), _percentiles(timings["gateway"])
    added = {q: round(gateway_p[q] - direct_p[q], 3) for q in direct_p}
    return {
        "rounds": rounds,
        "direct_ms": direct_p,
        "gateway_ms": gateway_p,
        "added_ms": added,
        "added_mean_ms": round(
            statistics.fmean(timings["gateway"]) - statistics.fmean(timings["direct"]), 3
        ),
    }


def _wrk(url: str, key: str | None, seconds: int, workdir: Path) -> dict[str, object]:
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed (apt-get install -y wrk)"}
    script = workdir / "post.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"{auth}wrk.body = [[{json.dumps(BODY)}]]\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def ms(match: re.Match[str] | None) -> float | None:
        if match is None:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "requests_per_s": float(rps.group(1)) if rps else None,
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "2000"))
    seconds = int(os.environ.get("WRK_SECONDS", "10"))
    work = Path(tempfile.mkdtemp(prefix="tollgate-sim-baseline-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["TOLLGATE_DATA_DIR"] = str(work / "data")
    processes: list[subprocess.Popen[str]] = []
    try:
        sim, lines = _start(
            ["sim", "--port", "0", "--ttft-ms", "0"], r"listening on", work / "sim.log", env
        )
        processes.append(sim)
        direct = lines[-1].split("listening on ")[-1].strip()
        policy = work / "policy"
        policy.mkdir()
        (policy / "p.yaml").write_text(POLICY.format(url=direct))
        port = 18000 + os.getpid() % 1000
        gateway_process, lines = _start(
            ["serve", "--policy", str(policy), "--port", str(port)],
            r"Demo key",
            work / "gateway.log",
            env,
        )
        processes.append(gateway_process)
        key = re.search(r"(tg-[\w-]+)", lines[-1]).group(1)  # type: ignore[union-attr]
        gateway = f"http://127.0.0.1:{port}/v1"
        time.sleep(1)
        result = {
            "what": "embedded default (SQLite, in-process state, access log on) "
            "vs tollgate sim ttft 0",
            "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "one_in_flight": _alternate(direct, gateway, key, rounds),
            "wrk_direct": _wrk(f"{direct}/chat/completions", None, seconds, work),
            "wrk_gateway": _wrk(f"{gateway}/chat/completions", key, seconds, work),
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

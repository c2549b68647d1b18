"""``tollgate sim``: run the simulated OpenAI-compatible model as an HTTP server."""

from __future__ import annotations

import argparse
import sys


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` subcommand."""
    parser = commands.add_parser(
        "sim", help="run a simulated OpenAI-compatible model (test double, benchmark upstream)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9101, help="port; 0 picks a free one (9101)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token (0)")
    parser.add_argument(
        "--tokens-per-s", type=float, default=0.0, help="output speed; 0 = no delay (0)"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of calls failing with a 500 (0.0)"
    )
    parser.add_argument("--output", help="fixed answer text (default: filler words)")
    parser.add_argument("--model-name", default="sim", help="model listed by /v1/models (sim)")
    parser.add_argument("--seed", type=int, help="seed for reproducible error draws")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Prints one line to stdout once listening."""
    # Imported here so the other commands do not pay for uvicorn and tiktoken.
    from gateway.errors import InvalidRequest
    from gateway.sim.config import SimConfig
    from gateway.sim.engine import SimEngine
    from gateway.sim.server import serve
    from gateway.tokens import count_text

    try:
        config = SimConfig().with_changes(
            {
                "ttft_ms": args.ttft_ms,
                "tokens_per_s": args.tokens_per_s,
                "error_rate": args.error_rate,
                "output": args.output,
                "model_name": args.model_name,
                "seed": args.seed,
            }
        )
    except InvalidRequest as exc:
        print(f"tollgate sim: {exc.message}", file=sys.stderr)
        return 2

    def listening(host: str, port: int) -> None:
        print(f"tollgate sim listening on http://{host}:{port}/v1", flush=True)

    engine = SimEngine(config)
    # Load the tokenizer now: a first answer 200 ms late would look like a slow pool.
    count_text("warm up", config.model_name)
    serve(engine, args.host, args.port, on_listening=listening)
    return 0

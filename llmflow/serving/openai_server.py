"""An OpenAI-compatible ``/v1/chat/completions`` endpoint in front of a registered chat model of either flavour.

Why this exists: neither of MLflow's own serving paths speaks the OpenAI protocol faithfully for a custom pyfunc.
``mlflow models serve`` answers only ``/invocations`` and cannot stream; the AI gateway's ``mlflow-model-serving``
provider forwards only the first message's content and returns ``usage`` as nulls. This endpoint adds what a team
needs to put it in production: API keys, a bounded queue with 429, a timeout, a body limit, readiness, Prometheus
metrics, batching across requests, following the ``champion`` alias, and MLflow traces. It serves the ONNX pyfunc,
and the transformers ``llm/v1/chat`` model through ``transformers_chat`` with the same request checks, which
MLflow's own scoring of that flavour does not make (see the README).

Run it with ``python -m llmflow.serving.openai_server --model-uri models:/<name>@champion``; every flag is in the
README's serving section. The modules: ``app`` (routes and answers), ``errors`` (every error answer),
``openai_protocol`` (a request read, and the answers), ``openai_request`` (the request's fields, types and ranges,
and what is refused), ``auth``, ``scheduler`` (batching and limits), ``holder`` (loading, the names it serves under,
following the alias), ``metrics``, ``tracing``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from llmflow.chat_model.cpus import THREADS_ENV

from .app import Limits, create_app
from .auth import is_loopback, load_keys
from .holder import ALIAS_URI, ModelHolder
from .metrics import Metrics
from .openai_protocol import BadRequest, model_request
from .scheduler import DEFAULT_MAX_BATCHES, BatchScheduler
from .tracing import Tracer

__all__ = ["BadRequest", "build_parser", "main", "model_request"]

logger = logging.getLogger(__name__)

# One generator with 8 rows decodes 1.3x faster than one row on 2 cores; more rows add little and cost latency.
DEFAULT_MAX_CONCURRENT = min(16, 4 * (os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a registered chat model behind /v1/chat/completions.")
    add = parser.add_argument
    add("--model-uri", type=str, required=True, help="Model to serve, e.g. models:/tiny-phi3-onnx@champion.")
    add("--host", type=str, default="127.0.0.1", help="Address to listen on.")
    add("--port", type=int, default=8000, help="Port to listen on.")
    add("--served-name", type=str, default=None, help="Model id in /v1/models and answers (default: the URI).")
    add("--api-key", action="append", default=[], help="A key clients must send as Bearer (repeatable).")
    add("--api-key-file", type=Path, default=None, help="A file of accepted keys, one a line.")
    add("--auth-health-metrics", action="store_true", help="Require a key for /health and /metrics too.")
    add("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT, help="Requests generating at once.")
    add(
        "--max-batches",
        type=int,
        default=DEFAULT_MAX_BATCHES,
        help="Generators run side by side, a step of each in turn (default 1: a request that arrives while a batch "
        "runs waits for it to end; 2 or more: it starts beside it). Each holds its rows' KV cache until its last "
        "row ends.",
    )
    add(
        "--threads",
        type=int,
        default=None,
        help=f"onnxruntime threads the ONNX model generates with (sets {THREADS_ENV}; default: the CPUs given).",
    )
    add("--max-queue", type=int, default=64, help="Requests waiting for a place; beyond it, 429.")
    add("--request-timeout", type=float, default=300.0, help="Seconds a request may take; then 504.")
    add("--max-body-bytes", type=int, default=1_048_576, help="Largest request body accepted; beyond it, 413.")
    add("--retry-after", type=int, default=1, help="Seconds a 429 or 503 answer tells the client to wait.")
    add("--poll-interval", type=float, default=30.0, help="Seconds between reads of the alias (0: never).")
    add("--trace-ratio", type=float, default=0.0, help="Share of requests traced to MLflow, 0 to 1 (0: none).")
    add("--log-level", type=str, default="info", choices=["debug", "info", "warning", "error"], help="Log level.")
    return parser


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    rules = {
        "--max-concurrent": (args.max_concurrent, 1 <= args.max_concurrent <= 32, "1 to 32"),
        "--max-batches": (args.max_batches, 1 <= args.max_batches <= 8, "1 to 8"),
        "--max-queue": (args.max_queue, args.max_queue >= 0, "0 or more"),
        "--request-timeout": (args.request_timeout, args.request_timeout > 0, "more than 0"),
        "--max-body-bytes": (args.max_body_bytes, args.max_body_bytes >= 1024, "1024 or more"),
        "--retry-after": (args.retry_after, args.retry_after >= 0, "0 or more"),
        "--poll-interval": (args.poll_interval, args.poll_interval >= 0, "0 or more"),
        "--trace-ratio": (args.trace_ratio, 0 <= args.trace_ratio <= 1, "0 to 1"),
        "--threads": (args.threads, args.threads is None or args.threads >= 1, "1 or more"),
    }
    for flag, (value, good, accepted) in rules.items():
        if not good:
            parser.error(f"{flag} {value} is not accepted; expected {accepted}")


def use_threads(threads: int | None) -> None:
    """``--threads``: the count the ONNX model generates with, read when it loads (``llmflow.chat_model.cpus``)."""
    if threads is not None:
        os.environ[THREADS_ENV] = str(threads)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    check(args, parser)
    use_threads(args.threads)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = load_keys(args.api_key, args.api_key_file)
    if not keys and not is_loopback(args.host):
        logger.warning("listening on %s with no API key: anyone who reaches it may call the model", args.host)
    metrics = Metrics()
    match = ALIAS_URI.match(args.model_uri)
    name = args.served_name or (match["name"] if match else args.model_uri)

    def scheduler(python_model: object, version: str) -> BatchScheduler:
        return BatchScheduler(python_model, args.max_concurrent, args.max_queue, metrics, version, args.max_batches)

    holder = ModelHolder(args.model_uri, name, metrics, scheduler, args.poll_interval)
    limits = Limits(args.max_body_bytes, args.request_timeout, args.retry_after)
    app = create_app(holder, metrics, keys, limits, Tracer(args.trace_ratio), args.auth_health_metrics)
    holder.start()  # in the background: the port opens at once and /health says 503 until the model is loaded
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()

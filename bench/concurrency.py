"""Concurrent clients against the OpenAI endpoint: ``python -m bench.concurrency``.

Builds the random Phi-3 of ``--shape`` (``bench.model``; ``mid`` is the 168 M benchmark model; ``phi3-mini`` is
Phi-3-mini's real shape and tokenizer from ``../shared``, ``bench.scale.model``, kept in ``build/phi3-real-shape``),
exports it to int4 for CPU, logs it as the project's ONNX pyfunc in a temporary SQLite store, starts
``python -m llmflow.serving.openai_server`` on loopback, then, for each client count, runs that many clients at once,
each sending ``--requests`` streamed greedy chat requests one after another with the real ``openai`` client.
It reports aggregate generated tokens/s (all clients' tokens over the wall time), time to first token p50/p99,
whether every answer equals the answer the same prompt got alone, and the server's memory: its RSS after the
warm-up request and its peak (``bench.scale.monitor``, sampled every 0.5 s). Writes JSON (``--out``).

The client part (``openai_client``, ``one_request``, ``run_round``) takes any OpenAI-compatible base URL:
``bench.llamacpp_real`` drives llama.cpp's ``llama-server`` with it too (``project_server`` starts this project's).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.machine import parse_run_options, write_json
from bench.model import SHAPES, build_random_phi3, make_prompts
from bench.pipeline import tracking_store
from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench-results/concurrency.json")


def log_model(onnx_dir: Path, max_new_tokens: int) -> str:
    import mlflow

    from llmflow.log_pyfunc import MODEL_CODE, MODEL_PACKAGE

    config = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0, "top_k": 50, "model_name": "bench"}
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            code_paths=[str(MODEL_PACKAGE)],
            artifacts={"onnx": str(onnx_dir)},
            model_config=config,
        )
    return info.model_uri


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {timeout} s")


def openai_client(base: str) -> Any:
    """The real ``openai`` client for the server at ``base`` (``http://host:port``): no retries, a long timeout."""
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=1800)


def one_request(client: Any, content: str, max_tokens: int, extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed greedy chat request: TTFT (to the first content), seconds, completion and prompt tokens (the
    server's ``usage``), the text. ``extra_body``: fields of a particular server (llama-server's ``cache_prompt``)."""
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra_body,
    )
    first, pieces, tokens, prompt_tokens = None, [], 0, None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first if first is not None else time.perf_counter() - started
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens, prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    return {
        "ttft": first,
        "seconds": time.perf_counter() - started,
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "text": "".join(pieces),
    }


def run_round(
    client: Any,
    prompts: list[str],
    clients: int,
    requests: int,
    max_tokens: int,
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``clients`` threads, each sending ``requests`` requests in turn; prompt ``(client * requests + i) % len``."""

    def worker(number: int) -> list[dict[str, Any]]:
        indexes = [(number * requests + i) % len(prompts) for i in range(requests)]
        return [{**one_request(client, prompts[i], max_tokens, extra_body), "prompt_index": i} for i in indexes]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        records = [r for batch in pool.map(worker, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in records if r["ttft"] is not None)
    return {
        "clients": clients,
        "requests": len(records),
        "wall_seconds": wall,
        "tokens": sum(r["tokens"] for r in records),
        "tokens_per_second": sum(r["tokens"] for r in records) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p99": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))],
        "records": records,
    }


def free_port() -> int:
    """A port that nothing listens on now (the kernel's pick, on loopback)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def project_server(
    onnx_dir: Path, max_tokens: int, max_concurrent: int, tmp: Path, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any]]:
    """Log ``onnx_dir`` as the project's ONNX pyfunc in a new SQLite store under ``tmp``, serve it with
    ``python -m llmflow.serving.openai_server`` on loopback (``extra``: more of its flags); yield its base URL and
    process once it is ready."""
    with tracking_store(tmp) as uri:
        model_uri = log_model(onnx_dir, max_tokens)
        port = free_port()
        command = [sys.executable, "-m", "llmflow.serving.openai_server", "--model-uri", model_uri]
        command += ["--port", str(port), "--max-concurrent", str(max_concurrent), "--max-queue", "256"]
        command += ["--log-level", "warning", *extra]
        env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}
        with (tmp / "server.log").open("w") as log:
            proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, proc)
                yield base, proc
            finally:
                proc.terminate()
                proc.wait(timeout=30)


REAL_SHAPE = "phi3-mini"
REAL_SHAPE_DIR = PROJECT_ROOT / "build" / "phi3-real-shape"


def build_model(shape: str, tmp: Path) -> tuple[Path, int]:
    """The model folder and its parameter count: a random ``bench.model`` shape, or Phi-3-mini's real shape."""
    if shape == REAL_SHAPE:
        from bench.scale.model import build_real_shape

        real = build_real_shape(REAL_SHAPE_DIR)
        return real.path, real.parameters
    built = build_random_phi3(tmp / "model", SHAPES[shape])
    return built.path, built.parameters


def run(
    shape: str,
    clients: list[int],
    requests: int,
    max_tokens: int,
    max_concurrent: int,
    out: Path,
    prompt_count: int = 16,
    prompt_tokens: int = 32,
) -> dict:
    from bench.scale.monitor import GIB, TreeSampler, status_kib
    from llmflow.export_onnx import ExportSettings, run_builder

    with tempfile.TemporaryDirectory(prefix="llmflow-conc-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir, parameters = build_model(shape, tmp)
        prompts = [p.content for p in make_prompts(model_dir, prompt_count, prompt_tokens)]
        onnx_dir = run_builder(model_dir, tmp / "onnx", ExportSettings(precision="int4"))
        with project_server(onnx_dir, max_tokens, max_concurrent, tmp) as (base, proc):
            sampler = TreeSampler(proc.pid).start()
            try:
                client = openai_client(base)
                one_request(client, prompts[0], max_tokens)  # warm-up
                warm_rss = status_kib(proc.pid, "VmRSS") * 1024
                alone = {i: one_request(client, p, max_tokens)["text"] for i, p in enumerate(prompts)}
                rounds = [run_round(client, prompts, n, requests, max_tokens) for n in clients]
            finally:
                sampler.stop()
                sampler.sample()  # a last look: the server's VmHWM covers everything since it started
    for r in rounds:
        r["alone_equal"] = all(rec["text"] == alone[rec["prompt_index"]] for rec in r["records"])
        del r["records"]
    base_rate = rounds[0]["tokens_per_second"]
    result = {
        "model": {"shape": shape, "parameters": parameters},
        "max_tokens": max_tokens,
        "prompt_tokens": prompt_tokens,
        "max_concurrent": max_concurrent,
        "server_rss_gib_after_warmup": warm_rss / GIB,
        "server_peak_rss_gib": sampler.peak_rss / GIB,
        "rounds": rounds,
        "speedup_vs_first": {str(r["clients"]): r["tokens_per_second"] / base_rate for r in rounds},
    }
    return write_json(out, result)


def main() -> None:
    parser = argparse.ArgumentParser(description="Concurrent clients against the OpenAI endpoint.")
    parser.add_argument(
        "--shape",
        choices=sorted([*SHAPES, REAL_SHAPE]),
        default="mid",
        help="Model shape: mid (168 M), tiny, or phi3-mini (3.82 B, Phi-3-mini's real shape; needs ../shared).",
    )
    parser.add_argument("--prompts", type=int, default=16, help="Distinct prompts (each also answered alone).")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="Tokens of each prompt, chat template included.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="Client counts, first the base.")
    parser.add_argument("--requests", type=int, default=4, help="Requests each client sends in turn.")
    parser.add_argument("--max-tokens", type=int, default=64, help="New tokens per request (greedy).")
    parser.add_argument("--max-concurrent", type=int, default=16, help="The server's --max-concurrent.")
    args = parse_run_options(parser, DEFAULT_OUT)
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(
        args.shape,
        args.clients,
        args.requests,
        args.max_tokens,
        args.max_concurrent,
        args.out,
        args.prompts,
        args.prompt_tokens,
    )
    print(
        f"\n{result['model']['parameters'] / 1e6:.0f} M random Phi-3, {args.prompt_tokens}-token prompts, "
        f"{args.max_tokens} greedy tokens per request, --max-concurrent {args.max_concurrent}; server RSS "
        f"{result['server_rss_gib_after_warmup']:.2f} GiB after warm-up, peak {result['server_peak_rss_gib']:.2f} GiB"
    )
    print("| clients | requests | tokens/s (aggregate) | x 1 client | TTFT p50 | TTFT p99 | answers = alone |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rounds"]:
        speedup = result["speedup_vs_first"][str(r["clients"])]
        print(
            f"| {r['clients']} | {r['requests']} | {r['tokens_per_second']:.1f} | {speedup:.2f} | "
            f"{r['ttft_p50'] * 1000:.0f} ms | {r['ttft_p99'] * 1000:.0f} ms | {r['alone_equal']} |"
        )


if __name__ == "__main__":
    main()

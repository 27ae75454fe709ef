"""Prefill and decode speed of an ONNX export at a fixed prompt length, and the memory-bandwidth bound on decode.

Time to first token is the time from ``append_tokens`` of the whole prompt to the first new token (prefill plus one
step); prefill tokens/s is the prompt length over that time; decode tokens/s counts the tokens after the first.
The bound: each decoded token reads every weight once (``model.onnx.data`` minus the embedding table, of which one
row is read), so decode cannot beat ``bandwidth / bytes``; bandwidth is measured here with numpy reading a buffer far
larger than the caches, with as many threads as the engine uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def memory_bandwidth(gib: float = 1.0, repeats: int = 3, threads: int = 1) -> float:
    """Bytes a second that ``numpy.sum`` reads from a ``gib`` GiB float32 buffer far larger than the caches (the best
    of ``repeats``), split over ``threads`` threads (numpy releases the GIL in the sum): an engine decoding with
    every core is bound by what every core can read, not by one core's share."""
    from concurrent.futures import ThreadPoolExecutor

    buffer = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    parts = np.array_split(buffer, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - started)
    return buffer.nbytes / best


def weight_bytes_per_token(onnx_dir: Path) -> int:
    """Bytes of ``model.onnx.data`` a decode step reads: every initializer but those only gathered from (the embedding
    table, plain or quantized, of which one row is read; when the table is also the LM head's weight, it counts)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    gathered = {"Gather", "GatherBlockQuantized"}
    total = (onnx_dir / "model.onnx.data").stat().st_size
    for tensor in model.graph.initializer:
        if uses_external_data(tensor) and users.get(tensor.name) and users[tensor.name] <= gathered:
            total -= ExternalDataInfo(tensor).length
    return total


def onnx_speed(onnx_dir: Path, prompt_tokens: int = 512, new_tokens: int = 64, seed: int = 0) -> dict:
    """Greedy generation after a ``prompt_tokens`` prompt of random ordinary ids; TTFT, prefill and decode speed."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    config = json.loads((onnx_dir / "genai_config.json").read_text())["model"]
    # Ordinary ids only (below the added special tokens), so the prompt is one the tokenizer could have made.
    rng = np.random.default_rng(seed)
    ids = rng.integers(100, min(config["vocab_size"], 32000), size=prompt_tokens).astype(np.int32)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=prompt_tokens + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    started = time.perf_counter()
    generator.append_tokens(ids)
    generator.generate_next_token()
    first = time.perf_counter()
    decoded = 0
    while not generator.is_done():
        generator.generate_next_token()
        decoded += 1
    ended = time.perf_counter()
    ttft = first - started
    return {
        "prompt_tokens": prompt_tokens,
        "decoded_tokens": decoded,
        "ttft_s": round(ttft, 3),
        "prefill_tok_s": round(prompt_tokens / ttft, 1),
        "decode_tok_s": round(decoded / (ended - first), 2) if decoded else None,
    }


def speed_with_bound(onnx_dir: Path, prompt_tokens: int = 512, new_tokens: int = 64) -> dict:
    figures = onnx_speed(onnx_dir, prompt_tokens, new_tokens)
    bandwidth, per_token = memory_bandwidth(), weight_bytes_per_token(onnx_dir)  # og's default session: 1 thread
    bound = bandwidth / per_token
    return {
        **figures,
        "bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "weight_bytes_per_token": per_token,
        "decode_bound_tok_s": round(bound, 2),
        "decode_share_of_bound": round(figures["decode_tok_s"] / bound, 2) if figures["decode_tok_s"] else None,
    }

"""The two engines of the llama.cpp comparison, one per process: ``python -m bench.peer_workers SPEC RESULT``.

Both get the same token ids (no tokenizer in the timed part), generate greedy for exactly ``max_new_tokens``
(the benchmark model never picks its muted EOS ids, and neither loop is told to stop earlier), run with as many
threads as the machine has cores, and are timed by one helper (``timed_tokens``), after one warm-up request.

A spec with ``cases`` (the real model, ``bench.llamacpp_real``) holds several prompt sets, each with its own
``max_new_tokens``; the result then has ``cases`` (name: requests) instead of ``requests``. A real chat model does
pick its EOS id: llama.cpp's ``generate`` goes on past it, and onnxruntime-genai is held to the same count with
``ignore_eos`` (its ``min_length`` search option masks EOS until the last token), so both do the same steps.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.workers import run_spec


def timed_tokens(start: Callable[[], Iterator[int]], limit: int) -> dict[str, Any]:
    """Run ``start()``'s token stream for at most ``limit`` tokens: the tokens, time to the first, and in all.

    The clock starts before ``start()`` is called, so the prompt's prefill belongs to the first token's time.
    """
    started = time.perf_counter()
    tokens: list[int] = []
    first = None
    for token in start():
        first = first if first is not None else time.perf_counter() - started
        tokens.append(int(token))
        if len(tokens) == limit:
            break
    return {"tokens": tokens, "ttft_seconds": first, "seconds": time.perf_counter() - started}


def measure_requests(generate: Callable[[list[int]], dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One warm-up request, then every prompt ``repeats`` times (prompt after prompt)."""
    prompts = spec["prompt_ids"]
    generate(prompts[0])
    return [{**generate(ids), "prompt": i} for _ in range(spec["repeats"]) for i, ids in enumerate(prompts)]


def measure(generate: Callable[[list[int], int], dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """``requests`` for a spec of one prompt set, or ``cases`` (name: requests) for a spec with ``cases``,
    each case measured as ``measure_requests`` does, with its own prompts and ``max_new_tokens``; and
    ``cpu_per_wall``, the cores the process kept busy meanwhile (CPU seconds over wall seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    if "cases" not in spec:
        result = {"requests": measure_requests(lambda ids: generate(ids, spec["max_new_tokens"]), spec)}
    else:
        result = {
            "cases": {
                case["name"]: measure_requests(
                    lambda ids, limit=case["max_new_tokens"]: generate(ids, limit), {**spec, **case}
                )
                for case in spec["cases"]
            }
        }
    return {**result, "cpu_per_wall": (time.process_time() - cpu) / (time.perf_counter() - started)}


def longest_context(spec: dict[str, Any]) -> int:
    """Prompt plus new tokens of the longest request the spec asks for."""
    cases = spec.get("cases") or [spec]
    return max(len(ids) + case["max_new_tokens"] for case in cases for ids in case["prompt_ids"])


def run_onnxruntime_genai(spec: dict[str, Any]) -> dict[str, Any]:
    """The project's own loop (``llmflow.chat_model.generation``) on the int4 export, from ids.

    ``session_options`` (optional) is laid over the decoder's in ``genai_config.json`` (``og.Config.overlay``), e.g.
    ``{"intra_op_num_threads": 1}`` or ``{"enable_profiling": PREFIX}``; ``ignore_eos``: see the module docstring.
    """
    import numpy as np
    import onnxruntime_genai as og

    from llmflow.chat_model import generation

    config = og.Config(spec["onnx_dir"])
    if spec.get("session_options"):
        config.overlay(json.dumps({"model": {"decoder": {"session_options": spec["session_options"]}}}))
    models = [og.Model(config)]

    def start(ids: list[int], limit: int) -> Any:
        model = models[0]
        if not spec.get("ignore_eos"):
            return generation.start(model, [ids], 0, limit)
        params = og.GeneratorParams(model)
        length = len(ids) + limit
        params.set_search_options(**generation.search_options(1, length), min_length=length)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        return generator

    def stream(ids: list[int], limit: int) -> Iterator[int]:
        for [token] in generation.steps(start(ids, limit)):
            yield token

    result = measure(lambda ids, limit: timed_tokens(lambda: stream(ids, limit), limit), spec)
    models.clear()  # ends the session, which writes the profile when profiling
    return result


def run_llama_cpp(spec: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python's ``Llama.generate`` on the Q4_0 GGUF, from ids, greedy (``temp=0``: its greedy sampler).

    ``reset()`` before every request: without it ``generate`` reuses the KV cache of a shared prompt prefix,
    which the onnxruntime-genai side does not do. Also records whether llama.cpp's tokenizer, from the GGUF's
    vocabulary, gives the same ids as the model's own tokenizer for each prompt (the vocabulary is the model's).
    """
    import llama_cpp

    cores = os.cpu_count() or 1
    n_ctx = spec.get("n_ctx") or longest_context(spec)
    llm = llama_cpp.Llama(
        model_path=spec["gguf"],
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=cores,
        n_threads_batch=cores,
        seed=0,
        verbose=False,
    )

    def generate(ids: list[int], limit: int) -> dict[str, Any]:
        def stream() -> Iterator[int]:
            llm.reset()
            return llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)

        return timed_tokens(stream, limit)

    same_ids = [
        llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        for case in spec.get("cases") or [spec]
        for text, ids in zip(case["prompt_texts"], case["prompt_ids"], strict=True)
    ]
    metadata = {
        key: llm.metadata.get(key) for key in ("general.file_type", "tokenizer.ggml.pre", "general.architecture")
    }
    return {**measure(generate, spec), "tokenizer_same_ids": same_ids, "metadata": metadata}


def run_quantize(spec: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's quantizer (``llama_model_quantize``, what the ``llama-quantize`` tool calls): f32 GGUF to the
    spec's ``ftype`` (a llama-quantize name such as ``Q4_K_M``; default ``Q4_0``)."""
    from llama_cpp import llama_cpp as low

    params = low.llama_model_quantize_default_params()
    params.ftype = getattr(low, f"LLAMA_FTYPE_MOSTLY_{spec.get('ftype', 'Q4_0')}")
    params.nthread = os.cpu_count() or 1
    started = time.perf_counter()
    code = low.llama_model_quantize(spec["source"].encode(), spec["target"].encode(), params)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code} for {spec['source']}")
    return {"seconds": time.perf_counter() - started}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "onnxruntime-genai": run_onnxruntime_genai,
    "llama.cpp": run_llama_cpp,
    "quantize": run_quantize,
}


def main() -> None:
    run_spec(WORKERS)


if __name__ == "__main__":
    main()

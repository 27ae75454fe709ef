"""The two engines of the llama.cpp comparison, one per process: ``python -m bench.peer_workers SPEC RESULT``.

Both get the same token ids (no tokenizer in the timed part), generate greedy for exactly ``max_new_tokens``
(the benchmark model never picks its muted EOS ids, and neither loop is told to stop earlier), run with as many
threads as the machine has cores, and are timed by one helper (``timed_tokens``), after one warm-up request.
"""

from __future__ import annotations

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


def run_onnxruntime_genai(spec: dict[str, Any]) -> dict[str, Any]:
    """The project's own loop (``llmflow.serving.generation``) on the int4 export, from ids."""
    import onnxruntime_genai as og

    from llmflow.serving import generation

    model = og.Model(spec["onnx_dir"])
    limit = spec["max_new_tokens"]

    def stream(ids: list[int]) -> Iterator[int]:
        for [token] in generation.steps(generation.start(model, [ids], 0, limit)):
            yield token

    return {"requests": measure_requests(lambda ids: timed_tokens(lambda: stream(ids), limit), spec)}


def run_llama_cpp(spec: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python's ``Llama.generate`` on the Q4_0 GGUF, from ids, greedy (``temp=0``: its greedy sampler).

    ``reset()`` before every request: without it ``generate`` reuses the KV cache of a shared prompt prefix,
    which the onnxruntime-genai side does not do. Also records whether llama.cpp's tokenizer, from the GGUF's
    vocabulary, gives the same ids as the model's own tokenizer for each prompt (the vocabulary is the model's).
    """
    import llama_cpp

    cores = os.cpu_count() or 1
    llm = llama_cpp.Llama(
        model_path=spec["gguf"],
        n_ctx=spec["n_ctx"],
        n_batch=spec["n_ctx"],
        n_threads=cores,
        n_threads_batch=cores,
        seed=0,
        verbose=False,
    )
    limit = spec["max_new_tokens"]

    def generate(ids: list[int]) -> dict[str, Any]:
        def stream() -> Iterator[int]:
            llm.reset()
            return llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)

        return timed_tokens(stream, limit)

    same_ids = [
        llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        for text, ids in zip(spec["prompt_texts"], spec["prompt_ids"], strict=True)
    ]
    metadata = {
        key: llm.metadata.get(key) for key in ("general.file_type", "tokenizer.ggml.pre", "general.architecture")
    }
    return {"requests": measure_requests(generate, spec), "tokenizer_same_ids": same_ids, "metadata": metadata}


def run_quantize(spec: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's quantizer (``llama_model_quantize``, what the ``llama-quantize`` tool calls): f32 GGUF to Q4_0."""
    from llama_cpp import llama_cpp as low

    params = low.llama_model_quantize_default_params()
    params.ftype = low.LLAMA_FTYPE_MOSTLY_Q4_0
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

"""What guidance costs per token: ``python -m bench.guidance ONNX_DIR [--tokens 128] [--repeats 3]``.

Decodes the same chat prompt greedily for exactly ``tokens`` new tokens, without guidance (end of text held off with
``min_length``) and under a JSON schema that cannot close sooner (an array of at least 1,000 strings), through the
project's generation loop (``llmflow.chat_model.generation``). Prints the prefill (first token) and the decode rate
after it, the median of ``repeats`` runs, and the one-off cost of compiling the schema for the model's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import onnxruntime_genai as og

from llmflow.chat_model import generation

# SmolLM2's ChatML form (the model this was measured on).
PROMPT = "<|im_start|>user\nList as many fruits as you can.<|im_end|>\n<|im_start|>assistant\n"
LONG_ARRAY = {"type": "array", "items": {"type": "string"}, "minItems": 1000}


def _run(model: og.Model, ids: list[int], tokens: int, guidance: tuple[str, str] | None) -> tuple[float, float]:
    """(seconds to the first token, decode tokens per second after it) for one generation."""
    params = og.GeneratorParams(model)
    params.set_search_options(batch_size=1, max_length=len(ids) + tokens, min_length=len(ids) + tokens)
    if guidance is not None:
        params.set_guidance(*guidance)
    started = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    stamps = [time.perf_counter() for _ in generation.steps(generator)]
    if len(stamps) != tokens:
        raise RuntimeError(f"generated {len(stamps)} tokens, expected {tokens}")
    return stamps[0] - started, (tokens - 1) / (stamps[-1] - stamps[0])


def measure(onnx_dir: Path, tokens: int = 128, repeats: int = 3) -> dict[str, float]:
    """Prefill seconds and decode tokens/s, plain and guided, and the first (tokenizer-building) compile's seconds."""
    model = og.Model(str(onnx_dir))
    ids = list(og.Tokenizer(model).encode(PROMPT))
    schema = ("json_schema", json.dumps(LONG_ARRAY))
    started = time.perf_counter()
    problem = generation.check_guidance(model, schema)
    figures = {"first_compile_s": time.perf_counter() - started}
    if problem:
        raise RuntimeError(problem)
    _run(model, ids, 8, None)  # warm-up
    modes = {"plain": None, "guided": schema}
    # Interleaved, so that a busy machine slows both modes alike.
    runs = [{name: _run(model, ids, tokens, guidance) for name, guidance in modes.items()} for _ in range(repeats)]
    for name in modes:
        figures[f"{name}_prefill_s"] = statistics.median(run[name][0] for run in runs)
        figures[f"{name}_decode_tok_s"] = statistics.median(run[name][1] for run in runs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_dir", type=Path, help="An ONNX folder written by the onnxruntime-genai builder.")
    parser.add_argument("--tokens", type=int, default=128, help="New tokens per generation.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed generations per mode; the median is shown.")
    args = parser.parse_args()
    for name, value in measure(args.onnx_dir, args.tokens, args.repeats).items():
        print(f"{name:>22}: {value:.4g}")


if __name__ == "__main__":
    main()

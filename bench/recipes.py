"""Int4 recipes on the real model and on its rotated copy: perplexity ratio, greedy agreement, size, decode speed.

``python -m bench.recipes [--model build/smollm2-135m-instruct] [--recipes default,...]`` exports SmolLM2-135M-Instruct
with each recipe through the project's own ``run_builder`` (so with exactly the code ``export_onnx`` runs), and
measures, against the float model:

- **perplexity** on the first 512 tokens of ``data/heldout.txt`` (what ``evaluate`` gates on), as a ratio to the
  float model's, on the model itself and on a folded and rotated copy that computes the same function but whose
  weights are off the GGUF's Q4_1 grid (``bench.rotated``): a recipe must not owe its result to that grid;
- **greedy agreement**: the share of the first ``--questions`` questions of ``data/qa.jsonl`` whose greedy answer
  (``--max-new-tokens``) is the float model's, word for word;
- **size** of the export folder, and **decode tokens/s** (128 greedy tokens after a chat prompt, best of 3).

Figures, not a test. Writes ``bench-results/recipes.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.machine import write_json
from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

DEFAULT_MODEL = PROJECT_ROOT / "build" / "smollm2-135m-instruct"
HELDOUT_TOKENS = 512
# name -> export_onnx parameters (the rest are the defaults).
ALL_INT8 = "last_matmul,mixed_layers,qkv"
RTN = {"int4_algo": "default"}  # onnxruntime's round-to-nearest, the builder's own default method
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},  # the export's default: GPTQ onto the recipe below
    "gptq-sym": {"int4_symmetric": True},
    "gptq-plain-asym": {"int4_mixed_precision": "none"},
    "builder-default": {**RTN, "int4_mixed_precision": "none", "int4_symmetric": True},
    "accuracy1": {**RTN, "int4_mixed_precision": "none", "int4_symmetric": True, "int4_accuracy_level": 1},
    "k_quant": {"int4_algo": "k_quant", "int4_mixed_precision": "none", "int4_symmetric": True},
    "k_quant_mixed": {
        "int4_algo": "k_quant",
        "int4_mixed_precision": "last_matmul,mixed_layers",
        "int4_symmetric": True,
    },
    "asym": {**RTN, "int4_mixed_precision": "none"},
    "b16": {**RTN, "int4_block_size": 16, "int4_mixed_precision": "none", "int4_symmetric": True},
    "asym-b16": {**RTN, "int4_block_size": 16, "int4_mixed_precision": "none"},
    "head8": {**RTN, "int4_mixed_precision": "last_matmul", "int4_symmetric": True},
    "head8+qkv8": {**RTN, "int4_mixed_precision": "last_matmul,qkv", "int4_symmetric": True},
    "head8+qkv8-asym-b16": {**RTN, "int4_mixed_precision": "last_matmul,qkv", "int4_block_size": 16},
    "head8+qkv8+mixed": {**RTN, "int4_mixed_precision": ALL_INT8, "int4_symmetric": True},
    "head8+qkv8+mixed-asym": {**RTN, "int4_mixed_precision": ALL_INT8},
    "head8+qkv8+mixed-asym-b16": {**RTN, "int4_mixed_precision": ALL_INT8, "int4_block_size": 16},
    "k_quant-head8+qkv8+mixed-asym": {"int4_algo": "k_quant", "int4_mixed_precision": ALL_INT8},
    "default+clip": {**RTN, "int4_clip": "activation"},
    "default-b16+clip": {**RTN, "int4_block_size": 16, "int4_clip": "activation"},
    "head8+clip": {**RTN, "int4_mixed_precision": "last_matmul", "int4_clip": "activation"},
    "plain+clip": {**RTN, "int4_mixed_precision": "none", "int4_clip": "activation"},
    "int8": {"precision": "int8"},
    "fp32": {"precision": "fp32"},
}


@dataclass
class RecipeFigures:
    recipe: str
    label: str
    perplexity: float
    ratio: float
    rotated_perplexity: float
    rotated_ratio: float
    greedy_agreement: float
    size_mb: float
    decode_tokens_per_s: float
    export_s: float


def greedy_answers(generate: Any, questions: list[str]) -> list[str]:
    return [generate(q).strip() for q in questions]


def agreement(answers: list[str], reference: list[str]) -> float:
    """The share of answers word for word the reference's (greedy agreement)."""
    return sum(a == b for a, b in zip(answers, reference, strict=True)) / len(reference)


def onnx_generator(folder: Path, max_new_tokens: int) -> Any:
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)

    def generate(question: str) -> str:
        prompt = tokenizer.apply_chat_template(
            json.dumps([{"role": "user", "content": question}]), add_generation_prompt=True
        )
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        out: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return tokenizer.decode(np.asarray(out, dtype=np.int32))

    return generate


def decode_speed(folder: Path, tokens: int = 128, repeats: int = 3) -> float:
    """Best decode tokens/s of ``repeats`` greedy runs of ``tokens`` new tokens (prefill not counted)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template(
        json.dumps([{"role": "user", "content": "Tell me a long story about the sea and the mountains."}]),
        add_generation_prompt=True,
    )
    ids = tokenizer.encode(prompt)
    best = 0.0
    for _ in range(repeats):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + tokens + 1, do_sample=False, min_length=len(ids) + tokens + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        generator.generate_next_token()
        started, done = time.perf_counter(), 0
        while not generator.is_done() and done < tokens:
            generator.generate_next_token()
            done += 1
        best = max(best, done / (time.perf_counter() - started))
    return best


def reference_figures(model_dir: Path, questions: list[str], max_new_tokens: int, text: str | None) -> dict[str, Any]:
    """The float model's perplexity on ``text`` (None: not measured) and greedy answers to ``questions``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmflow.evaluation.perplexity import perplexity_transformers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def generate(question: str) -> str:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    ppl = (
        None if text is None else perplexity_transformers(model, tokenizer, text, max_tokens=HELDOUT_TOKENS).perplexity
    )
    return {"perplexity": ppl, "answers": greedy_answers(generate, questions)}


def export(model_dir: Path, out: Path, params: dict[str, Any]) -> tuple[Path, float, str]:
    from llmflow.export_onnx import ExportSettings, run_builder

    settings = ExportSettings(**params)
    started = time.perf_counter()
    run_builder(model_dir, out, settings)
    return (
        out,
        time.perf_counter() - started,
        settings.int4_recipe().label if settings.precision == "int4" else settings.precision,
    )


def measure(
    model_dir: Path, rotated_dir: Path, names: list[str], questions: list[str], max_new_tokens: int
) -> tuple[dict[str, Any], list[RecipeFigures]]:
    from llmflow.evaluation.perplexity import load_heldout, perplexity_onnx

    text = load_heldout()
    reference = reference_figures(model_dir, questions, max_new_tokens, text)
    rotated_reference = reference_figures(rotated_dir, [], max_new_tokens, text)["perplexity"]
    logger.info("reference perplexity %.4f, rotated %.4f", reference["perplexity"], rotated_reference)
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="llmflow-recipe-") as tmp:
            folder, seconds, label = export(model_dir, Path(tmp) / "real", RECIPES[name])
            ppl = perplexity_onnx(folder, text, max_tokens=HELDOUT_TOKENS).perplexity
            answers = greedy_answers(onnx_generator(folder, max_new_tokens), questions)
            agreed = agreement(answers, reference["answers"])
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            speed = decode_speed(folder)
            rotated, _, _ = export(rotated_dir, Path(tmp) / "rotated", RECIPES[name])
            rotated_ppl = perplexity_onnx(rotated, text, max_tokens=HELDOUT_TOKENS).perplexity
        row = RecipeFigures(
            name,
            label,
            ppl,
            ppl / reference["perplexity"],
            rotated_ppl,
            rotated_ppl / rotated_reference,
            agreed,
            size,
            speed,
            seconds,
        )
        logger.info("%s", row)
        rows.append(row)
    return {"perplexity": reference["perplexity"], "rotated_perplexity": rotated_reference}, rows


def speed_rounds(model_dir: Path, names: list[str], rounds: int) -> dict[str, float]:
    """Decode tokens/s of each recipe's export, best of ``rounds`` rounds that take the recipes in turn.

    Interleaved, so that a slower stretch of a shared machine falls on every recipe alike.
    """
    best = dict.fromkeys(names, 0.0)
    with tempfile.TemporaryDirectory(prefix="llmflow-recipe-speed-") as tmp:
        folders = {name: export(model_dir, Path(tmp) / name, RECIPES[name])[0] for name in names}
        for _ in range(rounds):
            for name, folder in folders.items():
                best[name] = max(best[name], decode_speed(folder, repeats=1))
    return best


def table(rows: list[RecipeFigures]) -> str:
    lines = [
        "| recipe | perplexity × ref | rotated copy × ref | greedy agreement | size MB | decode tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.recipe} (`{r.label}`) | {r.ratio:.3f} | {r.rotated_ratio:.3f} | {r.greedy_agreement:.2f} | "
            f"{r.size_mb:.0f} | {r.decode_tokens_per_s:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Int4 recipes on the real model and its rotated copy (figures).")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="The float HF folder (make smollm2).")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"Comma-separated, of: {', '.join(RECIPES)}.")
    parser.add_argument("--questions", type=int, default=20, help="QA questions for greedy agreement.")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="Tokens per greedy answer.")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results" / "recipes.json")
    parser.add_argument("--speed-rounds", type=int, default=0, help="Only decode speed, best of N interleaved rounds.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from bench.rotated import rotate_model
    from llmflow.evaluation.qa import load_qa

    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; expected some of: {', '.join(RECIPES)}")
    if args.speed_rounds:
        speeds = speed_rounds(args.model, names, args.speed_rounds)
        write_json(args.out, speeds, indent=1)
        print("| recipe | decode tok/s | × builder default |\n|---|---:|---:|")
        base = speeds.get("builder-default")
        for name, speed in speeds.items():
            print(f"| {name} | {speed:.1f} | {speed / base:.2f} |" if base else f"| {name} | {speed:.1f} | |")
        return
    questions = [pair.question for pair in load_qa(PROJECT_ROOT / "data" / "qa.jsonl")][: args.questions]
    with tempfile.TemporaryDirectory(prefix="llmflow-rotated-") as tmp:
        rotated = rotate_model(args.model, Path(tmp) / "rotated")
        reference, rows = measure(args.model, rotated, names, questions, args.max_new_tokens)
    write_json(args.out, {"reference": reference, "recipes": [asdict(r) for r in rows]}, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()

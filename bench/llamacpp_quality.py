"""What llama.cpp's quantization costs on the same float weights: perplexity of Q4_K_M, Q4_0 and Q8_0 (figures).

``python -m bench.llamacpp_quality [--model build/smollm2-135m-instruct] [--rotated]`` converts the float HF folder
with llama.cpp's own converter to a float32 GGUF (``bench/gguf_convert.py``, in a process of its own), quantizes it
with ``llama_model_quantize`` (what ``llama-quantize`` runs; Q4_K_M keeps a tied embedding/output at Q6_K and some
attention-value and FFN-down tensors at Q6_K, as llama.cpp chooses), and scores each GGUF with llama-cpp-python on
exactly the token ids ``evaluate`` scores: the first 512 tokens of ``data/heldout.txt`` as the transformers tokenizer
encodes them (``llmflow.evaluation.perplexity.encode_text``), given to llama.cpp as ids, not text, so the two
tokenizers never differ. ``--rotated`` does the same for the folded and rotated copy (``bench.rotated``).

It also measures **greedy agreement** as ``bench.recipes`` does for the ONNX recipes: the share of the first
``--questions`` questions of ``data/qa.jsonl`` whose greedy answer (``--max-new-tokens``, the transformers chat
template's prompt given as ids, stopped at the tokenizer's EOS, decoded by the transformers tokenizer) is word for
word the float transformers model's, and the same against llama.cpp's own float32 GGUF (the engine's own float).

Needs ``make bench-deps`` (llama-cpp-python built from its sdist, whose vendored tree holds the converter).
Writes ``bench-results/llamacpp_quality.json``.
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.llamacpp import default_llama_cpp_tree
from bench.machine import write_json
from bench.recipes import DEFAULT_MODEL, HELDOUT_TOKENS
from llmflow import PROJECT_ROOT

# Names of llama.cpp's file types (llama_ftype), as llama-quantize takes them.
FTYPES = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


def heldout_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    from llmflow.evaluation.perplexity import encode_text, first_tokens, load_heldout

    return first_tokens(encode_text(AutoTokenizer.from_pretrained(model_dir), load_heldout()), HELDOUT_TOKENS)


def quantize(source: Path, target: Path, ftype: str) -> None:
    from llama_cpp import llama_cpp as low

    params = low.llama_model_quantize_default_params()
    params.ftype = getattr(low, FTYPES[ftype])
    params.nthread = 2
    code = low.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code} for {source} -> {ftype}")


def perplexity_gguf(path: Path, ids: list[int]) -> float:
    """exp(mean NLL) of ``ids[1:]`` given the ids before each, in one window (every position's logits)."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=len(ids) + 8, n_batch=len(ids), logits_all=True, n_threads=2, verbose=False)
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_norm = (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))[:, 0]
    nll = log_norm[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
    return math.exp(float(nll.mean()))


def greedy_answers_gguf(
    path: Path, prompts: list[list[int]], eos: set[int], max_new_tokens: int, decode: Any
) -> list[str]:
    """Greedy answers of the GGUF at ``path`` to each prompt (token ids), ``decode``d, stripped."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=max(map(len, prompts)) + max_new_tokens + 8, n_threads=2, verbose=False)
    answers = []
    for ids in prompts:
        out: list[int] = []
        for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            if token in eos or len(out) == max_new_tokens:
                break
            out.append(token)
        answers.append(decode(out).strip())
    return answers


def measure(
    model_dir: Path, work: Path, questions: list[str] | None = None, max_new_tokens: int = 24
) -> dict[str, Any]:
    f32 = work / "model-f32.gguf"
    subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "gguf_convert.py"), str(default_llama_cpp_tree()), str(model_dir),
         str(f32), "llama"],
        check=True, capture_output=True,
    )  # fmt: skip
    ids = heldout_ids(model_dir)
    figures: dict[str, Any] = {"f32": {"perplexity": perplexity_gguf(f32, ids), "size_mb": f32.stat().st_size / 1e6}}
    for name in FTYPES:
        target = work / f"model-{name}.gguf"
        quantize(f32, target, name)
        figures[name] = {"perplexity": perplexity_gguf(target, ids), "size_mb": target.stat().st_size / 1e6}
    for entry in figures.values():
        entry["ratio"] = entry["perplexity"] / figures["f32"]["perplexity"]
    if questions:
        from transformers import AutoTokenizer

        from bench.recipes import agreement, reference_figures

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompts = [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
            )
            for q in questions
        ]
        eos = {tokenizer.eos_token_id} | set(tokenizer.all_special_ids)
        decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
        float_answers = reference_figures(model_dir, questions, max_new_tokens, None)["answers"]
        engine_float = greedy_answers_gguf(f32, prompts, eos, max_new_tokens, decode)
        for name, entry in figures.items():
            answers = (
                engine_float
                if name == "f32"
                else greedy_answers_gguf(work / f"model-{name}.gguf", prompts, eos, max_new_tokens, decode)
            )
            entry["greedy_agreement"] = agreement(answers, float_answers)
            entry["greedy_agreement_vs_f32_gguf"] = agreement(answers, engine_float)
            entry["answers"] = answers
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="llama.cpp's Q4_K_M/Q4_0/Q8_0 perplexity on the same weights.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="The float HF folder (make smollm2).")
    parser.add_argument("--rotated", action="store_true", help="Also the folded and rotated copy (bench.rotated).")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results" / "llamacpp_quality.json")
    parser.add_argument("--questions", type=int, default=20, help="QA questions for greedy agreement (0: none).")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="Tokens per greedy answer.")
    args = parser.parse_args()
    from llmflow.evaluation.qa import load_qa

    questions = [pair.question for pair in load_qa(PROJECT_ROOT / "data" / "qa.jsonl")][: args.questions]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llmflow-gguf-") as tmp:
        results["model"] = measure(args.model, Path(tmp), questions, args.max_new_tokens)
        if args.rotated:
            from bench.rotated import rotate_model

            rotated = rotate_model(args.model, Path(tmp) / "rotated")
            work = Path(tmp) / "rotated-gguf"
            work.mkdir()
            results["rotated"] = measure(rotated, work, questions, args.max_new_tokens)
    write_json(args.out, results, indent=1)
    print(
        "| weights | llama.cpp type | perplexity | × f32 | greedy agreement (float model) | (f32 GGUF) | size MB |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    for which, figures in results.items():
        for name, entry in figures.items():
            print(
                f"| {which} | {name} | {entry['perplexity']:.3f} | {entry['ratio']:.3f} | "
                f"{entry.get('greedy_agreement', float('nan')):.2f} | "
                f"{entry.get('greedy_agreement_vs_f32_gguf', float('nan')):.2f} | {entry['size_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()

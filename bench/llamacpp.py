"""onnxruntime-genai against llama.cpp, the engine a CPU user would otherwise pick: ``python -m bench.llamacpp``.

In a temporary folder it builds the benchmark's random Phi-3 (``bench.model``; ``mid`` is the 168 M model), exports it
with the onnxruntime-genai builder (int4, CPU, block 32, accuracy level 4, as ``bench.concurrency``), converts the
same saved model with llama.cpp's own converter to a float32 GGUF (``bench/gguf_convert.py``) and quantizes that to
Q4_0 with llama.cpp's quantizer. Then each engine, in a fresh process of its own (``bench.peer_workers``), generates
greedy for the same prompt token ids, exactly ``max_new_tokens`` each, with as many threads as there are cores.

Both engines are given token ids, never text, so the timed part holds no tokenizer; the GGUF's vocabulary (the
model's own 448 BPE tokens padded to 32064 ids, see ``bench/gguf_convert.py``) does not enter the figures. The work per
token is set by the shapes, which are the same: the embedding row, 8 layers, the 32064-wide LM head.

Figures: TTFT (prompt ids in, first new token out: the prefill), decode tokens/s (the tokens after the first over
the time after the first), and their ratios onnxruntime-genai / llama.cpp. Writes JSON (``--out``) and a table.
Needs ``requirements-bench.txt`` and the llama-cpp-python sdist unpacked under ``build/llama`` (``make bench``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from statistics import mean
from typing import Any

from bench.benchmark import run_worker
from bench.machine import measure_quietly, parse_run_options, write_json
from bench.model import SHAPES, build_random_phi3, make_prompts
from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench-results/llamacpp.json")
ENGINES = ("onnxruntime-genai", "llama.cpp")


def default_llama_cpp_tree() -> Path:
    """Where ``make bench`` unpacks the llama-cpp-python sdist of the installed version: its vendored llama.cpp."""
    return PROJECT_ROOT / "build" / "llama" / f"llama_cpp_python-{version('llama-cpp-python')}" / "vendor" / "llama.cpp"


def engine_figures(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """TTFT (mean), decode tokens/s (tokens after the first over the time after the first) and end-to-end tokens/s."""
    if not requests or any(r["ttft_seconds"] is None or len(r["tokens"]) < 2 for r in requests):
        raise ValueError(f"every request needs at least 2 tokens and a first-token time; got {requests!r:.200}")
    decode_tokens = sum(len(r["tokens"]) - 1 for r in requests)
    decode_seconds = sum(r["seconds"] - r["ttft_seconds"] for r in requests)
    return {
        "ttft_ms": mean(r["ttft_seconds"] for r in requests) * 1000,
        "decode_tokens_per_s": decode_tokens / decode_seconds,
        "tokens_per_s": sum(len(r["tokens"]) for r in requests) / sum(r["seconds"] for r in requests),
        "new_tokens": sorted({len(r["tokens"]) for r in requests}),
        "requests": len(requests),
    }


def machine_record(load_start: tuple[float, float, float]) -> dict[str, Any]:
    """The machine a comparison ran on: cores, load average at its start and end, and the engines' versions."""
    return {
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "versions": {n: version(n) for n in ("onnxruntime-genai", "onnxruntime", "llama-cpp-python")},
    }


def peer_ratios(onnx: dict[str, Any], llama: dict[str, Any]) -> dict[str, float]:
    """onnxruntime-genai over llama.cpp: decode tokens/s (above 1: onnxruntime-genai faster), TTFT (below 1: faster)."""
    return {
        "decode_tokens_per_s": onnx["decode_tokens_per_s"] / llama["decode_tokens_per_s"],
        "ttft": onnx["ttft_ms"] / llama["ttft_ms"],
        "tokens_per_s": onnx["tokens_per_s"] / llama["tokens_per_s"],
    }


def same_tokens(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """How many requests of the two engines generated the same ids for the same prompt (int4 and Q4_0 round
    differently, so a random model's greedy paths may part): a reading, not a pass mark."""
    firsts = {r["prompt"]: r["tokens"] for r in a}
    return f"{sum(r['tokens'] == firsts[r['prompt']] for r in b)}/{len(b)}"


def format_peer_table(result: dict[str, Any]) -> str:
    figures, ratio = result["engines"], result["ratios"]
    lines = [
        f"{'engine':<20} {'weights':<26} {'size MB':>8} {'TTFT ms':>8} {'decode tok/s':>13} {'tok/s':>7} "
        f"{'peak RSS MB':>12}"
    ]
    for name in ENGINES:
        f = figures[name]
        lines.append(
            f"{name:<20} {f['weights']:<26} {f['size_bytes'] / 1e6:>8.1f} {f['ttft_ms']:>8.1f} "
            f"{f['decode_tokens_per_s']:>13.1f} {f['tokens_per_s']:>7.1f} {f['peak_rss_mb']:>12.0f}"
        )
    lines.append(
        f"onnxruntime-genai / llama.cpp: decode tokens/s {ratio['decode_tokens_per_s']:.3f} (above 1: faster), "
        f"TTFT {ratio['ttft']:.3f} (below 1: faster), end-to-end tokens/s {ratio['tokens_per_s']:.3f}"
    )
    return "\n".join(lines)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def convert_f32(llama_cpp: Path, model_dir: Path, f32: Path, work: Path, converter: str = "phi3") -> float:
    """llama.cpp's converter to an f32 GGUF at ``f32`` (``bench/gguf_convert.py``, ``converter`` one of its
    ``CONVERTERS``, see ``converter_for``; in a process of its own); returns its seconds."""
    started = time.perf_counter()
    log = work / f"convert-{f32.stem}.log"
    with log.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "bench" / "gguf_convert.py"), str(llama_cpp), str(model_dir), str(f32),
             converter],
            cwd=PROJECT_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"convert_hf_to_gguf failed with exit code {done.returncode}:\n{tail}")
    return time.perf_counter() - started


def converter_for(model_dir: Path) -> str:
    """Which of ``bench/gguf_convert.py``'s converters fits the HF folder: ``llama`` (SmolLM2), ``phi3`` (the random
    Phi-3 with the tiny model's GPT-2 byte-level BPE) or ``phi3-llama-hf`` (Phi-3 with its own SentencePiece-style
    ``tokenizer.json``, as ``../shared/phi3-mini-4k-instruct/`` holds it)."""
    import json

    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type == "llama":
        return "llama"
    if model_type == "phi3":
        model = json.loads((model_dir / "tokenizer.json").read_text()).get("model") or {}
        return "phi3-llama-hf" if model.get("byte_fallback") else "phi3"
    raise ValueError(f"no GGUF converter here for model_type {model_type!r} in {model_dir}; accepted: llama, phi3")


def gguf_bytes_per_token(gguf: Path) -> int:
    """Bytes of weights llama.cpp reads to decode one token: every tensor but the token embedding table, of which it
    reads one row (unless the model has no ``output.weight`` and the table is its LM head too). Read with the gguf
    package that ``make smollm2`` installs (``requirements-realmodel.txt``; transformers reads GGUF files with it)."""
    from gguf import GGUFReader

    sizes = {tensor.name: int(tensor.n_bytes) for tensor in GGUFReader(str(gguf)).tensors}
    embedding = sizes["token_embd.weight"] if "output.weight" in sizes else 0
    return sum(sizes.values()) - embedding


def quantize_gguf(f32: Path, target: Path, ftype: str, work: Path) -> float:
    """llama.cpp's quantizer (``bench.peer_workers``, a fresh process) from ``f32`` to ``ftype`` (e.g. ``Q4_K_M``)."""
    spec = {"worker": "quantize", "source": str(f32), "target": str(target), "ftype": ftype}
    return run_worker(f"quantize-{ftype}", spec, work, module="bench.peer_workers")["seconds"]


def convert_to_gguf(llama_cpp: Path, model_dir: Path, out: Path, work: Path) -> dict[str, Any]:
    """llama.cpp's converter (f32 GGUF, ``bench/gguf_convert.py``), then its quantizer to Q4_0 at ``out``."""
    f32 = work / "model-f32.gguf"
    converted = convert_f32(llama_cpp, model_dir, f32, work)
    quantized = quantize_gguf(f32, out, "Q4_0", work)
    return {"convert_seconds": converted, "quantize_seconds": quantized, "f32_bytes": f32.stat().st_size}


def run(
    shape: str,
    max_new_tokens: int,
    prompts: int,
    prompt_tokens: int,
    repeats: int,
    quiet_wait_s: float,
    busy_retries: int,
    llama_cpp: Path,
    out: Path,
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from llmflow.export_onnx import ExportSettings, run_builder

    if not (llama_cpp / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(f"no convert_hf_to_gguf.py in {llama_cpp}; run `make bench` (it unpacks the sdist)")
    started, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="llmflow-llamacpp-") as tmp_name:
        tmp = Path(tmp_name)
        built = build_random_phi3(tmp / "model", SHAPES[shape])
        texts = [p.templated for p in make_prompts(built.path, prompts, prompt_tokens)]
        tokenizer = AutoTokenizer.from_pretrained(str(built.path))
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        step = time.perf_counter()
        onnx_dir = run_builder(built.path, tmp / "onnx", ExportSettings(precision="int4"))
        export_seconds = time.perf_counter() - step
        gguf = tmp / "model-q4_0.gguf"
        setup = {"onnx_export_seconds": export_seconds, **convert_to_gguf(llama_cpp, built.path, gguf, tmp)}
        common = {"prompt_ids": ids, "prompt_texts": texts, "max_new_tokens": max_new_tokens, "repeats": repeats}
        specs = {
            "onnxruntime-genai": {**common, "worker": "onnxruntime-genai", "onnx_dir": str(onnx_dir)},
            "llama.cpp": {**common, "worker": "llama.cpp", "gguf": str(gguf), "n_ctx": prompt_tokens + max_new_tokens},
        }
        raw = {
            name: measure_quietly(
                name,
                functools.partial(run_worker, name, spec, tmp, module="bench.peer_workers"),
                quiet_wait_s,
                busy_retries,
            )
            for name, spec in specs.items()
        }
        sizes = {"onnxruntime-genai": folder_bytes(onnx_dir), "llama.cpp": gguf.stat().st_size}
    weights = {"onnxruntime-genai": "int4 (MatMulNBits, block 32)", "llama.cpp": "GGUF Q4_0 (block 32)"}
    engines = {
        name: {
            **engine_figures(raw[name]["requests"]),
            "weights": weights[name],
            "size_bytes": sizes[name],
            "peak_rss_mb": raw[name]["peak_rss_mb"],
            "other_cpu_cores": raw[name]["other_cpu_cores"],
            "attempts_other_cpu_cores": raw[name]["attempts_other_cpu_cores"],
        }
        for name in ENGINES
    }
    result = {
        "model": {"shape_name": shape, "parameters": built.parameters},
        "settings": {
            "max_new_tokens": max_new_tokens,
            "prompts": prompts,
            "prompt_tokens": prompt_tokens,
            "repeats": repeats,
            "threads": os.cpu_count(),
            "greedy": True,
            "input": "token ids",
        },
        "engines": engines,
        "ratios": peer_ratios(engines["onnxruntime-genai"], engines["llama.cpp"]),
        "same_tokens": same_tokens(raw["onnxruntime-genai"]["requests"], raw["llama.cpp"]["requests"]),
        "tokens_by_prompt": {name: {r["prompt"]: r["tokens"] for r in raw[name]["requests"]} for name in ENGINES},
        "llama_cpp_tokenizer_same_ids": raw["llama.cpp"]["tokenizer_same_ids"],
        "gguf_metadata": raw["llama.cpp"]["metadata"],
        "setup_seconds": setup,
        "machine": machine_record(load_start),
        "wall_seconds": time.perf_counter() - started,
    }
    return write_json(out, result)


def main() -> None:
    parser = argparse.ArgumentParser(description="onnxruntime-genai against llama.cpp on the random Phi-3.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mid", help="Model shape: mid (168 M) or tiny.")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="New tokens per request (greedy).")
    parser.add_argument("--prompts", type=int, default=4, help="Prompts, each timed --repeats times.")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="Length of every templated prompt.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed rounds over the prompts.")
    args = parse_run_options(parser, DEFAULT_OUT, busy_retries=2, llama_cpp=True)
    result = run(
        args.shape,
        args.max_new_tokens,
        args.prompts,
        args.prompt_tokens,
        args.repeats,
        args.quiet_wait,
        args.busy_retries,
        args.llama_cpp or default_llama_cpp_tree(),
        args.out,
    )
    print(
        f"\nrandom Phi-3 {args.shape}: {result['model']['parameters'] / 1e6:.1f} M parameters, "
        f"{args.prompt_tokens}-token prompts (ids), {args.max_new_tokens} new tokens, greedy, {os.cpu_count()} threads"
    )
    print(format_peer_table(result))
    print(f"same greedy ids in both engines: {result['same_tokens']}; GGUF: {result['gguf_metadata']}")
    print(
        f"llama.cpp's tokenizer gives the model's ids for every prompt: {all(result['llama_cpp_tokenizer_same_ids'])}"
    )
    busy = {n: round(e["other_cpu_cores"], 2) for n, e in result["engines"].items() if e["other_cpu_cores"] >= 0.2}
    if busy:
        print(f"WARNING: other processes used CPU (cores) during {busy}: those figures are slowed by them")
    print(f"results: {args.out}  (wall {result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()

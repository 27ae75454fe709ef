"""Benchmark the project's serving paths on a random Phi-3-shaped model: ``python -m bench.benchmark``.

Reads nothing but the project's code. In a temporary folder it builds the model (``bench.model``), runs the
project's own steps on it against a temporary SQLite tracking store (download, export_onnx int4/cpu,
log_pyfunc, log_transformers), then measures, on the same prompts, greedy, with the same number of new tokens:
the bare onnxruntime-genai loop, the ONNX pyfunc in process, the transformers pyfunc in process, the ONNX
pyfunc served over HTTP, and the ONNX pyfunc with batch 1 against batch 8; for reading those, also the bare loop
with batch 8, and the pyfunc and the bare loop taking turns in one process (``bench.workers.paired``).
Each in-process configuration runs in a fresh process of its own (``bench.workers``), so its peak RSS is its own.
Writes the figures, ratios and targets as JSON (``--out``) and prints them as a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.machine import OtherLoad, measure_quietly, start_logging, write_json
from bench.model import SHAPES, build_random_phi3, make_prompts
from bench.pipeline import pyfunc_version, run_pipeline, tracking_store
from bench.report import (
    batch_configs,
    batch_summary,
    format_table,
    paired_configs,
    ratios,
    single_config,
    text_agreement,
    token_count_check,
)
from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench-results/benchmark.json")
WORKER_TIMEOUT_S = 900
VERSIONS = ("onnxruntime-genai", "onnxruntime", "mlflow", "transformers", "torch")


class BenchmarkError(RuntimeError):
    """A configuration failed; the message names it and ends with its log."""


def run_worker(name: str, spec: dict[str, Any], work: Path, module: str = "bench.workers") -> dict[str, Any]:
    """Run one configuration in a fresh process (``module``: ``bench.workers`` or ``bench.peer_workers``);
    return its result and the CPU others took."""
    spec_path, result_path, log = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    logger.info("measuring %s in a fresh process ...", name)
    started, meter = time.perf_counter(), OtherLoad()
    with log.open("wb") as sink:
        done = subprocess.run(
            [sys.executable, "-m", module, str(spec_path), str(result_path)],
            cwd=PROJECT_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=WORKER_TIMEOUT_S,
            check=False,
        )
    other = meter.cores()
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BenchmarkError(f"configuration '{name}' failed with exit code {done.returncode}:\n{tail}")
    logger.info("measured %s in %.1f s (other processes: %.2f cores)", name, time.perf_counter() - started, other)
    return {**json.loads(result_path.read_text()), "other_cpu_cores": other}


def measure(
    pipeline: dict[str, Any],
    form: str,
    prompts: list[dict],
    settings: dict[str, Any],
    served: bool,
    paired_rounds: int,
    work: Path,
) -> dict[str, dict[str, Any]]:
    """Every configuration's raw result: the in-process ones each in a fresh process, then the served one."""
    from bench.served import run_served

    common = {"onnx_dir": pipeline["onnx_dir"], "prompts": prompts, **settings}
    onnx = {**common, "model_uri": pipeline["pyfunc_uri"], "chat_extra": {"temperature": 0.0}}
    specs = {
        "bare": {**onnx, "worker": "bare", "paired_rounds": paired_rounds},
        "bare_batch": {**common, "worker": "bare_batch"},
        "pyfunc": {**onnx, "worker": "pyfunc", "paired_rounds": paired_rounds},
        "transformers": {**common, "worker": "transformers", "model_uri": pipeline["transformers_uri"]},
        "batch": {**onnx, "worker": "batch"},
    }
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        name: functools.partial(run_worker, name, spec, work) for name, spec in specs.items()
    }
    if served:
        runs["served"] = functools.partial(run_served, {**onnx, "form": form}, work / "served.log")
    return {
        name: measure_quietly(name, run_once, settings["quiet_wait_s"], settings["busy_retries"])
        for name, run_once in runs.items()
    }


def figures(raw: dict[str, dict[str, Any]], model_dir: Path, timed: int) -> dict[str, dict[str, Any]]:
    """Each configuration's figures; replies without a count are counted against the bare loop's (``bench.report``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    references = raw["bare"]["reference"]
    configs = {
        name: single_config(raw[name], references, count_tokens)
        for name in ("bare", "pyfunc", "transformers", "served")
        if name in raw
    }
    configs.update(batch_configs(raw["batch"], references, count_tokens))
    configs["bare_batch8"] = batch_summary(raw["bare_batch"], references, count_tokens)
    if "paired" in raw["bare"] and "paired" in raw["pyfunc"]:
        configs.update(paired_configs([raw["bare"], raw["pyfunc"]], references, count_tokens, timed))
    return configs


def run_benchmark(
    shape: str = "mid",
    out: Path = DEFAULT_OUT,
    max_new_tokens: int = 128,
    prompts: int = 4,
    prompt_tokens: int = 32,
    batch_size: int = 8,
    batch_repeats: int = 2,
    served: bool = True,
    seed: int = 0,
    quiet_wait_s: float = 60.0,
    busy_retries: int = 2,
    paired_rounds: int = 2,
) -> dict[str, Any]:
    """Build the model of ``shape``, run the pipeline on it, measure every configuration; write ``out``, return it.

    ``prompts`` prompts of ``prompt_tokens`` tokens are timed one request at a time after one warm-up request;
    the batch comparison uses ``batch_size`` prompts, each alone and then all in one call (``batch_repeats`` times).
    Before each configuration it waits up to ``quiet_wait_s`` for other processes to leave the CPU (0: no wait),
    and measures it again, up to ``busy_retries`` times, while other processes took CPU during it. The pyfunc's
    process then also times ``paired_rounds`` rounds of the prompts interleaved with the plain loop (0: none).
    """
    if shape not in SHAPES:
        raise ValueError(f"shape '{shape}' is not known; expected one of: {', '.join(SHAPES)}")
    started, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="llmflow-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with tracking_store(tmp):
            logger.info("building the random %s Phi-3 (%s) ...", shape, SHAPES[shape])
            step = time.perf_counter()
            built = build_random_phi3(tmp / "model", SHAPES[shape], seed)
            build_seconds = time.perf_counter() - step
            prompt_list = [asdict(p) for p in make_prompts(built.path, max(prompts, batch_size), prompt_tokens, seed)]
            settings = {
                "max_new_tokens": max_new_tokens,
                "timed_prompts": prompts,
                "batch_size": batch_size,
                "batch_repeats": batch_repeats,
                "quiet_wait_s": quiet_wait_s,
                "busy_retries": busy_retries,
            }
            pipeline = run_pipeline(built.path, max_new_tokens, tmp / "onnx-copy")
            version_info = pyfunc_version(pipeline["pyfunc_uri"])
            logger.info("ONNX pyfunc measured: %s", version_info)
            raw = measure(pipeline, version_info["input_form"], prompt_list, settings, served, paired_rounds, tmp)
            configs = figures(raw, built.path, prompts)
    result = {
        "model": {"shape_name": shape, "shape": asdict(built.shape), "parameters": built.parameters, "seed": seed},
        "settings": {
            **settings,
            "prompt_tokens": [r["prompt_tokens"] for r in raw["bare"]["reference"]],
            "warmup_requests": 1,
            "paired_rounds": paired_rounds,
            "greedy": True,
        },
        "pyfunc_version": version_info,
        "configs": configs,
        "ratios": ratios(configs),
        "token_counts": token_count_check(configs, max_new_tokens),
        "text_agreement": text_agreement(configs),
        "setup_seconds": {"build_model": build_seconds, **pipeline["seconds"]},
        "onnx_size_bytes": pipeline["onnx_size_bytes"],
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "versions": {name: version(name) for name in VERSIONS},
        },
        "wall_seconds": time.perf_counter() - started,
        "quiet_wait_seconds": sum(r.get("quiet_wait_seconds", 0.0) for r in raw.values()),
    }
    out = Path(out)
    return write_json(out, result)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the serving paths on a random Phi-3-shaped model.")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="mid", help="Model shape: mid (168 M) or tiny.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write the results to.")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="New tokens per request (greedy).")
    parser.add_argument("--prompts", type=int, default=4, help="Prompts timed one request at a time.")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="Length of every templated prompt.")
    parser.add_argument("--batch-size", type=int, default=8, help="Rows in the batched predict call.")
    parser.add_argument("--batch-repeats", type=int, default=2, help="Timed batched calls.")
    parser.add_argument("--no-served", action="store_true", help="Leave out the HTTP-served configuration.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weights and of the prompts.")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="Seconds to wait, before each configuration, for other processes to leave the CPU (0: no wait).",
    )
    parser.add_argument(
        "--busy-retries",
        type=int,
        default=2,
        help="Times to measure a configuration again when other processes took CPU during it.",
    )
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=2,
        help="Rounds of the prompts that the pyfunc and the plain loop take in turns in one process (0: none).",
    )
    args = parser.parse_args()
    start_logging()
    result = run_benchmark(
        shape=args.shape,
        out=args.out,
        max_new_tokens=args.max_new_tokens,
        prompts=args.prompts,
        prompt_tokens=args.prompt_tokens,
        batch_size=args.batch_size,
        batch_repeats=args.batch_repeats,
        served=not args.no_served,
        seed=args.seed,
        quiet_wait_s=args.quiet_wait,
        busy_retries=args.busy_retries,
        paired_rounds=args.paired_rounds,
    )
    model = result["model"]
    print(
        f"\nrandom Phi-3 {model['shape_name']}: {model['parameters'] / 1e6:.1f} M parameters, "
        f"{result['settings']['max_new_tokens']} new tokens, greedy; ONNX pyfunc: {result['pyfunc_version']}"
    )
    print(format_table(result))
    machine = result["machine"]
    print(f"load average at start {machine['loadavg_start'][0]:.2f}, at end {machine['loadavg_end'][0]:.2f}")
    waited = result["quiet_wait_seconds"]
    print(f"results: {args.out}  (wall {result['wall_seconds']:.0f} s, {waited:.0f} s of it waiting for a quiet CPU)")


if __name__ == "__main__":
    main()

"""Scale benchmark: ``main`` on a model of Phi-3-mini's real shape (``make bench-scale``, ``python -m bench.scale``).

1. Builds (once; reused after) a random bf16 model with Phi-3-mini-4k-instruct's config and tokenizer, read from
   ``../shared/phi3-mini-4k-instruct/`` next to the project; says so and stops when that folder is missing.
2. Runs ``main`` on it with main's own evaluation bounds (``eval_max_questions`` questions of the shipped QA set,
   ``eval_max_heldout_tokens`` tokens of its held-out text, ``eval_max_new_tokens`` tokens an answer; the
   defaults unless given), in a store of its own under ``--out``.
3. Reports per step: wall time, peak RSS of the step's process tree, bytes added to the artifact store, peak
   temporary disk; and for the ONNX export, TTFT, prefill and decode tokens/s at a 512-token prompt against the
   memory-bandwidth bound. Prints a table and writes ``scale.json`` under ``--out``.
Nothing here reaches the network. It needs about 12 GiB of free memory and 40 GB of disk.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench.scale.chain import run_main, write_json
from bench.scale.model import SHARED_PHI3, build_real_shape
from bench.scale.speed import speed_with_bound
from llmflow import PROJECT_ROOT
from llmflow.errors import InputError
from llmflow.evaluation.inputs import DEFAULT_MAX_HELDOUT_TOKENS, DEFAULT_MAX_QUESTIONS
from llmflow.sources.hf_cache import DEFAULT_REPO, seed_cache

GIB = 1 << 30


def onnx_dir_of(figures: dict) -> Path:
    """The export's ``onnx/`` folder in the benchmark's own (local) artifact store."""
    import mlflow

    mlflow.set_tracking_uri(figures["tracking_uri"])
    runs = mlflow.search_runs([figures["experiment_id"]], "tags.`mlflow.project.entryPoint` = 'export_onnx'")
    uri = runs.iloc[0]["artifact_uri"]
    return Path(uri.removeprefix("file://")) / "onnx"


def table(figures: dict) -> str:
    rows = [("step", "wall s", "peak RSS GiB", "store +GB", "peak tmp GB")]
    for step in figures["chain"]["steps"]:
        rows.append(
            (
                step["step"],
                f"{step['wall']:.0f}",
                f"{step['peak_rss'] / GIB:.1f}",
                f"{step['store_added'] / 1e9:.2f}",
                f"{step['peak_tmp'] / 1e9:.2f}",
            )
        )
    chain = figures["chain"]
    rows.append(
        (
            "whole chain",
            f"{chain['wall']:.0f}",
            f"{chain['peak_rss'] / GIB:.1f}",
            f"{chain['store_added'] / 1e9:.2f}",
            f"{chain['peak_tmp'] / 1e9:.2f}",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    added = {step["step"]: step["store_added"] for step in chain["steps"]}
    export, logged = added.get("export_onnx", 0), added.get("log_transformers", 0)
    if export + logged:
        lines.append(
            f"\nartifact store: +{chain['store_added'] / 1e9:.2f} GB, {chain['store_added'] / (export + logged):.2f} x "
            f"what the int4 export ({export / 1e9:.2f} GB) and the transformers model ({logged / 1e9:.2f} GB) hold"
        )
    speed = figures.get("onnx_speed")
    if speed:
        lines.append(
            f"\nONNX int4 at a {speed['prompt_tokens']}-token prompt: TTFT {speed['ttft_s']} s, prefill "
            f"{speed['prefill_tok_s']} tok/s, decode {speed['decode_tok_s']} tok/s ({speed['decoded_tokens']} tokens); "
            f"bound {speed['decode_bound_tok_s']} tok/s = {speed['bandwidth_gb_s']} GB/s / "
            f"{speed['weight_bytes_per_token'] / 1e9:.2f} GB a token ({speed['decode_share_of_bound']:.0%} of it)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench-results" / "scale", help="Results folder.")
    parser.add_argument("--model-dir", type=Path, default=PROJECT_ROOT / "build" / "phi3-real-shape")
    parser.add_argument("--shared", type=Path, default=SHARED_PHI3, help="Phi-3-mini's config and tokenizer.")
    parser.add_argument("--layers", type=int, default=None, help="Fewer layers than the real 32 (a smaller model).")
    parser.add_argument("--eval-max-questions", type=int, default=DEFAULT_MAX_QUESTIONS, help="QA questions scored.")
    parser.add_argument(
        "--eval-max-heldout-tokens", type=int, default=DEFAULT_MAX_HELDOUT_TOKENS, help="Held-out tokens scored."
    )
    parser.add_argument("--eval-max-new-tokens", type=int, default=32, help="Tokens an evaluated answer may have.")
    parser.add_argument(
        "--hub",
        action="store_true",
        help=f"Serve the model as the hub id {DEFAULT_REPO} from a Hugging Face cache under --out (hard links, "
        "offline), as a user's download of the Hub model would, instead of as a local folder.",
    )
    parser.add_argument("--save-pretrained", default="true", help="main's save_pretrained (false: a hub reference).")
    parser.add_argument("--onnx-storage", default="copy", help="main's onnx_storage (reference: no second copy).")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="Prompt length of the ONNX speed figure.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        built = build_real_shape(args.model_dir, args.shared, args.layers)
    except InputError as error:
        raise SystemExit(f"bench-scale: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    extra_env = {}
    model = str(built.path.resolve())
    if args.hub:
        hf_home = args.out / "hf-home"
        seed_cache(hf_home / "hub", built.path, link=True)
        extra_env["HF_HOME"], model = str(hf_home), DEFAULT_REPO
    params = {
        "model": model,
        "save_pretrained": args.save_pretrained,
        "onnx_storage": args.onnx_storage,
        "registered_model_name": "phi3-scale",
        "eval_max_questions": str(args.eval_max_questions),
        "eval_max_heldout_tokens": str(args.eval_max_heldout_tokens),
        "eval_max_new_tokens": str(args.eval_max_new_tokens),
    }
    chain = run_main(params, args.out / "run", extra_env=extra_env)
    figures = {"model": {"parameters": built.parameters, "layers": built.num_layers}, "params": params, "chain": chain}
    figures["onnx_speed"] = speed_with_bound(onnx_dir_of(chain), args.prompt_tokens)
    write_json(args.out / "scale.json", figures)
    print(table(figures))
    print(f"\nfigures: {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()

"""The project's export (streaming int4 quantization) against the stock builder: peak RSS, time and sha256 per file.

``python -m bench.scale.export_check --model DIR [--stock] [--twice] [--settings JSON]`` exports ``DIR`` (int4, cpu,
with ``export_onnx``'s default recipe, or the ``ExportSettings`` fields given as JSON) in a child process, samples its
tree's RSS, with ``--twice`` exports it again and compares every output file's sha256 (byte-reproducible), and with
``--stock`` also runs the builder as shipped (block 32, accuracy level 4, no int8 placements) and compares.
The stock builder needs about 6 bytes a parameter: do not give it Phi-3-mini
at full size on a machine under 32 GB (it peaks at 22.5 GiB there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.scale.monitor import GIB, run_sampled
from llmflow.sources.manifest import sha256_file

EXTRA = ["block_size=32", "accuracy_level=4"]


def _child(mode: str, model: str, out: str, settings: dict) -> None:
    """In the child process: one export, ``stream`` through the project's ``run_builder``, ``stock`` as shipped."""
    from onnxruntime_genai.models import builder

    if mode == "stream":
        from llmflow.export_onnx import ExportSettings, run_builder

        run_builder(Path(model), Path(out), ExportSettings(**{"precision": "int4", **settings}))
        return
    with tempfile.TemporaryDirectory() as cache:
        args = (None, model, out, "int4", "cpu", cache)
        builder.create_model(*args, **builder.parse_extra_options(*args, EXTRA))


def measure(mode: str, model: Path, out: Path, settings: str = "{}") -> dict:
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "bench.scale.export_check", "--child", mode, "--model", str(model), "--out", str(out)]
    argv += ["--settings", settings]
    with (out.parent / f"{out.name}.log").open("w") as log:
        code, seconds, sampler = run_sampled(argv, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{mode} export of {model} failed ({code}); see {out.parent / (out.name + '.log')}")
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    return {
        "mode": mode,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(sampler.peak_rss / GIB, 2),
        "files": files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="HF model folder to export.")
    parser.add_argument(
        "--out", type=Path, default=None, help="Where the exports go, kept (default: a temporary folder, removed)."
    )
    parser.add_argument("--stock", action="store_true", help="Also run the stock builder and compare sha256.")
    parser.add_argument("--twice", action="store_true", help="Export twice and compare sha256 (reproducible).")
    parser.add_argument("--settings", default="{}", help="ExportSettings fields as JSON (default: the defaults).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, str(args.model), str(args.out), json.loads(args.settings))
        return
    root = args.out or Path(tempfile.mkdtemp(prefix="export-check-"))
    root.mkdir(parents=True, exist_ok=True)
    results = check(args, root)  # a failed export keeps the folder: its log is there
    if args.out is None:  # an export of Phi-3-mini is 3.3 GB: a temporary folder does not outlive the check
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=1))


def check(args: argparse.Namespace, root: Path) -> list[dict]:
    results = [measure("stream", args.model, root / "stream", args.settings)]
    if args.twice:
        again = measure("stream", args.model, root / "again", args.settings)
        results += [again, {"reproducible": results[0]["files"] == again["files"]}]
        shutil.rmtree(root / "again", ignore_errors=True)
    if args.stock:
        results.append(measure("stock", args.model, root / "stock"))
        results.append({"identical": results[0]["files"] == results[1]["files"]})
    return results


if __name__ == "__main__":
    main()

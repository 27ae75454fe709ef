"""The int4 path through the pipeline's functions, for a tiny model of any family (test_family_shapes, test_families).

Download, export int4, log the pyfunc and the transformers reference, ask the pyfunc one question, register,
and evaluate against the reference on a two-question QA set and a short held-out text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

QA = [
    {"question": "What is the capital of Spain?", "answer": "Madrid"},
    {"question": "Who wrote Romeo and Juliet?", "answer": "William Shakespeare"},
]
HELDOUT = "The river ran past the old mill and into the valley, where the town kept its market every week.\n" * 3
MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class Int4Path:
    answer: dict[str, Any]  # the pyfunc's chat completion for QA[0]
    evaluation: Any  # the evaluate run
    version: Any  # the registered version
    promoted: bool
    reason: str


def run_int4_path(model_dir: Path, name: str, tmp_path: Path) -> Int4Path:
    """Take the HF folder ``model_dir`` through the int4 path, registering it as ``<name>-onnx``."""
    from llmflow.download import DownloadOptions, download
    from llmflow.evaluate import EvaluateOptions, evaluate
    from llmflow.export_onnx import ExportOptions, export_onnx
    from llmflow.log_pyfunc import LogPyfuncOptions, log_pyfunc
    from llmflow.log_transformers import LogTransformersOptions, log_transformers
    from llmflow.register import RegisterOptions, register

    download_run = download(DownloadOptions(model=str(model_dir)))
    export = export_onnx(ExportOptions(download_run_id=download_run.run_id))
    assert (export.precision, export.smoke_test) == ("int4", "passed")
    onnx = log_pyfunc(LogPyfuncOptions(export_run_id=export.run_id, max_new_tokens=MAX_NEW_TOKENS)).model_uri
    reference = log_transformers(
        LogTransformersOptions(download_run_id=download_run.run_id, max_new_tokens=MAX_NEW_TOKENS)
    )
    [answer] = mlflow.pyfunc.load_model(onnx).predict({"messages": [{"role": "user", "content": QA[0]["question"]}]})
    register(RegisterOptions(model_uri=onnx, registered_model_name=f"{name}-onnx"))

    qa_path, heldout_path = tmp_path / "qa.jsonl", tmp_path / "heldout.txt"
    qa_path.write_text("".join(json.dumps(row) + "\n" for row in QA))
    heldout_path.write_text(HELDOUT)
    result = evaluate(
        EvaluateOptions(
            registered_model_name=f"{name}-onnx",
            qa_path=str(qa_path),
            heldout_path=str(heldout_path),
            eval_max_new_tokens=MAX_NEW_TOKENS,
            reference_model_uri=reference.model_uri,
        )
    )
    run = mlflow.get_run(result.run_id)
    # Random weights: the figures are measured and the gate decides; it need not pass.
    for metric in ("exact_match", "perplexity", "perplexity_ratio", "greedy_agreement", "latency_p50_s"):
        assert np.isfinite(run.data.metrics[metric]), metric
    assert run.data.metrics["n_examples"] == len(QA)
    version = mlflow.MlflowClient().get_model_version(f"{name}-onnx", result.version)
    assert version.tags["validation_status"] == ("passed" if result.promoted else "failed")
    print(f"\n{name}: {version.tags['validation_status']}: {result.reason}")
    return Int4Path(answer, run, version, result.promoted, result.reason)

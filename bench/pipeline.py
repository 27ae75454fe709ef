"""The project's own steps on the benchmark's model, against a temporary SQLite tracking store.

``tracking_store`` points MLflow (and every process started meanwhile) at a new store in a folder;
``run_pipeline`` runs download, export_onnx (int4, cpu, block 32, accuracy level 4), log_pyfunc and
log_transformers there; ``pyfunc_version`` says which ONNX pyfunc code was logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmflow import PROJECT_ROOT

logger = logging.getLogger(__name__)

PYFUNC_FILES = ("llmflow/chat_model/onnx_chat_model.py", "llmflow/log_pyfunc.py")


@contextmanager
def tracking_store(root: Path) -> Iterator[str]:
    """Point MLflow (and every process started here) at a new SQLite store under ``root``; restore afterwards."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield uri
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])


def run_pipeline(model_dir: Path, max_new_tokens: int, dst: Path) -> dict[str, Any]:
    """The project's own steps on ``model_dir``; returns the model URIs, the ONNX folder and the step timings."""
    import mlflow

    from llmflow.download import DownloadOptions, download
    from llmflow.export_onnx import ExportOptions, export_onnx
    from llmflow.log_pyfunc import LogPyfuncOptions, log_pyfunc
    from llmflow.log_transformers import LogTransformersOptions, log_transformers
    from llmflow.tracking.names import ONNX_ARTIFACT_DIR

    timings = {}

    def timed(name: str, step: Any, *args: Any) -> Any:
        started = time.perf_counter()
        logger.info("pipeline: %s ...", name)
        result = step(*args)
        timings[name] = time.perf_counter() - started
        logger.info("pipeline: %s done in %.1f s", name, timings[name])
        return result

    dl = timed("download", download, DownloadOptions(model=str(model_dir)))
    export = timed("export_onnx", export_onnx, ExportOptions(download_run_id=dl.run_id))
    pyfunc = timed(
        "log_pyfunc", log_pyfunc, LogPyfuncOptions(export_run_id=export.run_id, max_new_tokens=max_new_tokens)
    )
    transformers = timed(
        "log_transformers",
        log_transformers,
        LogTransformersOptions(download_run_id=dl.run_id, max_new_tokens=max_new_tokens),
    )
    onnx_dir = mlflow.artifacts.download_artifacts(
        run_id=export.run_id, artifact_path=ONNX_ARTIFACT_DIR, dst_path=str(dst)
    )
    return {
        "onnx_dir": onnx_dir,
        "onnx_size_bytes": export.onnx_size_bytes,
        "pyfunc_uri": pyfunc.model_uri,
        "transformers_uri": transformers.model_uri,
        "seconds": timings,
    }


def pyfunc_version(model_uri: str) -> dict[str, Any]:
    """Which ONNX pyfunc was measured: its input form, its code's sha256, and whether it logged a stream."""
    import mlflow

    from llmflow.tracking.runs import git_commit

    info = mlflow.models.get_model_info(model_uri)
    schema = info.signature.inputs if info.signature else None
    return {
        "input_form": "chat" if schema is not None and "messages" in schema.input_names() else "prompt",
        "streamable": bool(info.flavors.get("python_function", {}).get("streamable", False)),
        "code_sha256": {f: hashlib.sha256((PROJECT_ROOT / f).read_bytes()).hexdigest()[:16] for f in PYFUNC_FILES},
        "git_commit": git_commit(),
        "uncommitted": uncommitted(PYFUNC_FILES),
    }


def uncommitted(files: tuple[str, ...]) -> list[str]:
    """Which of ``files`` differ from the git commit (or are untracked); empty when git cannot tell."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", *files], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.stdout.splitlines()]

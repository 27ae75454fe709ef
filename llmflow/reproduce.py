"""Entry point ``reproduce``: rebuild a registered version from its recorded lineage and compare it, file by file.

Reads the version's lineage tags (written by ``register``): the download run and its parameters, and for
an ONNX version the export run and the log_pyfunc run with theirs. Re-runs that chain with ``mlflow.run``
into a scratch experiment, with reuse turned off, pinning a hub model to the commit sha the download run
resolved (not to a branch that may have moved). Then compares the manifests, file by file (path, size,
sha256): the ONNX export's for an ONNX version, the download's for a transformers version.

Records the comparison in its own run (``reproduce/comparison.json``, tag ``llmflow.reproduce_result``,
metrics ``files_compared`` and ``files_different``) and prints ``identical`` or the files that differ. When an ONNX
model file differs, it also names the tensors that differ (dtype, shape, bytes that differ, largest difference),
and, for an ONNX version, says whether the rebuilt download matched the original one: so a difference can be told
apart as a changed input or a changed build.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from llmflow.chain.graph import leading_to, walk
from llmflow.chain.runner import ChainResult, Runner
from llmflow.download import DownloadOptions
from llmflow.errors import InputError
from llmflow.export.prebuilt import HUB_SCHEME
from llmflow.export_onnx import ExportSettings
from llmflow.log_transformers import TransformersSettings
from llmflow.options import GenerationSettings, StepOptions, names, option
from llmflow.tracking.names import (
    MANIFEST_ARTIFACT,
    ONNX_ARTIFACT_DIR,
    ONNX_MANIFEST_ARTIFACT,
    TAG_DOWNLOAD_RUN,
    TAG_EXPORT_RUN,
    TAG_HF_SHA,
    TAG_LOGGED_BY_STEP,
    TAG_ONNX_SOURCE,
    TAG_REBUILT_PREFIX,
    TAG_REGISTERED_NAME,
    TAG_REGISTERED_VERSION,
    TAG_REPRODUCE_RESULT,
    TAG_SCRATCH_EXPERIMENT,
    TAG_SOURCE,
    TAG_SOURCE_RUN,
    registry_tag,
)
from llmflow.tracking.runs import get_step_run, step_run

logger = logging.getLogger(__name__)

SCRATCH_EXPERIMENT = "llmflow-reproduce"
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
# Which run's manifest a version's identity rests on, by the step that logged it.
MANIFESTS = {"log_pyfunc": ("export_onnx", ONNX_MANIFEST_ARTIFACT), "log_transformers": ("download", MANIFEST_ARTIFACT)}


@dataclass
class ReproduceResult:
    run_id: str
    identical: bool
    compared: int
    differences: list[dict[str, Any]] = field(default_factory=list)
    rebuilt_runs: dict[str, str] = field(default_factory=dict)


def parse_version_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> (name, version, alias)."""
    match = VERSION_URI.match(model_uri.strip())
    if not match:
        raise InputError(
            f"model_uri '{model_uri}' is not accepted; expected a registered version, models:/<name>/<version> "
            "(or models:/<name>@<alias>)"
        )
    return match["name"], match["version"], match["alias"]


def _manifest(run_id: str, artifact: str) -> dict[str, dict[str, Any]]:
    files = mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact}")["files"]
    return {entry["file"]: entry for entry in files}


def compare_manifests(original: dict[str, dict[str, Any]], rebuilt: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every file whose size or sha256 differs, or that only one side has."""
    differences = []
    for name in sorted(set(original) | set(rebuilt)):
        a, b = original.get(name), rebuilt.get(name)
        if a is None or b is None or (a["size"], a["sha256"]) != (b["size"], b["sha256"]):
            differences.append(
                {
                    "file": name,
                    "original": {"size": a["size"], "sha256": a["sha256"]} if a else None,
                    "rebuilt": {"size": b["size"], "sha256": b["sha256"]} if b else None,
                }
            )
    return differences


def tensor_differences(original_dir: Path, rebuilt_dir: Path, model_file: str = "model.onnx") -> list[dict[str, Any]]:
    """Every initializer of two ONNX exports whose dtype, shape or bytes differ, with how much it differs.

    The external data is memory-mapped (``onnx_ir``), one tensor at a time, so two full-size exports fit.
    """
    import numpy as np
    import onnx_ir as ir

    a = ir.load(original_dir / model_file).graph.initializers
    b = ir.load(rebuilt_dir / model_file).graph.initializers
    differences = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            differences.append({"tensor": name, "only_in": "original" if name in a else "rebuilt"})
            continue
        x, y = a[name].const_value, b[name].const_value
        if x is None or y is None or x.dtype != y.dtype or tuple(x.shape) != tuple(y.shape):
            differences.append({"tensor": name, "original": _describe(x), "rebuilt": _describe(y)})
            continue
        xa, ya = x.numpy(), y.numpy()
        if xa.tobytes() == ya.tobytes():
            continue
        entry = {"tensor": name, "dtype": str(x.dtype), "shape": list(x.shape)}
        xb, yb = (np.ascontiguousarray(t).reshape(-1).view(np.uint8) for t in (xa, ya))
        entry["bytes_different"] = int(np.count_nonzero(xb != yb))
        if np.issubdtype(xa.dtype, np.floating) or xa.dtype.name == "bfloat16":
            entry["max_abs_difference"] = float(np.max(np.abs(xa.astype(np.float64) - ya.astype(np.float64))))
        differences.append(entry)
    return differences


def _describe(value: Any) -> str:
    return "no value" if value is None else f"{value.dtype} {list(value.shape)}"


def _onnx_dir(run_id: str, dst: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ONNX_ARTIFACT_DIR, dst_path=str(dst)))


def _params(run: Run, *names: str) -> dict[str, str]:
    recorded = run.data.params
    missing = [n for n in names if n not in recorded]
    if missing:
        raise InputError(f"run {run.info.run_id} has no recorded parameters {missing}; it cannot be re-run")
    return {n: recorded[n] for n in names}


def _check_version_uri(_: str, value: str) -> None:
    parse_version_uri(value)


@dataclass(frozen=True, kw_only=True)
class ReproduceOptions(StepOptions):
    """Rebuild a registered version from its lineage and compare it file by file."""

    model_uri: str = option(
        help="A registered version: models:/<name>/<version> (or models:/<name>@<alias>).", check=_check_version_uri
    )


def reproduce(options: ReproduceOptions) -> ReproduceResult:
    """Re-run the chain behind registered version ``options.model_uri`` with its recorded parameters and compare."""
    model_uri = options.model_uri
    name, version, alias = parse_version_uri(model_uri)
    with step_run("reproduce", options) as run:
        client = MlflowClient()
        try:
            model_version = (
                client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
            )
        except MlflowException:
            raise InputError(
                f"model_uri '{model_uri}' names no registered version in tracking store '{mlflow.get_tracking_uri()}'"
            ) from None
        logged_by = registry_tag(model_version.tags, TAG_LOGGED_BY_STEP)
        download_run_id = registry_tag(model_version.tags, TAG_DOWNLOAD_RUN)
        source_run_id = registry_tag(model_version.tags, TAG_SOURCE_RUN)
        export_run_id = registry_tag(model_version.tags, TAG_EXPORT_RUN)
        needed = [download_run_id, source_run_id, *([export_run_id] if logged_by == "log_pyfunc" else [])]
        if logged_by not in MANIFESTS or not all(needed):
            raise InputError(
                f"version {model_version.version} of '{name}' has no lineage tags from this pipeline's register step"
            )
        download_run = get_step_run(download_run_id, "download")
        download_params = _params(download_run, *names(DownloadOptions))
        if download_run.data.tags.get(TAG_SOURCE) == "hub":
            download_params["revision"] = download_run.data.tags[TAG_HF_SHA]  # the commit, not the branch
        source_run = client.get_run(source_run_id)
        scratch = mlflow.get_experiment_by_name(SCRATCH_EXPERIMENT)
        experiment_id = scratch.experiment_id if scratch else mlflow.create_experiment(SCRATCH_EXPERIMENT)
        chain = ChainResult(run.info.run_id)
        runner = Runner(experiment_id, chain, forced=frozenset(s.entry_point for s in leading_to(logged_by)))
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: name,
                TAG_REGISTERED_VERSION: str(model_version.version),
                TAG_SCRATCH_EXPERIMENT: experiment_id,
            }
        )
        params = {"download": download_params}
        original_runs = {"download": download_run.info.run_id}
        if logged_by == "log_pyfunc":
            export_run = get_step_run(export_run_id, "export_onnx")
            params["export_onnx"] = _params(export_run, *names(ExportSettings))
            pinned = export_run.data.tags.get(TAG_ONNX_SOURCE, "")
            if pinned.startswith(HUB_SCHEME):
                params["export_onnx"]["onnx_source"] = pinned  # the hub folder at its commit, not at its branch
            original_runs["export_onnx"] = export_run.info.run_id
            params["log_pyfunc"] = _params(source_run, *names(GenerationSettings))
        else:
            params["log_transformers"] = _params(source_run, *names(GenerationSettings), *names(TransformersSettings))
        walk(leading_to(logged_by), lambda step: params[step.key], runner.step)
        step, artifact = MANIFESTS[logged_by]
        original = _manifest(original_runs[step], artifact)
        rebuilt = _manifest(chain.step_runs[step], artifact)
        differences = compare_manifests(original, rebuilt)
        identical = not differences
        tensors: list[dict[str, Any]] = []
        inputs_identical = None
        if step == "export_onnx":
            # An ONNX version rests on a download too: was the rebuild fed the same files?
            inputs_identical = not compare_manifests(
                _manifest(original_runs["download"], MANIFEST_ARTIFACT),
                _manifest(chain.step_runs["download"], MANIFEST_ARTIFACT),
            )
            if any(d["file"].startswith("model.onnx") for d in differences):
                with tempfile.TemporaryDirectory(prefix="llmflow-reproduce-") as tmp:
                    tensors = tensor_differences(
                        _onnx_dir(original_runs[step], Path(tmp) / "original"),
                        _onnx_dir(chain.step_runs[step], Path(tmp) / "rebuilt"),
                    )
        compared = len(set(original) | set(rebuilt))
        comparison = {
            "model_uri": model_uri,
            "version": str(model_version.version),
            "manifest": artifact,
            "original_run": original_runs[step],
            "rebuilt_run": chain.step_runs[step],
            "identical": identical,
            "differences": differences,
            "download_identical": inputs_identical,
            "tensor_differences": tensors,
        }
        mlflow.log_dict(comparison, "reproduce/comparison.json")
        mlflow.log_metrics(
            {"files_compared": float(len(set(original) | set(rebuilt))), "files_different": float(len(differences))}
        )
        mlflow.set_tags(
            {
                TAG_REPRODUCE_RESULT: "identical" if identical else "different",
                **{f"{TAG_REBUILT_PREFIX}{k}": v for k, v in chain.step_runs.items()},
            }
        )
        if identical:
            print(f"{model_uri}: identical ({len(original)} files of {artifact} match, run {chain.step_runs[step]})")
        else:
            print(f"{model_uri}: {len(differences)} of {compared} files differ:")
            for diff in differences:
                print("  " + json.dumps(diff))
            if inputs_identical is not None:
                print(f"  the rebuilt download {'matches' if inputs_identical else 'differs from'} the original one")
            for diff in tensors:
                print("  tensor " + json.dumps(diff))
        return ReproduceResult(
            run.info.run_id, identical, len(set(original) | set(rebuilt)), differences, chain.step_runs
        )

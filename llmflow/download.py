"""Step ``download``: pin a Hugging Face model to a commit and record what was fetched.

Reads a hub repo id (and revision) or a local folder holding a saved HF model.
Writes, in its MLflow run:
- tags ``llmflow.source`` (hub or local), ``llmflow.hf_repo_id`` and ``llmflow.hf_commit_sha``
  (the resolved commit, or ``sha256:<content hash>`` for a local folder);
- ``manifest.json``: every file with its size and sha256;
- for a local folder, the files themselves under ``model/``, so that later steps (on any machine)
  get them from the run; a hub model is fetched again by commit sha, from the local HF cache when
  it is there;
- metrics ``download_bytes``, ``download_seconds`` and ``download_files``.

The token comes from ``HF_TOKEN`` and is handed to huggingface_hub only; it is never logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from llmflow.errors import InputError
from llmflow.export.architectures import check_architecture
from llmflow.options import StepOptions, non_empty, option
from llmflow.sources.folder import check_readable
from llmflow.sources.hub import fetch_hub_snapshot, is_local_reference, resolve_hub
from llmflow.sources.manifest import build_manifest, manifest_digest
from llmflow.tracking.names import MANIFEST_ARTIFACT, MODEL_ARTIFACT_DIR, TAG_HF_REPO, TAG_HF_SHA, TAG_SOURCE
from llmflow.tracking.runs import step_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DownloadOptions(StepOptions):
    """Pin a Hugging Face model to a commit and record it in MLflow."""

    model: str = option(
        "microsoft/Phi-3-mini-4k-instruct",
        help="Hub repo id (e.g. microsoft/Phi-3-mini-4k-instruct) or a local save_pretrained folder.",
        check=non_empty,
    )
    revision: str = option(
        "main", help="Branch, tag or commit sha on the Hub; ignored for a local folder.", check=non_empty
    )

    def check_together(self) -> None:
        if is_local_reference(self.model) and not Path(self.model).expanduser().is_dir():
            raise InputError(
                f"local model folder '{self.model}' not found; expected a folder saved with save_pretrained "
                "(config.json, *.safetensors, tokenizer files) or a hub repo id"
            )


@dataclass(frozen=True)
class DownloadResult:
    run_id: str
    source: str
    repo_id: str
    commit_sha: str
    model_dir: Path


def download(options: DownloadOptions) -> DownloadResult:
    """Pin ``options.model`` (hub id at ``revision``, or local folder) and record it in this step's MLflow run."""
    token = os.environ.get("HF_TOKEN") or None
    model, revision = options.model, options.revision
    with step_run("download", options) as run:
        started = time.perf_counter()
        if is_local_reference(model):
            model_dir = Path(model).expanduser().resolve()
            if not (model_dir / "config.json").is_file():
                raise InputError(
                    f"local model folder '{model}' has no config.json; expected a folder saved with save_pretrained"
                )
            check_architecture(json.loads((model_dir / "config.json").read_text()), f"local model folder '{model}'")
            check_readable(model_dir, model)
            source, repo_id = "local", f"local/{model_dir.name}"
            manifest = build_manifest(model_dir)
            commit_sha = "sha256:" + manifest_digest(manifest)
            mlflow.log_artifacts(str(model_dir), MODEL_ARTIFACT_DIR)
        else:
            source, repo_id = "hub", model
            commit_sha, config = resolve_hub(model, revision, token)
            check_architecture(config, f"model '{model}'")
            logger.info("resolved %s@%s to commit %s", model, revision, commit_sha)
            model_dir = fetch_hub_snapshot(model, commit_sha, token)
            manifest = build_manifest(model_dir)
        mlflow.set_tags({TAG_SOURCE: source, TAG_HF_REPO: repo_id, TAG_HF_SHA: commit_sha})
        mlflow.log_dict({"repo_id": repo_id, "commit_sha": commit_sha, "files": manifest}, MANIFEST_ARTIFACT)
        mlflow.log_metrics(
            {
                "download_bytes": sum(f["size"] for f in manifest),
                "download_files": len(manifest),
                "download_seconds": time.perf_counter() - started,
            }
        )
        logger.info("download: %s files, %s bytes from %s", len(manifest), sum(f["size"] for f in manifest), repo_id)
        return DownloadResult(run.info.run_id, source, repo_id, commit_sha, model_dir)

"""Tracking helpers shared by the steps: one run per step, lineage tags, and reading upstream runs.

Steps hand each other only what MLflow stores (run ids, artifact URIs, ``models:/`` URIs). The tag
names below are the contract between them.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError, PipelineError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TAG_STEP = "llmflow.step"
TAG_ERROR = "llmflow.error"
TAG_SOURCE = "llmflow.source"  # "hub" or "local"
TAG_HF_REPO = "llmflow.hf_repo_id"
TAG_HF_SHA = "llmflow.hf_commit_sha"
TAG_MODEL_URI = "llmflow.model_uri"
TAG_PRECISION = "llmflow.precision"
TAG_EXECUTION_PROVIDER = "llmflow.execution_provider"
TAG_DOWNLOAD_RUN = "llmflow.download_run_id"
TAG_EXPORT_RUN = "llmflow.export_run_id"
TAG_GIT_COMMIT = "llmflow.git_commit"
TAG_CODE_DIGEST = "llmflow.code_digest"

# What decides what a step computes; a run made by other code is never reused.
CODE_GLOBS = ("llmflow/**/*.py", "steps/*.py", "MLproject", "conda.yaml", "requirements.txt")


@cache
def code_digest(root: Path = PROJECT_ROOT) -> str:
    """sha256 over the project's code and pinned dependencies, uncommitted edits included; once per process."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in CODE_GLOBS for p in root.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def pinned_requirements(*distributions: str) -> list[str]:
    """``name==version`` for each installed distribution: the logged model gets what was tested."""
    return [f"{name}=={version(name)}" for name in distributions]


def git_commit() -> str:
    """The project's git commit: MLflow's source tag when run by ``mlflow run``, else ``git rev-parse``."""
    active = mlflow.active_run()
    if active is not None:
        commit = active.data.tags.get("mlflow.source.git.commit")
        if commit:
            return commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def step_run(step: str, params: dict[str, Any]) -> Iterator[Run]:
    """Run the body inside this step's MLflow run and record its parameters.

    Under ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``) and MLflow has logged the entry
    point's parameters as given; those are kept, and only the missing ones are added. An
    ``PipelineError`` is recorded as the ``llmflow.error`` tag before the run ends as FAILED.
    """
    with mlflow.start_run() as run:
        existing = mlflow.get_run(run.info.run_id).data.params
        missing = {k: str(v) for k, v in params.items() if k not in existing}
        if missing:
            mlflow.log_params(missing)
        mlflow.set_tags({TAG_STEP: step, TAG_GIT_COMMIT: git_commit(), TAG_CODE_DIGEST: code_digest()})
        try:
            yield run
        except PipelineError as exc:
            mlflow.set_tag(TAG_ERROR, str(exc))
            raise


def get_step_run(run_id: str, step: str) -> Run:
    """Fetch a FINISHED run of ``step``; raise ``InputError`` naming the id when it is not one."""
    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise InputError(
            f"run '{run_id}' not found in tracking store '{mlflow.get_tracking_uri()}'; "
            f"expected the id of a finished '{step}' run"
        ) from None
    actual = run.data.tags.get(TAG_STEP)
    if actual != step:
        raise InputError(f"run '{run_id}' is a '{actual}' run; expected the id of a finished '{step}' run")
    if run.info.status != "FINISHED":
        raise InputError(f"run '{run_id}' has status {run.info.status}; expected the id of a finished '{step}' run")
    return run

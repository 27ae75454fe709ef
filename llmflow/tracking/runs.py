"""Tracking helpers shared by the steps: one run per step, its lineage tags, and reading upstream runs.

Steps hand each other only what MLflow stores (run ids, artifact URIs, ``models:/`` URIs); the names of
what they write are in ``llmflow.tracking.names``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import distributions, version
from pathlib import Path
from typing import Any

import mlflow
import numpy
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError, PipelineError, cancellation_in
from llmflow.options import StepOptions, param_text
from llmflow.tracking.digest import code_digest
from llmflow.tracking.names import (
    ENV_UPSTREAM,
    FREEZE_ARTIFACT,
    TAG_CODE_DIGEST,
    TAG_ERROR,
    TAG_GIT_CLEAN,
    TAG_GIT_COMMIT,
    TAG_SEED,
    TAG_STEP,
    TAG_UPSTREAM,
)

logger = logging.getLogger(__name__)

# Every step seeds NumPy's and (when loaded) torch's generators with this (not Python's: see seed_everything); the
# steps are also deterministic by construction (greedy decoding, a deterministic exporter), so the seed is a safeguard.
SEED = 0


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


def git_tree_clean() -> str:
    """Whether the project's git tree has no uncommitted changes: "true", "false", or "unknown" (no git)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "true" if not out.stdout.strip() else "false"


def frozen_environment() -> str:
    """The installed distributions as ``pip freeze`` lists them (``name==version``, sorted).

    Read from the interpreter's package metadata rather than by running pip: the same list, without
    a second interpreter starting for every step.
    """
    lines = {f"{dist.metadata['Name']}=={dist.version}" for dist in distributions() if dist.metadata["Name"]}
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def seed_everything(seed: int = SEED) -> None:
    """Seed what the models use: NumPy's generator, and torch's when a step has loaded it.

    Not Python's global ``random``: ids are drawn from it, OpenTelemetry's trace ids (MLflow's traces) among them,
    and a constant seed in every step made two evaluations draw the same trace ids and overwrite each other's
    traces. Nothing in the pipeline samples from it; generation seeds are passed explicitly.
    """
    numpy.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


@contextmanager
def step_run(step: str, options: StepOptions | dict[str, Any]) -> Iterator[Run]:
    """Run the body inside this step's MLflow run, record its parameters, and check its options there.

    Under ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``) and MLflow has logged the entry
    point's parameters as given; those are kept, and only the missing ones are added. Options are checked
    inside the run, so a bad value is recorded on the run that refused it: a ``PipelineError`` is
    recorded as the ``llmflow.error`` tag before the run ends as FAILED. A step cancelled by a signal
    (``Cancelled``) records which signal and ends KILLED.
    """
    params = options.params() if isinstance(options, StepOptions) else options
    # Under `mlflow run` the run exists and keeps its name; a step called directly is named after itself.
    with mlflow.start_run(run_name=None if os.environ.get("MLFLOW_RUN_ID") else step) as run:
        existing = mlflow.get_run(run.info.run_id).data.params
        missing = {k: param_text(v) for k, v in params.items() if k not in existing}
        if missing:
            mlflow.log_params(missing)
        mlflow.set_tags(
            {
                TAG_STEP: step,
                TAG_GIT_COMMIT: git_commit(),
                TAG_GIT_CLEAN: git_tree_clean(),
                TAG_CODE_DIGEST: code_digest(step),
                TAG_SEED: str(SEED),
                TAG_UPSTREAM: os.environ.get(ENV_UPSTREAM, ""),
            }
        )
        mlflow.log_text(frozen_environment(), FREEZE_ARTIFACT)
        seed_everything()
        try:
            if isinstance(options, StepOptions):
                options.check()
            yield run
        except BaseException as exc:
            cancelled = cancellation_in(exc)
            if cancelled is not None:
                mlflow.set_tag(TAG_ERROR, str(cancelled))
                mlflow.end_run("KILLED")
            elif isinstance(exc, PipelineError):
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


def artifacts_in_place(run: Run, artifact_path: str) -> Path | None:
    """The folder ``artifact_path`` of ``run`` where it lies, when the artifact store is a folder on this machine.

    ``None`` for a remote store (``mlflow-artifacts:``, ``s3:``, ``dbfs:`` ...) or a path the run does not have:
    then the caller downloads it. Reading in place saves a copy of the weights per step on the default store.
    """
    from urllib.parse import unquote, urlparse

    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        return None
    folder = Path(unquote(parsed.path)) / artifact_path
    return folder if folder.is_dir() else None

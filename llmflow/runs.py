"""Tracking helpers shared by the steps: one run per step, lineage tags, and reading upstream runs.

Steps hand each other only what MLflow stores (run ids, artifact URIs, ``models:/`` URIs). The tag
names below are the contract between them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import distributions, version
from pathlib import Path
from typing import Any

import mlflow
import numpy
import yaml
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
TAG_GIT_CLEAN = "llmflow.git_tree_clean"  # "true", "false" or "unknown"
TAG_SEED = "llmflow.seed"
# main hands a step the ids of its upstream runs in this variable; the step records them as TAG_UPSTREAM.
ENV_UPSTREAM = "LLMFLOW_UPSTREAM_RUNS"
TAG_UPSTREAM = "llmflow.upstream_runs"
FREEZE_ARTIFACT = "environment/pip-freeze.txt"
# Every step seeds Python's, NumPy's and (when loaded) torch's generators with this; the steps are also
# deterministic by construction (greedy decoding, a deterministic exporter), so the seed is a safeguard.
SEED = 0

# Files every step depends on: the environment it runs in.
ENVIRONMENT_FILES = ("conda.yaml", "requirements.txt")
# The top-level files and folders a code digest reads from: a copy of the project needs all of them.
CODE_ROOTS = ("llmflow", "steps", "MLproject", *ENVIRONMENT_FILES)
_SIBLING_FILE = re.compile(r"^[a-z_][a-z0-9_]*\.py$")


def _module_path(root: Path, module: str) -> Path | None:
    """``llmflow.x`` -> ``llmflow/x.py`` (or a package's ``__init__.py``) when it is a file of the project."""
    if module.split(".")[0] not in ("llmflow", "steps"):
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _project_dependencies(root: Path, path: Path) -> set[Path]:
    """Project files that ``path`` imports (at any depth in the module, lazy imports included), and the
    sibling ``.py`` files it names as strings (models-from-code files that it logs, not imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[Path] = set()
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _SIBLING_FILE.match(node.value):
            sibling = path.with_name(node.value)
            if sibling.is_file():
                found.add(sibling)
        found.update(p for p in (_module_path(root, m) for m in modules) if p is not None)
    return found


def step_sources(entry_point: str, root: Path = PROJECT_ROOT) -> list[Path]:
    """Every project file the step's script reaches through imports, the script included, sorted."""
    start = root / "steps" / f"{entry_point}.py"
    seen, todo = {start}, [start]
    while todo:
        for dependency in _project_dependencies(root, todo.pop()):
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return sorted(seen)


@cache
def code_digest(entry_point: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 over what decides what a step computes, uncommitted edits included; once per process.

    That is the step's own code (its script and the project modules it imports, followed through the
    imports), its entry in ``MLproject`` and the pinned environment. An edit to another step's code
    leaves this digest as it was, so ``main`` re-runs only the step that changed and what follows it.
    """
    digest = hashlib.sha256()
    entry = yaml.safe_load((root / "MLproject").read_text(encoding="utf-8"))["entry_points"][entry_point]
    digest.update(json.dumps(entry, sort_keys=True).encode())
    files = step_sources(entry_point, root) + [root / name for name in ENVIRONMENT_FILES]
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
    """Seed Python's and NumPy's generators, and torch's when a step has loaded it."""
    random.seed(seed)
    numpy.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


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

"""Patches of MLflow, written for MLflow 3.17.2: its transformers flavour (used by ``llmflow.log_transformers``) and
its artifact progress bar (used by every step, ``llmflow.cli``).

- ``named_checkpoint``: MLflow logs a local checkpoint folder under the folder's name, here a temporary path, and
  chat responses give that name as their ``model``; within the block it is the HF repo id instead (its flavour config's
  ``source_model_name`` and the dummy model it names the pipeline after). Canary: ``tests/test_log_transformers.py``
  checks the logged name.
- ``pinned_revision``: for a model logged as a reference to its hub repo, MLflow records the repo's latest commit on
  the Hub at logging time (``get_latest_commit_for_repo``), which need not be the commit that was downloaded and
  cannot be asked offline; within the block it records the given commit. Canary: ``tests/test_log_transformers.py``
  logs a reference offline.
- ``artifact_bars_honour_tqdm``: MLflow's artifact progress bar (``ArtifactProgressBar``) calls ``refresh()`` after
  every file, which draws the bar whatever tqdm's ``delay`` and ``mininterval`` say: every download, even of one small
  file in a few milliseconds, leaves a "Downloading artifacts 1/1" bar (29 of them in a cold tiny chain), and a log
  gets a line per file. Within the block it only updates, and tqdm draws the bar when its settings say
  (``llmflow/__init__.py``: after 2 s; in a log at most every 10 s). Canary: ``tests/test_console.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmflow.patches import check_version, replaced

WRITTEN_FOR = "3.17.2"
check_version("mlflow", WRITTEN_FOR)


@contextmanager
def named_checkpoint(repo: str) -> Iterator[None]:
    """Within this block MLflow names a logged checkpoint folder ``repo``."""
    import mlflow.transformers as flavor
    from mlflow.transformers.flavor_config import FlavorKey

    stock_config, stock_model = flavor.build_flavor_config_from_local_checkpoint, flavor._DummyModel

    def named_config(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**stock_config(*args, **kwargs), FlavorKey.MODEL_NAME: repo}

    with (
        replaced("build_flavor_config_from_local_checkpoint", [(flavor, named_config)]),
        replaced("_DummyModel", [(flavor, lambda name_or_path: stock_model(name_or_path=repo))]),
    ):
        yield


@contextmanager
def pinned_revision(commit_sha: str) -> Iterator[None]:
    """Within this block MLflow records ``commit_sha`` as a hub reference's revision, without asking the Hub."""
    from mlflow.transformers import flavor_config

    with replaced("get_latest_commit_for_repo", [(flavor_config, lambda repo: commit_sha)]):
        yield


@contextmanager
def artifact_bars_honour_tqdm() -> Iterator[None]:
    """Within this block MLflow's artifact progress bars are drawn when tqdm's own settings say, not on every file."""
    from mlflow.utils.file_utils import ArtifactProgressBar

    def update(self: ArtifactProgressBar) -> None:
        if self.pbar:
            step = min(self.total - self.progress, self.step)
            self.pbar.update(step)
            self.progress += step

    with replaced("update", [(ArtifactProgressBar, update)]):
        yield

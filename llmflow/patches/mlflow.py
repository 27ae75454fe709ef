"""Patches of MLflow's transformers flavour, written for MLflow 3.17.2 (used by ``llmflow.log_transformers``).

- ``named_checkpoint``: MLflow logs a local checkpoint folder under the folder's name, here a temporary path, and
  chat responses give that name as their ``model``; within the block it is the HF repo id instead (its flavour config's
  ``source_model_name`` and the dummy model it names the pipeline after). Canary: ``tests/test_log_transformers.py``
  checks the logged name.
- ``pinned_revision``: for a model logged as a reference to its hub repo, MLflow records the repo's latest commit on
  the Hub at logging time (``get_latest_commit_for_repo``), which need not be the commit that was downloaded and
  cannot be asked offline; within the block it records the given commit. Canary: ``tests/test_log_transformers.py``
  logs a reference offline.
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

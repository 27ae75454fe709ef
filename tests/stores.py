"""A tracking store of its own for a module whose models are logged once (module-scoped fixtures)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest


@contextmanager
def own_store(root: Path, empty_store: Path, experiment: str) -> Iterator[Path]:
    """A copy of the empty store under ``root``, with ``experiment`` in it, as the tracking URI and experiment for
    the block (a module's models, logged once); ``root`` is yielded."""
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    mp.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    try:
        yield root
    finally:
        while mlflow.active_run():
            mlflow.end_run()
        mp.undo()
        mlflow.set_tracking_uri(None)

"""Shared fixtures. Nothing here touches the network.

``HF_HUB_OFFLINE`` is set before anything imports huggingface_hub, and every test points MLflow at a
SQLite store in a temporary folder. The tiny Phi-3 is built once per session (per xdist worker).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.pop("HF_TOKEN", None)

import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import pytest  # noqa: E402

from llmflow.demo.tiny import build_tiny_phi3  # noqa: E402
from llmflow.download import DownloadOptions
from llmflow.export_onnx import ExportOptions
from llmflow.log_pyfunc import LogPyfuncOptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# MLflow writes some of these itself (``mlflow.set_experiment`` sets MLFLOW_EXPERIMENT_ID), so a test can leave
# one behind that ``monkeypatch`` never saw; a later test's subprocess would then run against an experiment its
# store does not have. Each test gets them back as they were before it.
MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


@pytest.fixture(autouse=True)
def _mlflow_env_restored():
    before = {key: os.environ.get(key) for key in MLFLOW_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Phi-3 (trained on data/qa.jsonl), built once for the whole session."""
    return build_tiny_phi3(tmp_path_factory.mktemp("tiny") / "tiny-phi3")


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite store with MLflow's schema, made once: creating the schema takes seconds, a copy does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_store: Path) -> str:
    """A fresh SQLite tracking store and artifact root for one test."""
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("test", artifact_location=(tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def onnx_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Phi-3 exported to ONNX int4 for CPU by the onnxruntime-genai builder, once per session."""
    from llmflow.export_onnx import ExportSettings, run_builder

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    run_builder(tiny_model_dir, out, ExportSettings(precision="int4", execution_provider="cpu"))
    return out


@contextmanager
def _store_of_its_own(tmp_path_factory: pytest.TempPathFactory, empty_store: Path, name: str) -> Iterator[str]:
    """A copy of the empty store in a folder of its own, as MLflow's tracking URI and experiment for the block."""
    root = tmp_path_factory.mktemp(name)
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("served", artifact_location=(root / "artifacts").as_uri())
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    try:
        yield uri
    finally:
        mp.undo()
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def logged_onnx_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, _empty_store: Path):
    """(tracking URI, models:/ URI) of the tiny model exported and logged by the project's own steps.

    It lives in a store of its own, for tests that serve it from another process.
    """
    from llmflow.download import download
    from llmflow.export_onnx import export_onnx
    from llmflow.log_pyfunc import log_pyfunc

    with _store_of_its_own(tmp_path_factory, _empty_store, "served") as uri:
        download_run = download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
        export_run = export_onnx(ExportOptions(download_run_id=download_run.run_id))
        model_uri = log_pyfunc(LogPyfuncOptions(export_run_id=export_run.run_id, max_new_tokens=64)).model_uri
    return uri, model_uri


@pytest.fixture(scope="session")
def logged_transformers_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, _empty_store: Path):
    """(tracking URI, models:/ URI) of the tiny model logged by the project's log_transformers step (its weights
    stored), in a store of its own, for tests that serve it from another process."""
    from llmflow.download import download
    from llmflow.log_transformers import LogTransformersOptions, log_transformers

    with _store_of_its_own(tmp_path_factory, _empty_store, "served-transformers") as uri:
        download_run = download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
        options = LogTransformersOptions(download_run_id=download_run.run_id, max_new_tokens=16)
        model_uri = log_transformers(options).model_uri
    return uri, model_uri


TIERS = ("integration", "e2e")
# The fixtures that build the tiny Phi-3 and run the project's steps on it (training, export, logging): a test
# that uses one of them runs real models through the pipeline's code, so it is an integration test.
MODEL_FIXTURES = frozenset({"tiny_model_dir", "onnx_dir", "logged_onnx_model", "logged_transformers_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tiers: a test that uses a model fixture is ``integration``; one that is neither ``integration`` nor
    ``e2e`` is a ``unit`` test (``make test-fast`` runs those)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.integration)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def client(store: tuple[Path, str]) -> Iterator[mlflow.MlflowClient]:
    """A client of the module's ``store`` (a folder holding ``mlflow.db``, and its experiment), which is also the
    tracking URI while the test runs. A module that defines no ``store`` defines its own ``client``, or uses none."""
    uri = f"sqlite:///{store[0] / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(None)

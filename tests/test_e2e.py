"""End to end, as a user runs it: ``mlflow run . -e main`` on the tiny Phi-3 against a SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from llmflow.runs import PROJECT_ROOT, TAG_STEP

pytestmark = pytest.mark.e2e
STEPS = {"download", "export_onnx", "log_transformers", "log_pyfunc", "register", "evaluate"}


def _mlflow_run(store: Path, experiment_id: str, *params: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        # `--env-manager local` runs `python` from PATH: the one running these tests.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local"]
    command += ["--experiment-id", experiment_id]
    for param in params:
        command += ["-P", param]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("e2e")
    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    experiment_id = client.create_experiment("e2e", artifact_location=(path / "artifacts").as_uri())
    return path, experiment_id


@pytest.fixture(scope="module")
def first_run(store: tuple[Path, str], tiny_model_dir: Path) -> subprocess.CompletedProcess[str]:
    path, experiment_id = store
    proc = _mlflow_run(path, experiment_id, f"model={tiny_model_dir}", "registered_model_name=e2e")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture
def client(store: tuple[Path, str]) -> MlflowClient:
    uri = f"sqlite:///{store[0] / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(None)


def _runs(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])


def test_main_runs_every_step_nested_and_finished(first_run, store, client):
    runs = _runs(client, store[1])
    mains = [r for r in runs if r.data.tags.get(TAG_STEP) == "main"]
    assert len(mains) == 1 and mains[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == mains[0].info.run_id]
    assert {r.data.tags[TAG_STEP] for r in children} == STEPS
    assert all(r.info.status == "FINISHED" for r in children)
    assert "models:/e2e-onnx@champion" in first_run.stdout
    assert "A: 'Madrid'" in first_run.stdout


def test_artifacts_manifest_and_onnx_folder(first_run, store, client):
    runs = {r.data.tags.get(TAG_STEP): r for r in _runs(client, store[1])}
    download_artifacts = {a.path for a in client.list_artifacts(runs["download"].info.run_id)}
    assert {"manifest.json", "model"} <= download_artifacts
    onnx = {a.path for a in client.list_artifacts(runs["export_onnx"].info.run_id, "onnx")}
    assert {"onnx/genai_config.json", "onnx/model.onnx", "onnx/model.onnx.data", "onnx/tokenizer.json"} <= onnx
    assert runs["export_onnx"].data.metrics["onnx_size_bytes"] > 0


def test_both_logged_models_load_and_the_champion_answers(first_run, store, client):
    for flavour in ("onnx", "transformers"):
        champion = client.get_model_version_by_alias(f"e2e-{flavour}", "champion")
        assert champion.tags["validation_status"] == "passed"
        assert champion.tags["llmflow.hf_repo_id"] == "local/tiny-phi3"
        assert champion.tags["llmflow.download_run_id"]
    onnx = mlflow.pyfunc.load_model("models:/e2e-onnx@champion")
    prompt = "<|user|>\nWhat is the capital of Spain?<|end|>\n<|assistant|>\n"
    assert onnx.predict(pd.DataFrame({"prompt": [prompt]}))[0].strip() == "Madrid"
    chat = mlflow.pyfunc.load_model("models:/e2e-transformers@champion")
    answer = chat.predict({"messages": [{"role": "user", "content": "What is the capital of Spain?"}]})
    assert answer[0]["choices"][0]["message"]["content"].strip() == "Madrid"


def test_second_run_reuses_steps_and_creates_no_version(first_run, store, client, tiny_model_dir: Path):
    path, experiment_id = store
    proc = _mlflow_run(path, experiment_id, f"model={tiny_model_dir}", "registered_model_name=e2e")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reused finished steps: export_onnx, log_pyfunc, log_transformers" in proc.stdout
    for flavour in ("onnx", "transformers"):
        assert len(client.search_model_versions(f"name='e2e-{flavour}'")) == 1


def test_bad_value_fails_in_main_before_any_step(store, client, tiny_model_dir: Path):
    path, experiment_id = store
    before = len(_runs(client, experiment_id))
    proc = _mlflow_run(path, experiment_id, f"model={tiny_model_dir}", "precision=fp16", "registered_model_name=bad")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fp16" in errors[0] and "cpu" in errors[0]
    assert "Traceback (most recent call last)" not in proc.stderr.split("error:")[0][-2000:]
    runs = _runs(client, experiment_id)
    assert len(runs) == before + 1  # only the main run, FAILED
    assert runs[-1].info.status == "FAILED"
    assert client.search_registered_models("name='bad-onnx'") == []

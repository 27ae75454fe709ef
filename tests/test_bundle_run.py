"""The bundle's pipeline job, run task by task on this machine on the tiny model.

``deploy/databricks/local_job.py`` stands in for the Jobs service: it runs each task as its own process
(the step's script, exec'd as Databricks runs a Python script task), in dependency order, and fills each
``{{tasks.<task>.values.<name>}}`` from the values the upstream step published. This checks the job's
wiring (which step gets which run id or model URI), not Databricks: no cluster, library install, secret
or Unity Catalog is involved, and MLflow uses a local SQLite store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from llmflow import PROJECT_ROOT
from llmflow.tracking.names import CHAMPION, TAG_STEP

pytestmark = pytest.mark.integration

LOCAL_JOB = PROJECT_ROOT / "deploy" / "databricks" / "local_job.py"


def test_pipeline_job_runs_every_step_with_the_values_of_its_upstream_tasks(
    tracking_uri: str, tiny_model_dir: Path, tmp_path: Path
):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(LOCAL_JOB), "llmflow_pipeline", "--values-dir", str(tmp_path / "values")]
        + ["--param", f"model={tiny_model_dir}", "--param", "registered_model_name=tiny_phi3"]
        + ["--param", "max_new_tokens=32"],
        capture_output=True,
        text=True,
    )
    print(f"bundle task graph on the tiny model: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-4000:]
    values = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert set(values) == {
        "download",
        "export_onnx",
        "log_pyfunc",
        "log_transformers",
        "register_onnx",
        "register_transformers",
        "evaluate_onnx",
        "evaluate_transformers",
    }
    client = MlflowClient()
    runs = {key: client.get_run(task["run_id"]) for key, task in values.items()}
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert {key: run.data.tags[TAG_STEP] for key, run in runs.items()} == {
        key: key.split("_")[0] if key.startswith(("register", "evaluate")) else key for key in values
    }
    # Each step received exactly the run id or model URI its upstream task published.
    download_run = values["download"]["run_id"]
    assert runs["export_onnx"].data.params["download_run_id"] == download_run
    assert runs["log_transformers"].data.params["download_run_id"] == download_run
    assert runs["log_pyfunc"].data.params["export_run_id"] == values["export_onnx"]["run_id"]
    assert runs["register_onnx"].data.params["model_uri"] == values["log_pyfunc"]["model_uri"]
    assert runs["register_transformers"].data.params["model_uri"] == values["log_transformers"]["model_uri"]
    assert runs["evaluate_onnx"].data.params["reference_model_uri"] == values["log_transformers"]["model_uri"]
    assert runs["log_pyfunc"].data.params["max_new_tokens"] == "32"
    for flavour in ("onnx", "transformers"):
        name = values[f"register_{flavour}"]["name"]
        assert name == f"tiny_phi3_{flavour}"
        assert runs[f"evaluate_{flavour}"].data.params["registered_model_name"] == name
        version = values[f"register_{flavour}"]["version"]
        # Each evaluate task judges the version its register task made, and takes `challenger` off it.
        assert runs[f"evaluate_{flavour}"].data.params["model_version"] == version
        assert values[f"evaluate_{flavour}"]["promoted"] is True
        assert {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()} == {CHAMPION: version}
    assert mlflow.get_tracking_uri() == tracking_uri


def test_a_failed_task_stops_the_job_and_names_it(tracking_uri: str, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, str(LOCAL_JOB), "llmflow_pipeline", "--values-dir", str(tmp_path / "values")]
        + ["--param", f"model={tmp_path / 'no-such-model'}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "error: local_job: task download failed with exit status 2" in done.stderr
    assert "[export_onnx]" not in done.stdout

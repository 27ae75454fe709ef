"""``mlflow run -b databricks`` the supported way: MLflow's Databricks Spark job format (deploy/databricks/MLproject).

MLflow's own submission code runs against a real ``mlflow server`` on loopback; its REST calls to the
workspace (DBFS uploads, ``jobs/runs/submit``) are answered by a fake and kept, and the test checks what
MLflow would have sent. Then the job file it uploaded is run here the way a cluster would run it: the
uploaded project unpacked, the file's code exec'd with no ``__file__``, from the folder it changes into.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
import yaml
from databricks.sdk.service.compute import ClusterSpec
from mlflow.projects import databricks as mlflow_databricks
from mlflow.projects import utils as project_utils
from mlflow.projects._project_spec import load_project
from mlflow.utils.rest_utils import MlflowHostCreds
from servers import free_port, running

from llmflow import PROJECT_ROOT
from llmflow.tracking.names import TAG_STEP

pytestmark = pytest.mark.integration

DATABRICKS = PROJECT_ROOT / "deploy" / "databricks"
CLUSTER_SPEC = json.loads((DATABRICKS / "cluster-spec.json").read_text())
REQUIREMENTS = [
    line.strip()
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
# What MLflow puts into the backend config of every run (mlflow/projects/__init__.py); with the Spark job
# format it sends the whole config on as `new_cluster`, these keys included.
# The run settings MLflow itself adds to the backend config (its own names, read from MLflow so a rename shows here).
MLFLOW_BACKEND_KEYS = {
    project_utils.PROJECT_ENV_MANAGER,
    project_utils.PROJECT_SYNCHRONOUS,
    project_utils.PROJECT_DOCKER_ARGS,
    project_utils.PROJECT_STORAGE_DIR,
    project_utils.PROJECT_BUILD_IMAGE,
    project_utils.PROJECT_DOCKER_AUTH,
    project_utils.MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
}


class FakeDatabricksWorkspace:
    """Answers the requests ``mlflow.projects.databricks.DatabricksJobRunner`` makes, and keeps them."""

    def __init__(self) -> None:
        self.uploads: dict[str, list[str]] = {}
        self.submitted: list[dict[str, Any]] = []

    def request(self, endpoint: str, method: str, **kwargs: Any) -> SimpleNamespace:
        if endpoint.startswith("/dbfs/"):
            with tarfile.open(fileobj=io.BytesIO(kwargs["data"].read()), mode="r:gz") as tar:
                self.uploads[endpoint] = tar.getnames()
            return SimpleNamespace(text="{}")
        if endpoint == "/api/2.0/jobs/runs/submit":
            self.submitted.append(kwargs["json"])
            return SimpleNamespace(text=json.dumps({"run_id": 4242}))
        if endpoint == "/api/2.0/jobs/runs/get":
            page = "https://example.cloud.databricks.com/#job/7/run/4242"
            return SimpleNamespace(text=json.dumps({"run_page_url": page, "job_id": 7, "state": {}}))
        raise AssertionError(f"unexpected Databricks request {method} {endpoint}")


@pytest.fixture
def tracking_server(tmp_path: Path, _empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real ``mlflow server`` on loopback: the Databricks backend refuses a local tracking store."""
    shutil.copyfile(_empty_store, tmp_path / "server.db")
    # No server jobs here: the job runner would start seven more processes.
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", (tmp_path / "server-artifacts").as_uri()]
    with running(command, port, f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        yield url
        mlflow.set_tracking_uri(None)


def _stage(out: Path) -> Path:
    subprocess.run([sys.executable, str(DATABRICKS / "stage.py"), str(out)], check=True, capture_output=True)
    return out


class SparkJobWorkspace(FakeDatabricksWorkspace):
    """Also keeps the job file MLflow uploads next to the project tarball, and the tarball itself."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}

    def request(self, endpoint: str, method: str, **kwargs: Any) -> SimpleNamespace:
        if endpoint.startswith("/dbfs/"):
            self.files[endpoint] = kwargs["data"].read()
            if endpoint.endswith(".py"):
                return SimpleNamespace(text="{}")
            kwargs = {**kwargs, "data": io.BytesIO(self.files[endpoint])}
        return super().request(endpoint, method, **kwargs)


def test_spark_job_project_has_the_root_steps_with_the_same_parameters_and_commands():
    project = load_project(str(DATABRICKS))
    root = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]
    spark = yaml.safe_load((DATABRICKS / "MLproject").read_text())
    assert set(spark["entry_points"]) == set(root) - {"main", "reproduce"}
    for name, entry in spark["entry_points"].items():
        assert entry == root[name], f"{name} differs from the root MLproject's"
        assert project.get_entry_point(name).command.startswith(f"python steps/{name}.py ")
    # All of requirements.txt: its MLflow replaces the runtime's own (3.0.1 on 17.3 LTS ML), which no test ran on.
    assert project.databricks_spark_job_spec.python_libraries == REQUIREMENTS
    assert ClusterSpec.from_dict(CLUSTER_SPEC).as_dict() == CLUSTER_SPEC
    assert re.fullmatch(r"1[7-9]\.\d\.x-cpu-ml-scala2\.13", CLUSTER_SPEC["spark_version"])
    assert CLUSTER_SPEC["spark_env_vars"]["HF_TOKEN"] == "{{secrets/llmflow/hf_token}}"


def test_mlflow_submits_a_spark_python_task_that_runs_the_step_from_the_uploaded_project(
    tracking_server: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    workspace = SparkJobWorkspace()
    monkeypatch.setattr(mlflow_databricks.DatabricksJobRunner, "_databricks_api_request", workspace.request)
    monkeypatch.setattr(mlflow_databricks.DatabricksJobRunner, "_dbfs_path_exists", lambda runner, path: False)
    monkeypatch.setattr(
        mlflow_databricks.databricks_utils,
        "get_databricks_host_creds",
        lambda profile=None: MlflowHostCreds("https://example.cloud.databricks.com"),
    )
    staged = _stage(tmp_path / "staged")
    experiment_id = mlflow.create_experiment("spark-job")
    parameters = {"model": str(tiny_model_dir), "revision": "main"}

    submitted = mlflow.projects.run(
        str(staged),
        entry_point="download",
        parameters=parameters,
        experiment_id=experiment_id,
        backend="databricks",
        backend_config=str(DATABRICKS / "cluster-spec.json"),
        synchronous=False,
    )

    (request,) = workspace.submitted
    task = request["spark_python_task"]
    assert task["parameters"] == ["--model", str(tiny_model_dir), "--revision", "main"]
    code_path = rf"dbfs:/mlflow-experiments/{experiment_id}/projects-code/[0-9a-f]{{32}}\.py"
    assert re.fullmatch(code_path, task["python_file"])
    assert request["libraries"] == [{"pypi": {"package": r}} for r in REQUIREMENTS]
    assert "shell_command_task" not in request
    # Found here: MLflow sends the whole backend config as new_cluster, its own run settings included,
    # and the Jobs API may refuse or drop those keys. The cluster spec itself arrives unchanged.
    sent = request["new_cluster"]
    assert {key: value for key, value in sent.items() if key in CLUSTER_SPEC} == CLUSTER_SPEC
    assert set(sent) - set(CLUSTER_SPEC) <= MLFLOW_BACKEND_KEYS

    # The uploaded project holds the code the step imports; the job file is the step script behind a
    # prefix that sets MLFLOW_RUN_ID and friends, unpacks the project and changes into it.
    (tarball,) = [name for name in workspace.files if name.endswith(".tar.gz")]
    (job_file,) = [name for name in workspace.files if name.endswith(".py")]
    with tarfile.open(fileobj=io.BytesIO(workspace.files[tarball]), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "cluster", filter="data")
    for needed in ("MLproject", "steps/download.py", "llmflow/download.py", "llmflow/cli.py", "data/qa.jsonl"):
        assert f"mlflow-project/{needed}" in names
    code = workspace.files[job_file].decode()
    assert code.rstrip().endswith((PROJECT_ROOT / "steps" / "download.py").read_text().rstrip())
    assert f'"MLFLOW_RUN_ID": "{submitted.run_id}"' in code

    # Run it as the cluster would, with the unpacking and the tracking URI pointed at this machine.
    project_dir = re.search(r"os\.chdir\('([^']+)'\)", code).group(1)
    runnable = code.replace(f"os.chdir('{project_dir}')", f"os.chdir({str(tmp_path / 'cluster' / 'mlflow-project')!r})")
    runnable = runnable.replace('"MLFLOW_TRACKING_URI": "databricks"', f'"MLFLOW_TRACKING_URI": "{tracking_server}"')
    runnable = re.sub(r"subprocess\.check_call\(extracting_tar_command, shell=True\)", "pass", runnable)
    elsewhere = tmp_path / "dbfs-copy" / Path(job_file).name
    elsewhere.parent.mkdir()
    elsewhere.write_text(runnable)
    launcher = (
        "import sys; p = sys.argv[1]; sys.argv = sys.argv[1:]; "
        "exec(compile(open(p).read(), p, 'exec'), {'__name__': '__main__'})"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher, str(elsewhere), *task["parameters"]],
        cwd=elsewhere.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = mlflow.get_run(submitted.run_id)
    assert run.data.tags[TAG_STEP] == "download"
    assert run.data.params["model"] == str(tiny_model_dir)

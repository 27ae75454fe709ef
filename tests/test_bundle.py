"""The Databricks Asset Bundle (``databricks.yml``), checked offline with the Databricks SDK's own classes.

Nothing here reaches a workspace. Each job is read as the Databricks CLI reads the bundle (includes merged,
variables filled) by ``deploy/databricks/local_job.py`` and built with ``JobSettings.from_dict``, which drops
unknown keys silently, so only equality of ``as_dict()`` with what was written catches a misspelt field.
The task graph itself runs in tests/test_bundle_run.py. The serving bundle (``deploy/databricks/serving/``) is read
the same way and its endpoint checked with the SDK's typed serving classes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml
from databricks.sdk.service.jobs import JobSettings
from databricks.sdk.service.serving import EndpointCoreConfigInput, EndpointTag, ServingEndpointsAPI

from llmflow import PROJECT_ROOT
from llmflow.chain.graph import GRAPH
from llmflow.tracking import task_values

spec = importlib.util.spec_from_file_location("local_job", PROJECT_ROOT / "deploy" / "databricks" / "local_job.py")
local_job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(local_job)

BUNDLE = local_job.load_bundle()
JOBS = BUNDLE["resources"]["jobs"]
PIPELINE = JOBS["llmflow_pipeline"]
SERVERLESS = JOBS["llmflow_pipeline_serverless"]
PIPELINES = {"llmflow_pipeline": PIPELINE, "llmflow_pipeline_serverless": SERVERLESS}
REQUIREMENTS = [
    line.strip()
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
SERVING_ROOT = PROJECT_ROOT / "deploy" / "databricks" / "serving"
SERVING_SPEC = yaml.safe_load((SERVING_ROOT / "databricks.yml").read_text())
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TASK_VALUE = re.compile(r"\{\{tasks\.([\w-]+)\.values\.([\w-]+)\}\}")
# The chain's graph, as Databricks task keys (`register:onnx` is task `register_onnx`).
STEP_TASKS = {step.key.replace(":", "_"): step.entry_point for step in GRAPH}
GRAPH_DEPENDS_ON = {step.key.replace(":", "_"): {u.replace(":", "_") for u in step.upstream} for step in GRAPH}


def _step(task: dict[str, Any]) -> str:
    return Path(task["spark_python_task"]["python_file"]).stem


def _installed_pins(job: dict[str, Any], task: dict[str, Any]) -> list[str]:
    """What a task installs over its compute's Python: its libraries on a job cluster, its environment on serverless."""
    if "libraries" in task:
        return [library["pypi"]["package"] for library in task["libraries"]]
    if "environment_key" not in task:
        return []
    (environment,) = [env for env in job["environments"] if env["environment_key"] == task["environment_key"]]
    return [dependency for dependency in environment["spec"]["dependencies"] if not dependency.startswith("-")]


def _published_fields(step: str) -> set[str]:
    """The names a step publishes as task values: the scalar fields of the dataclass its function returns."""
    module = __import__(f"llmflow.{step}", fromlist=[step])
    result = get_type_hints(getattr(module, step))["return"]
    return {name for name, hint in get_type_hints(result).items() if hint in task_values.SCALARS}


@pytest.mark.parametrize("key", sorted(JOBS))
def test_every_job_is_exactly_what_the_databricks_sdk_reads(key: str):
    job = JOBS[key]
    assert JobSettings.from_dict(job).as_dict() == job
    # What the CLI sends must not hold an unresolved bundle reference.
    assert "${" not in json.dumps(job)


@pytest.mark.parametrize("key", sorted(PIPELINES))
def test_pipeline_tasks_are_the_chains_graph_in_dependency_order(key: str):
    job = PIPELINES[key]
    assert {task["task_key"]: _step(task) for task in job["tasks"]} == STEP_TASKS
    order = [task["task_key"] for task in local_job.task_order(job)]
    # Each task waits for exactly the steps the chain's graph hands it values from (llmflow.chain.graph).
    assert {t["task_key"]: {d["task_key"] for d in t.get("depends_on", [])} for t in job["tasks"]} == GRAPH_DEPENDS_ON
    for after, befores in GRAPH_DEPENDS_ON.items():
        for before in befores:
            assert before in local_job.ancestors(job, after), f"{after} must run after {before}"
            assert order.index(before) < order.index(after)
    # ... and is handed what the graph wires to it: `--download-run-id {{tasks.download.values.run_id}}`.
    for step in GRAPH:
        argv = next(t for t in job["tasks"] if t["task_key"] == step.key.replace(":", "_"))["spark_python_task"]
        given = dict(zip(argv["parameters"][::2], argv["parameters"][1::2], strict=True))
        for wire in step.wires:
            handed = "{{tasks." + wire.upstream.replace(":", "_") + ".values." + wire.value + "}}"
            assert given.get("--" + wire.param.replace("_", "-")) == handed, (step.key, wire)
        for param, value in step.fixed:
            assert given.get("--" + param.replace("_", "-")) == value, (step.key, param)
    for task in job["tasks"]:
        assert (PROJECT_ROOT / task["spark_python_task"]["python_file"]).is_file()
        assert task["spark_python_task"]["source"] == "GIT"
        assert task["max_retries"] == 0, "a retried step would write into a new run and register twice"


@pytest.mark.parametrize("key", sorted(PIPELINES))
def test_task_values_come_from_upstream_tasks_and_name_what_the_step_publishes(key: str):
    job = PIPELINES[key]
    references = 0
    for task in job["tasks"]:
        for arg in task["spark_python_task"].get("parameters", []):
            for upstream, name in TASK_VALUE.findall(arg):
                references += 1
                assert upstream in local_job.ancestors(job, task["task_key"]), (task["task_key"], upstream)
                upstream_task = next(t for t in job["tasks"] if t["task_key"] == upstream)
                assert name in _published_fields(_step(upstream_task)), (upstream, name)
    # Every task after download takes at least one value from upstream, and no file path is handed over.
    assert references >= len(job["tasks"]) - 1
    assert "/dbfs" not in json.dumps(job["tasks"]) and "/Volumes" not in json.dumps(job["tasks"])


@pytest.mark.parametrize("key", sorted(PIPELINES))
def test_every_task_parameter_parses_with_its_steps_options(key: str):
    """What each task passes is read by the step's own parser, with every job parameter at its default."""
    from llmflow.cli import options_class
    from llmflow.options import parse

    job = PIPELINES[key]
    defaults = {param["name"]: str(param["default"]) for param in job["parameters"]}
    values = {
        task["task_key"]: {"run_id": "0" * 32, "model_uri": "models:/m-0", "name": "c.s.m", "version": "1"}
        for task in job["tasks"]
    }
    for task in job["tasks"]:
        step = _step(task)
        function = getattr(__import__(f"llmflow.{step}", fromlist=[step]), step)
        argv = [local_job.fill(arg, defaults, values) for arg in task["spark_python_task"]["parameters"]]
        options = parse(options_class(function), step, step, argv)
        given = {arg.removeprefix("--").replace("-", "_") for arg in argv if arg.startswith("--")}
        assert given <= set(vars(options)), (task["task_key"], given - set(vars(options)))
        if "registered_model_name" in given:
            assert options.registered_model_name.startswith(("main.llmflow.", "c.s.m"))


def test_serverless_variant_has_the_same_task_graph_and_pins_every_dependency():
    def graph(job: dict[str, Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (
                t["task_key"],
                tuple(d["task_key"] for d in t.get("depends_on", [])),
                json.dumps(t["spark_python_task"], sort_keys=True),
            )
            for t in job["tasks"]
        )

    assert graph(SERVERLESS) == graph(PIPELINE)
    assert SERVERLESS["parameters"] == PIPELINE["parameters"]
    (environment,) = SERVERLESS["environments"]
    assert all(task["environment_key"] == environment["environment_key"] for task in SERVERLESS["tasks"])
    assert not any("job_cluster_key" in task or "libraries" in task for task in SERVERLESS["tasks"])
    # No ML runtime on serverless: the whole of requirements.txt, MLflow included, with torch's CPU index.
    dependencies = environment["spec"]["dependencies"]
    assert dependencies == [f"--extra-index-url {TORCH_CPU_INDEX}", *REQUIREMENTS]
    (variables,) = SERVERLESS["environment_variables"]
    env = variables["spec"]["variables"]
    assert env["MLFLOW_REGISTRY_URI"] == "databricks-uc"
    assert env["LLMFLOW_HF_TOKEN_SECRET"] == "llmflow/hf_token"
    assert "HF_TOKEN" not in env, "the token is read from the secret scope, never written into the job"


@pytest.mark.parametrize("key", sorted(JOBS))
def test_every_task_installs_all_of_requirements_txt_so_the_mlflow_that_runs_is_the_one_tested(key: str):
    """No task runs on its runtime's own MLflow (3.0.1 on 17.3 LTS ML): each installs the pinned one, and that is
    the MLflow these tests run on."""
    job = JOBS[key]
    tested = f"mlflow=={importlib.metadata.version('mlflow')}"
    for task in job["tasks"]:
        pins = _installed_pins(job, task)
        assert pins == REQUIREMENTS, f"{key}.{task['task_key']} installs {pins}, not requirements.txt"
        assert tested in pins, f"{key}.{task['task_key']}: the tests ran on {tested}"


def test_job_clusters_run_a_cpu_ml_runtime_and_take_torch_from_its_cpu_index():
    clusters = {cluster["job_cluster_key"]: cluster["new_cluster"] for cluster in PIPELINE["job_clusters"]}
    for cluster in clusters.values():
        major, minor = map(int, re.fullmatch(r"(\d+)\.(\d+)\.x-cpu-ml-scala2\.13", cluster["spark_version"]).groups())
        assert (major, minor) >= (17, 3), "17.3 LTS ML's Python 3.12 is the one the pins were tried on"
        env = cluster["spark_env_vars"]
        assert env["HF_TOKEN"] == "{{secrets/llmflow/hf_token}}"
        assert env["MLFLOW_TRACKING_URI"] == "databricks"
        assert env["MLFLOW_REGISTRY_URI"] == "databricks-uc"
    for task in PIPELINE["tasks"]:
        torch = next(library["pypi"] for library in task["libraries"] if library["pypi"]["package"].startswith("torch"))
        assert torch["repo"] == TORCH_CPU_INDEX
    # export_onnx on a cluster of its own, whose node type is a variable of its own (a high-memory node for an
    # fp16/fp32 export; the int4 one peaks at 5.3 GiB), evaluate on its own cluster.
    by_task = {task["task_key"]: task["job_cluster_key"] for task in PIPELINE["tasks"]}
    assert by_task["export_onnx"] not in {by_task[k] for k in by_task if k != "export_onnx"}
    written = yaml.safe_load((PROJECT_ROOT / "deploy/databricks/resources/llmflow_pipeline.yml").read_text())
    written = {
        c["job_cluster_key"]: c["new_cluster"] for c in written["resources"]["jobs"]["llmflow_pipeline"]["job_clusters"]
    }
    assert written[by_task["export_onnx"]]["node_type_id"] == "${var.export_node_type}"
    assert clusters[by_task["export_onnx"]]["node_type_id"] == "m5d.2xlarge"
    assert by_task["evaluate_onnx"] == by_task["evaluate_transformers"]
    assert {by_task["evaluate_onnx"]} & {by_task[k] for k in by_task if not k.startswith("evaluate")} == set()


def test_registered_model_names_are_three_level_unity_catalog_names():
    default = next(p["default"] for p in PIPELINE["parameters"] if p["name"] == "registered_model_name")
    assert default == "main.llmflow.phi3_mini_4k_instruct"
    for task in PIPELINE["tasks"]:
        if _step(task) == "register":
            name = task["spark_python_task"]["parameters"][-1]
            filled = local_job.fill(name, {"registered_model_name": default}, {})
            catalog, schema, model = filled.split(".")
            assert re.fullmatch(r"[a-z0-9_]+", model), f"{model}: UC names are safest in lower case and underscores"


def test_the_pipeline_runs_weekly_and_only_one_variant_is_scheduled():
    quartz = PIPELINE["schedule"]["quartz_cron_expression"].split()
    assert len(quartz) == 6 and quartz[3] == "?" and quartz[5] in {"MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"}
    assert PIPELINE["schedule"]["pause_status"] == "UNPAUSED"
    assert SERVERLESS["schedule"]["pause_status"] == "PAUSED"
    assert PIPELINE["max_concurrent_runs"] == 1


def test_fill_refuses_a_value_no_task_set():
    with pytest.raises(local_job.BundleError, match="task 'download' set no value 'model_uri'"):
        local_job.fill("{{tasks.download.values.model_uri}}", {}, {"download": {"run_id": "abc"}})
    assert local_job.fill("{{tasks.download.values.run_id}}", {}, {"download": {"run_id": "abc"}}) == "abc"


# --- the task-value shim ---------------------------------------------------------------------------


def test_publish_writes_the_scalar_fields_to_the_values_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from llmflow.download import DownloadResult

    monkeypatch.delenv(task_values.ON_DATABRICKS, raising=False)
    monkeypatch.setenv(task_values.ENV_TASK_VALUES_FILE, str(tmp_path / "values.json"))
    result = DownloadResult("r1", "local", "local/tiny", "abc", Path("/machine/local/path"))
    task_values.publish(result)
    # The model folder is a path on the machine that ran the step: a later task could not read it.
    assert json.loads((tmp_path / "values.json").read_text()) == {
        "run_id": "r1",
        "source": "local",
        "repo_id": "local/tiny",
        "commit_sha": "abc",
    }


def test_publish_sets_databricks_task_values_on_databricks(monkeypatch: pytest.MonkeyPatch):
    from llmflow.register import RegisterResult

    set_values: dict[str, Any] = {}

    class TaskValues:
        def set(self, key: str, value: Any) -> None:
            set_values[key] = value

    class DbUtils:
        jobs = type("Jobs", (), {"taskValues": TaskValues()})()

    monkeypatch.setenv(task_values.ON_DATABRICKS, "17.3")
    monkeypatch.delenv(task_values.ENV_TASK_VALUES_FILE, raising=False)
    monkeypatch.setattr(task_values, "_dbutils", DbUtils)
    task_values.publish(RegisterResult("r2", "main.llmflow.m_onnx", "3", True))
    assert set_values == {"run_id": "r2", "name": "main.llmflow.m_onnx", "version": "3", "created": True}


def test_hf_token_comes_from_the_secret_scope_only_on_databricks(monkeypatch: pytest.MonkeyPatch):
    asked: list[tuple[str, str]] = []

    class Secrets:
        def get(self, scope: str, key: str) -> str:
            asked.append((scope, key))
            return "hf_secret_value"

    class DbUtils:
        secrets = Secrets()

    monkeypatch.setattr(task_values, "_dbutils", DbUtils)
    monkeypatch.setenv("HF_TOKEN", "")  # recorded, so the token the shim sets is removed after the test
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv(task_values.ON_DATABRICKS, raising=False)
    task_values.hf_token_from_secret()
    assert asked == [] and "HF_TOKEN" not in os.environ
    monkeypatch.setenv(task_values.ON_DATABRICKS, "17.3")
    monkeypatch.setenv(task_values.ENV_HF_TOKEN_SECRET, "team/hf")
    task_values.hf_token_from_secret()
    assert asked == [("team", "hf")]
    assert os.environ["HF_TOKEN"] == "hf_secret_value"


def test_batch_predict_job_scores_the_champion_on_a_cluster_with_workers():
    from llmflow.batch_predict import BatchPredictOptions
    from llmflow.options import parse

    job = JOBS["llmflow_batch_predict"]
    (task,) = job["tasks"]
    assert task["spark_python_task"]["python_file"] == "steps/batch_predict.py"
    defaults = {param["name"]: str(param["default"]) for param in job["parameters"]}
    argv = [local_job.fill(arg, defaults, {}) for arg in task["spark_python_task"]["parameters"]]
    options = parse(BatchPredictOptions, "batch_predict", "batch_predict", argv)
    assert options.model_uri == "models:/main.llmflow.phi3_mini_4k_instruct_onnx@champion"
    assert options.output_dir.startswith("/Volumes/"), "executors and driver must share the output folder"
    (cluster,) = job["job_clusters"]
    assert cluster["new_cluster"]["num_workers"] >= 1
    # The runtime's Spark is the one to use: installing pyspark over it would replace it.
    assert not any("pyspark" in library["pypi"]["package"] for library in task["libraries"])
    assert "schedule" not in job


# --- the serving endpoint bundle -------------------------------------------------------------------------


def _endpoint(champion_version: str = "7") -> dict[str, Any]:
    serving = local_job.load_bundle(SERVING_ROOT, overrides={"champion_version": champion_version})
    (endpoint,) = serving["resources"]["model_serving_endpoints"].values()
    return endpoint


def test_the_serving_endpoint_is_exactly_what_the_databricks_sdk_reads():
    endpoint = _endpoint()
    assert "${" not in json.dumps(endpoint)
    assert EndpointCoreConfigInput.from_dict(endpoint["config"]).as_dict() == endpoint["config"]
    assert [EndpointTag.from_dict(tag).as_dict() for tag in endpoint["tags"]] == endpoint["tags"]
    # Every other field is an argument of the SDK's create call (bind raises TypeError on an unknown one).
    inspect.signature(ServingEndpointsAPI.create).bind(None, **endpoint)


def test_the_serving_endpoint_serves_the_version_given_of_the_pipelines_onnx_model_and_nothing_else():
    endpoint = _endpoint("7")
    (entity,) = endpoint["config"]["served_entities"]
    default = next(p["default"] for p in PIPELINE["parameters"] if p["name"] == "registered_model_name")
    # The name register_onnx registers, and the one batch_predict scores as @champion.
    assert entity["entity_name"] == f"{default}_onnx"
    batch = JOBS["llmflow_batch_predict"]
    champion = next(p["default"] for p in batch["parameters"] if p["name"] == "model_uri")
    assert champion == f"models:/{entity['entity_name']}@champion"
    assert entity["entity_version"] == "7"
    (route,) = endpoint["config"]["traffic_config"]["routes"]
    assert (route["served_model_name"], route["traffic_percentage"]) == (entity["name"], 100)
    assert entity["workload_type"] == "CPU"


def test_the_champion_version_has_no_default_and_the_names_match_the_pipeline_bundle():
    """No version is served unless the deploy names one; catalog, schema and model name are the pipeline's."""
    variables = SERVING_SPEC["variables"]
    assert "default" not in variables["champion_version"]
    pipeline_spec = yaml.safe_load((PROJECT_ROOT / "databricks.yml").read_text())["variables"]
    for name in ("catalog", "schema", "model_name"):
        assert variables[name]["default"] == pipeline_spec[name]["default"], name
    written = SERVING_SPEC["resources"]["model_serving_endpoints"]["llmflow_champion"]
    assert written["config"]["served_entities"][0]["entity_version"] == "${var.champion_version}"

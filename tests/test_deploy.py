"""Scale-out backends under ``deploy/``, checked with MLflow's own parsing, templating and submission code.

Nothing here reaches a Databricks workspace, a Kubernetes cluster, a registry or a Docker engine. MLflow
runs for real up to its call into each of those (an HTTP request, a docker build or push, the Kubernetes
API); that call is replaced, and the tests assert what MLflow would have sent. The image itself is built and
run with Docker in tests/test_container.py.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes
import mlflow
import mlflow.projects.kubernetes as mlflow_kubernetes
import pytest
import yaml
from mlflow.projects import _parse_kubernetes_config, env_type
from mlflow.projects._project_spec import load_project
from mlflow.projects.docker import validate_docker_env
from mlflow.utils.mlflow_tags import MLFLOW_DOCKER_IMAGE_ID, MLFLOW_PROJECT_BACKEND
from mlproject import mlproject_parameters

from llmflow import PROJECT_ROOT, cli
from llmflow.cli import options_class
from llmflow.options import parse
from llmflow.tracking.digest import CODE_ROOTS, code_digest
from llmflow.tracking.names import TAG_CODE_DIGEST, TAG_STEP

DATABRICKS = PROJECT_ROOT / "deploy" / "databricks"
KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
KUBE_CONFIG = json.loads((KUBERNETES / "kubernetes_config.json").read_text())
ROOT_PROJECT = load_project(str(PROJECT_ROOT))
ROOT_ENTRY_POINTS = list(ROOT_PROJECT._entry_points)
REQUIREMENTS = [
    line.strip()
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _packages(libraries: list[dict[str, Any]]) -> list[str]:
    return [library["pypi"]["package"] for library in libraries]


def _assert_torch_from_cpu_index(libraries: list[dict[str, Any]]) -> None:
    """PyPI's Linux torch wheel is the CUDA build (several GB); the CPU one comes from PyTorch's index."""
    torch = next(library["pypi"] for library in libraries if library["pypi"]["package"].startswith("torch=="))
    assert torch == {"package": next(r for r in REQUIREMENTS if r.startswith("torch==")), "repo": TORCH_CPU_INDEX}
    assert all("repo" not in library["pypi"] for library in libraries if library["pypi"] is not torch)


def _parsed_step_args(entry_point: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``python -m steps.<entry_point> <argv>`` parses its arguments into, without running the step."""
    module = importlib.import_module(f"steps.{entry_point}")
    parsed: dict[str, Any] = {}

    def fake_run_step(step: Any, argv: list[str] | None = None, entry_point: str | None = None) -> None:
        parsed.update(parse(options_class(step), entry_point or step.__name__, "", argv).params())

    monkeypatch.setattr(cli, "run_step", fake_run_step)  # what the step's main calls
    module.main(argv)
    return parsed


def _step_argv(command: str, entry_point: str) -> list[str]:
    """The step's arguments in a command that runs it as a file (the root) or as a module (the image)."""
    words = shlex.split(command)
    if words[:2] == ["python", f"steps/{entry_point}.py"]:
        return words[2:]
    assert words[:3] == ["python", "-m", f"steps.{entry_point}"]
    return words[3:]


# --- Databricks ---------------------------------------------------------------------------------------


def _tracked_files_copy(dst: Path) -> Path:
    """The project as a Git URL gives it to ``mlflow run``: tracked and new unignored files, no .venv or store."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        src = PROJECT_ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


# --- Kubernetes -------------------------------------------------------------------------------------


def test_kubernetes_project_has_a_docker_env_and_runs_each_root_step():
    project = load_project(str(KUBERNETES))
    assert project.env_type == env_type.DOCKER
    validate_docker_env(project)
    assert set(project._entry_points) == set(ROOT_ENTRY_POINTS)
    for name, entry_point in project._entry_points.items():
        assert entry_point.command == f"python -m steps.{name}"
        assert entry_point.parameters == {}, "parameters and defaults live in the root MLproject only"


def _sample_parameters(entry_point: str) -> dict[str, str]:
    """A value for each parameter of a root entry point, none of them its default."""
    values = {}
    for name, spec in mlproject_parameters(entry_point).items():
        if spec["type"] == "float":
            values[name] = f"{float(spec['default']) * 2 + 1:g}"
        elif spec.get("default") in ("true", "false"):
            values[name] = "false" if spec["default"] == "true" else "true"  # a bool parameter
        else:
            values[name] = f"{name}-value"
    return values


@pytest.mark.parametrize("entry_point", ROOT_ENTRY_POINTS)
def test_kubernetes_entry_point_passes_parameters_as_the_root_one_does(
    entry_point: str, monkeypatch: pytest.MonkeyPatch
):
    parameters = _sample_parameters(entry_point)
    wrapper = load_project(str(KUBERNETES)).get_entry_point(entry_point)
    root_command = ROOT_PROJECT.get_entry_point(entry_point).compute_command(parameters, None)
    wrapper_command = wrapper.compute_command(parameters, None)
    root_args = _parsed_step_args(entry_point, _step_argv(root_command, entry_point), monkeypatch)
    wrapper_args = _parsed_step_args(entry_point, _step_argv(wrapper_command, entry_point), monkeypatch)
    # No value is a default, so the two agree only if every parameter reached the step.
    assert wrapper_args == root_args


@pytest.fixture
def kubernetes_submission(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """``mlflow.projects.run(deploy/kubernetes, backend="kubernetes")`` up to its call into Docker and the cluster."""
    calls = SimpleNamespace(builds=[], pushes=[], contexts=[], jobs=[])
    image_tag = f"{KUBE_CONFIG['repository-uri']}:0123abc"

    def build_docker_image(**kwargs: Any) -> SimpleNamespace:
        calls.builds.append(kwargs)
        return SimpleNamespace(tags=[image_tag], id="sha256:image")

    def create_namespaced_job(api: Any, namespace: str, body: dict[str, Any], pretty: bool) -> None:
        calls.jobs.append((namespace, body))

    monkeypatch.setattr("mlflow.projects.docker.validate_docker_installation", lambda: None)
    monkeypatch.setattr("mlflow.projects.docker.build_docker_image", build_docker_image)
    monkeypatch.setattr(mlflow_kubernetes, "push_image_to_registry", lambda tag: calls.pushes.append(tag) or "sha256:d")
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda context=None: calls.contexts.append(context))
    monkeypatch.setattr(kubernetes.client.BatchV1Api, "create_namespaced_job", create_namespaced_job)
    # kube-job-template-path is relative: the commands in the README run from the repository root.
    monkeypatch.chdir(PROJECT_ROOT)

    def submit(entry_point: str, parameters: dict[str, str]) -> SimpleNamespace:
        submitted = mlflow.projects.run(
            str(KUBERNETES),
            entry_point=entry_point,
            parameters=parameters,
            backend="kubernetes",
            backend_config=str(KUBERNETES / "kubernetes_config.json"),
            build_image=True,
            synchronous=False,
        )
        namespace, job = calls.jobs[-1]
        container = job["spec"]["template"]["spec"]["containers"][0]
        return SimpleNamespace(run_id=submitted.run_id, namespace=namespace, job=job, container=container)

    calls.submit = submit
    calls.image = f"{image_tag}@sha256:d"
    return calls


def test_kubernetes_config_and_job_template_load_with_mlflow(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(PROJECT_ROOT)
    config = _parse_kubernetes_config(KUBE_CONFIG)
    template = config["kube-job-template"]
    assert template["kind"] == "Job" and template["apiVersion"] == "batch/v1"
    assert template["metadata"]["namespace"]
    pod = template["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert template["spec"]["backoffLimit"] == 0
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "value" not in env["HF_TOKEN"] and env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    assert "MLFLOW_TRACKING_URI" not in env, "MLflow appends it; a second entry would be ambiguous"


def test_mlflow_run_backend_kubernetes_renders_the_job(
    kubernetes_submission: SimpleNamespace, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
):
    in_cluster = "http://mlflow.mlflow.svc.cluster.local:5000"
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", in_cluster)
    parameters = {"download_run_id": "0123456789abcdef", "precision": "int8"}

    submitted = kubernetes_submission.submit("export_onnx", parameters)

    (build,) = kubernetes_submission.builds
    assert build["base_image"] == load_project(str(KUBERNETES)).docker_env["image"]
    assert build["repository_uri"] == KUBE_CONFIG["repository-uri"]
    assert Path(build["work_dir"]) == KUBERNETES
    assert kubernetes_submission.pushes == [f"{KUBE_CONFIG['repository-uri']}:0123abc"]
    assert kubernetes_submission.contexts == [KUBE_CONFIG["kube-context"]]
    job, container = submitted.job, submitted.container
    assert submitted.namespace == job["metadata"]["namespace"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", job["metadata"]["name"]), "not a DNS-1123 label"
    assert container["image"] == kubernetes_submission.image
    assert container["command"] == [
        "python", "-m", "steps.export_onnx", "--download_run_id", "0123456789abcdef", "--precision", "int8"
    ]  # fmt: skip
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == in_cluster
    assert env["MLFLOW_RUN_ID"] == submitted.run_id
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "llmflow", "key": "hf-token", "optional": True}}
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    # The Kubernetes client reads the rendered body as a V1Job and writes back every field of it.
    api = kubernetes.client.ApiClient()
    v1_job = api.deserialize(SimpleNamespace(data=json.dumps(job)), "V1Job")
    assert api.sanitize_for_serialization(v1_job) == job
    run = mlflow.get_run(submitted.run_id)
    assert run.data.params == parameters
    assert run.data.tags[MLFLOW_PROJECT_BACKEND] == "kubernetes"
    assert run.data.tags[MLFLOW_DOCKER_IMAGE_ID] == "sha256:d"


def _dockerfile() -> list[list[str]]:
    """The Dockerfile's instructions, continuation lines joined, each split into words."""
    text = re.sub(r"\\\n", " ", (KUBERNETES / "Dockerfile").read_text())
    return [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _copied() -> dict[str, str]:
    """``{source: destination}`` of every COPY in the Dockerfile, destinations relative to its WORKDIR."""
    copies = {}
    for words in _dockerfile():
        if words[0] == "COPY":
            *sources, dest = (w for w in words[1:] if not w.startswith("--"))
            for source in sources:
                copies[source] = str(Path(dest) / source if dest.endswith("/") else Path(dest))
    return copies


def _image_layout(root: Path) -> Path:
    """The project as the Dockerfile lays it out, copied into ``root`` (the image's /opt/llmflow)."""
    for source, dest in _copied().items():
        src, dst = PROJECT_ROOT / source, root / dest
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return root


def test_dockerfile_installs_cpu_torch_first_and_copies_what_the_steps_need():
    instructions = _dockerfile()
    # The base is a build argument whose default is the official Python image.
    assert instructions[:2] == [["ARG", "BASE_IMAGE=python:3.11-slim"], ["FROM", "${BASE_IMAGE}"]]
    args = dict(words[1].partition("=")[::2] for words in instructions if words[0] == "ARG")
    assert args["TORCH_INDEX_URL"] == TORCH_CPU_INDEX
    # pip's own settings are declared without a value, so that pip keeps its defaults unless one is given.
    assert {key: args[key] for key in args if key.startswith("PIP_")} == dict.fromkeys(
        ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"], ""
    )
    installs = " ".join(" ".join(words) for words in instructions if words[0] == "RUN" and "pip" in words)
    assert installs.index("--index-url $TORCH_INDEX_URL $(grep '^torch==' requirements.txt)") < installs.index(
        "-r requirements.txt"
    )
    copied = _copied()
    workdir = next(words[1] for words in instructions if words[0] == "WORKDIR")
    env = dict(w.split("=", 1) for words in instructions if words[0] == "ENV" for w in words[1:])
    assert env["PYTHONPATH"] == workdir == "/opt/llmflow"
    # Everything the code digest covers is in the image, so a run reuses a step run made elsewhere.
    for root_item in set(CODE_ROOTS) | {"data", ".git"}:
        assert copied.get(root_item) == root_item, f"{root_item} is not copied to {workdir}/{root_item}"
    # The build context is exactly what the Dockerfile copies (the root .dockerignore: both builders read it).
    ignore = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*"
    assert {line[1:] for line in ignore if line.startswith("!")} == set(copied)
    # The user the image runs as is the one the Job template asks for.
    template = yaml.safe_load((KUBERNETES / "kubernetes_job_template.yaml").read_text())
    assert next(words[1] for words in instructions if words[0] == "USER") == str(
        template["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    )
    mounts = template["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(env["HF_HOME"].startswith(mount["mountPath"] + "/") for mount in mounts)


@pytest.mark.integration
def test_rendered_job_command_runs_the_step_in_the_image_layout(
    kubernetes_submission: SimpleNamespace, tracking_uri: str, tiny_model_dir: Path, tmp_path: Path
):
    """Run the container's command as the pod would: image layout on PYTHONPATH, MLflow's working directory.

    Without Docker (tests/test_container.py runs the image itself), the image is its file layout (from the
    Dockerfile's COPY lines) and the pod's environment is the rendered one; the Python environment is this one,
    which holds requirements.txt. This checks the pod's rendered command and environment, which no
    ``mlflow run`` in Docker uses.
    """
    submitted = kubernetes_submission.submit("download", {"model": str(tiny_model_dir), "revision": "main"})
    image_root = _image_layout(tmp_path / "opt-llmflow")
    workdir = shutil.copytree(KUBERNETES, tmp_path / "mlflow-projects-code")  # MLflow's COPY of deploy/kubernetes
    env = {e["name"]: e["value"] for e in submitted.container["env"] if "value" in e}
    env |= {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(image_root),
        "HF_HOME": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    assert env["MLFLOW_TRACKING_URI"] == tracking_uri

    proc = subprocess.run(
        submitted.container["command"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    run = mlflow.get_run(submitted.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_STEP] == "download"
    assert run.data.params["model"] == str(tiny_model_dir)
    assert (
        run.data.tags[TAG_CODE_DIGEST] == code_digest("download", image_root) == code_digest("download", PROJECT_ROOT)
    )

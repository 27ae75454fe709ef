"""``mlflow run --env-manager virtualenv`` and ``uv``: MLflow builds the step's environment from conda.yaml.

Each manager builds a fresh environment (about 2 GB) in a temporary ``MLFLOW_ENV_ROOT``, so the test starts
cold and leaves the user's ``~/.mlflow/envs`` alone, then runs the ``download`` step in it. The command runs
with a PATH that holds neither the project's ``.venv`` nor any Python with MLflow installed, so the step can
only succeed in the environment that MLflow built.

- virtualenv installs the exact Python of conda.yaml with pyenv, then the pip list with pip.
- uv makes the environment with ``uv venv`` and installs it with ``uv pip``. uv does not read pip's
  configuration, so ``UV_FIND_LINKS`` is set to pip's ``find-links`` folder, where the CPU torch wheel is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.utils.environment import _PythonEnv

from llmflow import PROJECT_ROOT
from llmflow.tracking.names import TAG_STEP

pytestmark = pytest.mark.e2e

CONDA_YAML = PROJECT_ROOT / "conda.yaml"
ACTIVATE = re.compile(r"Running command 'source (\S+)/bin/activate && python steps/download\.py ")
SUCCEEDED = re.compile(r"=== Run \(ID '([0-9a-f]{32})'\) succeeded ===")
# Distributions of a CUDA torch build: none may land in the environment.
CUDA_DISTRIBUTIONS = re.compile(r"^(nvidia-|cuda-|triton)")


def _requirements() -> list[str]:
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pip_find_links() -> str:
    """The folder(s) in pip's ``find-links`` setting (``PIP_FIND_LINKS`` or ``pip config``), or ''."""
    if os.environ.get("PIP_FIND_LINKS"):
        return os.environ["PIP_FIND_LINKS"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True
    )
    found = re.search(r"^\S*find-links='([^']*)'", proc.stdout, flags=re.MULTILINE)
    return found.group(1) if found else ""


def _uv() -> Path:
    """uv next to the running interpreter (requirements-dev.txt installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = beside if beside.is_file() else shutil.which("uv")
    if found is None:
        pytest.fail("uv not found next to the Python running the tests nor on PATH; install requirements-dev.txt")
    return Path(found)


def _tool_path(tmp: Path, *tools: Path) -> str:
    """A PATH of the system folders plus links to ``tools``: no Python that has MLflow installed."""
    bin_dir = tmp / "tools"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool.name).symlink_to(tool)
    return os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"])


def test_conda_yaml_gives_virtualenv_and_uv_an_exact_python_and_the_pinned_requirements():
    python_env = _PythonEnv.from_conda_yaml(str(CONDA_YAML))
    # A bare "3.11" would make the virtualenv manager ask pyenv for the newest 3.11.x and build it.
    assert re.fullmatch(r"3\.11\.\d+", python_env.python), python_env.python
    assert python_env.dependencies == _requirements()
    assert python_env.build_dependencies == ["pip"]
    assert yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["conda_env"] == CONDA_YAML.name


def _run_download(manager: str, tmp: Path, tiny_model_dir: Path, path: str, **extra_env: str) -> dict:
    """``mlflow run <project> -e download --env-manager <manager>`` with a cold env root; what it did."""
    store = tmp / "store"
    store.mkdir()
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    experiment_id = MlflowClient(tracking_uri).create_experiment(
        manager, artifact_location=(store / "artifacts").as_uri()
    )
    env_root = tmp / "envs"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"))},
        "PATH": path,
        "MLFLOW_ENV_ROOT": str(env_root),
        "MLFLOW_TRACKING_URI": tracking_uri,
        **extra_env,
    }
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "download"]
    command += ["--env-manager", manager, "--experiment-id", experiment_id, "-P", f"model={tiny_model_dir}"]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - started
    print(f"\n--env-manager {manager}: environment built and download run in {seconds:.0f} s")
    assert proc.returncode == 0, f"--env-manager {manager} failed:\n{proc.stderr[-4000:]}"
    activated = ACTIVATE.search(proc.stderr)
    assert activated, proc.stderr[-2000:]
    env_dir = Path(activated.group(1))
    listing = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json, sys; print(json.dumps({'python': sys.version.split()[0], "
            "'dists': {d.metadata['Name']: d.version for d in m.distributions()}}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {
        "run_id": SUCCEEDED.findall(proc.stderr)[-1],
        "tracking_uri": tracking_uri,
        "env_root": env_root,
        "env_dir": env_dir,
        **json.loads(listing.stdout),
    }


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _check(result: dict, manager: str, tiny_model_dir: Path) -> None:
    run = MlflowClient(result["tracking_uri"]).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == manager
    assert run.data.tags[TAG_STEP] == "download"
    assert run.data.params["model"] == str(tiny_model_dir)
    # The step ran in a new environment under the env root given, named by MLflow.
    assert result["env_dir"].parent == result["env_root"]
    assert result["env_dir"].name.startswith("mlflow-")
    python_env = _PythonEnv.from_conda_yaml(str(CONDA_YAML))
    assert result["python"] == python_env.python
    dists = {_normalized(name): version for name, version in result["dists"].items()}
    for requirement in python_env.dependencies:
        name, version = requirement.split("==")
        installed = dists.get(_normalized(name))
        assert installed is not None and installed.split("+")[0] == version, (requirement, installed)
    assert dists["torch"].endswith("+cpu"), dists["torch"]
    assert not [name for name in dists if CUDA_DISTRIBUTIONS.match(name)]


@pytest.fixture(scope="module")
def virtualenv_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        pytest.fail("pyenv not found on PATH: MLflow's virtualenv manager installs Python with it")
    tmp = tmp_path_factory.mktemp("env-virtualenv")
    # pip reads its own configuration (find-links) for the CPU torch wheel. PIP_COMPILE=0 is `--no-compile`,
    # as uv does by default: byte-compiling every module at install took two thirds of pip's CPU time, and
    # the step compiles what it imports anyway.
    return _run_download("virtualenv", tmp, tiny_model_dir, _tool_path(tmp, Path(pyenv)), PIP_COMPILE="0")


@pytest.fixture(scope="module")
def uv_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("env-uv")
    # uv finds a Python of the version conda.yaml names on PATH: the one without MLflow that pyenv installed.
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = _tool_path(tmp, _uv(), python)
    find_links = _pip_find_links()
    extra = {"UV_FIND_LINKS": find_links} if find_links else {}
    return _run_download("uv", tmp, tiny_model_dir, path, **extra)


def test_virtualenv_builds_the_environment_and_runs_a_step_in_it(virtualenv_run: dict, tiny_model_dir: Path):
    _check(virtualenv_run, "virtualenv", tiny_model_dir)


def test_uv_builds_the_environment_and_runs_a_step_in_it(uv_run: dict, tiny_model_dir: Path):
    _check(uv_run, "uv", tiny_model_dir)

"""``mlflow run <git-url> -v <commit>`` from a clean clone, as someone without a checkout runs the project.

The module serves a bare repository over ``git://`` on loopback (``git daemon``). It holds the project's
current working tree, uncommitted edits included, so the code under test is what runs. Every command runs
from an empty folder that is not the project, against a SQLite store in another folder, with MLflow's
clones made under a temporary folder of this module. ``download``, ``export_onnx`` and ``log_pyfunc``
run one by one from the URL, each given its upstream run id, then ``main`` runs the whole chain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient

from llmflow import PROJECT_ROOT
from llmflow.tracking.names import TAG_GIT_COMMIT, TAG_MODEL_URI
from tests.servers import free_port, stop_group

pytestmark = pytest.mark.e2e

REPO = "llmflow.git"
MODEL_NAME = "gitrun"
SUCCEEDED = re.compile(r"=== Run \(ID '([0-9a-f]{32})'\) succeeded ===")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "llmflow tests",
    "GIT_AUTHOR_EMAIL": "tests@llmflow.invalid",
    "GIT_COMMITTER_NAME": "llmflow tests",
    "GIT_COMMITTER_EMAIL": "tests@llmflow.invalid",
}


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def snapshot_working_tree(dst: Path) -> tuple[Path, str]:
    """A bare repository at ``dst`` holding the project's files as they are now; return it and its commit.

    The files are those git would commit: tracked and untracked, less what ``.gitignore`` leaves out
    (``.venv``, ``build``, ``mlflow.db`` ...), so nothing outside what a clone holds can be relied on.
    """
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=PROJECT_ROOT)
    tree = dst.parent / "snapshot"
    for name in filter(None, listed.split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    # A shorter default QA set (12 of the 60 questions the tiny model learnt) keeps main's evaluations short.
    qa = (tree / "data" / "qa.jsonl").read_text().splitlines(keepends=True)
    (tree / "data" / "qa.jsonl").write_text("".join(qa[:12]))
    _git("init", "--quiet", "--initial-branch=main", cwd=tree)
    _git("add", "--all", cwd=tree)
    _git("-c", "commit.gpgsign=false", "commit", "--quiet", "--message", "snapshot of the working tree", cwd=tree)
    commit = _git("rev-parse", "HEAD", cwd=tree).strip()
    _git("clone", "--quiet", "--bare", str(tree), str(dst), cwd=dst.parent)
    return dst, commit


@dataclass
class GitRuns:
    url: str
    commit: str
    tracking_uri: str
    experiment_id: str
    caller: Path
    clones: Path
    run_ids: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def git_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(``git://127.0.0.1:<port>/llmflow.git``, commit) served by ``git daemon`` for this module; always stopped."""
    root = tmp_path_factory.mktemp("git-server")
    (root / "repos").mkdir()
    _, commit = snapshot_working_tree(root / "repos" / REPO)
    port = free_port()
    command = ["git", "daemon", f"--base-path={root / 'repos'}", "--export-all", "--reuseaddr"]
    command += ["--listen=127.0.0.1", f"--port={port}", str(root / "repos")]
    url = f"git://127.0.0.1:{port}/{REPO}"
    with (root / "daemon.log").open("w") as log:
        # A session of its own, so that stopping it also stops the upload-pack processes it forks.
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                probe = subprocess.run(["git", "ls-remote", url], capture_output=True, text=True, timeout=30)
                if probe.returncode == 0 and commit in probe.stdout:
                    break
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"git daemon did not serve {url}:\n{(root / 'daemon.log').read_text()}")
                time.sleep(0.2)
            yield url, commit
        finally:
            stop_group(daemon)


def _mlflow_run(runs: GitRuns, entry_point: str, **params: str) -> str:
    """``mlflow run <url> -v <commit> -e <entry_point>`` from the caller's folder; return the run id.

    With ``runs.tracking_uri`` empty, no tracking URI is set: MLflow's default store is used.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    env = {
        **env,
        **({"MLFLOW_TRACKING_URI": runs.tracking_uri} if runs.tracking_uri else {}),
        # `--env-manager local` runs `python` from PATH: the one running these tests.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # MLflow clones the project into a new temporary folder: keep those here, where the test can see them.
        "TMPDIR": str(runs.clones),
    }
    command = [sys.executable, "-m", "mlflow", "run", runs.url, "--version", runs.commit, "-e", entry_point]
    command += ["--env-manager", "local"]
    command += ["--experiment-id", runs.experiment_id] if runs.experiment_id else []
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=runs.caller, env=env, capture_output=True, text=True, timeout=900)
    runs.seconds[entry_point] = round(time.perf_counter() - started, 1)
    assert proc.returncode == 0, f"mlflow run -e {entry_point} failed:\n{proc.stderr[-4000:]}"
    succeeded = SUCCEEDED.findall(proc.stderr)
    assert succeeded, f"no 'succeeded' line for -e {entry_point}:\n{proc.stderr[-2000:]}"
    runs.run_ids[entry_point] = succeeded[-1]  # main's own run ends last
    return succeeded[-1]


@pytest.fixture(scope="module")
def git_runs(git_url: tuple[str, str], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> GitRuns:
    url, commit = git_url
    root = tmp_path_factory.mktemp("git-runs")
    for folder in ("store", "caller", "clones"):
        (root / folder).mkdir()
    tracking_uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    experiment_id = MlflowClient(tracking_uri).create_experiment(
        "git-url", artifact_location=(root / "store" / "artifacts").as_uri()
    )
    runs = GitRuns(url, commit, tracking_uri, experiment_id, root / "caller", root / "clones")
    download_id = _mlflow_run(runs, "download", model=str(tiny_model_dir))
    export_id = _mlflow_run(runs, "export_onnx", download_run_id=download_id)
    _mlflow_run(runs, "log_pyfunc", export_run_id=export_id)
    _mlflow_run(runs, "main", model=str(tiny_model_dir), registered_model_name=MODEL_NAME)
    print(f"\nmlflow run from {url}, wall seconds: {runs.seconds}")
    return runs


@pytest.fixture(scope="module")
def client(git_runs: GitRuns) -> MlflowClient:
    return MlflowClient(tracking_uri=git_runs.tracking_uri)


@pytest.fixture(scope="module")
def default_store_run(
    git_url: tuple[str, str], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> GitRuns:
    """``-e download`` from the URL with no tracking URI set: MLflow's default store, in the caller's folder."""
    url, commit = git_url
    root = tmp_path_factory.mktemp("git-default-store")
    (root / "caller").mkdir()
    (root / "clones").mkdir()
    runs = GitRuns(url, commit, "", "", root / "caller", root / "clones")
    _mlflow_run(runs, "download", model=str(tiny_model_dir))
    return runs


def _children(client: MlflowClient, runs: GitRuns) -> list:
    return client.search_runs(
        [runs.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{runs.run_ids['main']}'"
    )


def test_each_entry_point_ran_from_the_git_url_at_the_commit(git_runs: GitRuns, client: MlflowClient):
    assert set(git_runs.run_ids) == {"download", "export_onnx", "log_pyfunc", "main"}
    for entry_point, run_id in git_runs.run_ids.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", entry_point
        tags = run.data.tags
        assert tags["mlflow.project.entryPoint"] == entry_point
        assert tags["mlflow.source.name"] == git_runs.url
        assert tags["mlflow.source.git.commit"] == git_runs.commit
        assert tags[TAG_GIT_COMMIT] == git_runs.commit
    assert TAG_MODEL_URI in client.get_run(git_runs.run_ids["log_pyfunc"]).data.tags


def test_main_ran_every_child_from_its_own_clone(git_runs: GitRuns, client: MlflowClient):
    children = _children(client, git_runs)
    # main may reuse the runs made above; these had not run in this store yet, so main ran them.
    assert {r.data.tags["mlflow.project.entryPoint"] for r in children} >= {"log_transformers", "register", "evaluate"}
    clones = git_runs.clones.resolve()
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED", tags["mlflow.project.entryPoint"]
        assert tags["mlflow.source.git.commit"] == git_runs.commit
        assert tags["mlflow.source.git.repoURL"] == git_runs.url
        # main hands its children the folder MLflow cloned the URL into, not the caller's project.
        source = Path(tags["mlflow.source.name"].removeprefix("file://").split("#")[0])
        assert source.resolve().is_relative_to(clones), tags["mlflow.source.name"]


def test_the_default_qa_set_is_read_from_the_fetched_project(git_runs: GitRuns, client: MlflowClient):
    evaluations = [r for r in _children(client, git_runs) if r.data.tags["mlflow.project.entryPoint"] == "evaluate"]
    assert len(evaluations) == 2
    for run in evaluations:
        assert run.info.status == "FINISHED"
        qa_path = Path(run.data.params["qa_path"])
        source = Path(run.data.tags["mlflow.source.name"].removeprefix("file://").split("#")[0])
        resolved = qa_path if qa_path.is_absolute() else source / qa_path
        assert resolved.resolve() == (source / "data" / "qa.jsonl").resolve()


def test_both_models_are_registered_with_the_commit(git_runs: GitRuns, client: MlflowClient):
    for flavour in ("onnx", "transformers"):
        name = f"{MODEL_NAME}-{flavour}"
        versions = client.search_model_versions(f"name='{name}'")
        assert len(versions) == 1, name
        assert versions[0].tags["llmflow_git_commit"] == git_runs.commit
        # main's evaluate judged it, so it is no longer the challenger.
        assert "challenger" not in client.get_registered_model(name).aliases
        assert versions[0].tags["validation_status"] in ("passed", "failed")


def test_nothing_is_written_outside_the_store_and_the_clones(git_runs: GitRuns):
    assert sorted(p.name for p in git_runs.caller.iterdir()) == []
    clones = [p for p in git_runs.clones.iterdir() if (p / ".git").is_dir()]
    assert len(clones) == len(git_runs.run_ids)  # one clone per `mlflow run`; main's children reuse main's
    for clone in clones:
        assert _git("rev-parse", "HEAD", cwd=clone).strip() == git_runs.commit
        # Nothing was written into the fetched project either, ignored files (__pycache__) aside.
        assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == "", clone


def test_without_a_tracking_uri_the_store_is_in_the_callers_folder(default_store_run: GitRuns):
    caller = default_store_run.caller
    # MLflow's default: sqlite:///mlflow.db and ./mlruns, resolved in the folder `mlflow run` ran from,
    # which the step (running in the clone) is handed as an absolute URI.
    assert sorted(p.name for p in caller.iterdir()) == ["mlflow.db", "mlruns"]
    run = MlflowClient(f"sqlite:///{caller / 'mlflow.db'}").get_run(default_store_run.run_ids["download"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == default_store_run.commit
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(caller / "mlruns")
    (clone,) = [p for p in default_store_run.clones.iterdir() if (p / ".git").is_dir()]
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""

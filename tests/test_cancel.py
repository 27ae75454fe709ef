"""Cancelling cancels: a signal to ``main`` (or to a step run alone) stops the running step's whole process tree.

``mlflow.projects.run`` starts each step of ``main`` in a session of its own, so neither a Ctrl-C in the terminal
nor the SIGTERM that Databricks and Kubernetes send reaches the step by itself. These tests send the signal the
way each of those does, during the ONNX export of a model large enough for the export to take seconds, and check
that no process of the step remains, that both runs end KILLED with the reason, that the step's temporary folders
are gone, and that the rerun runs the step again instead of reusing it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from transformers import Phi3ForCausalLM

from llmflow.demo.tiny import phi3_config, qa_tokenizer, save_chat_model
from llmflow.tracking.names import TAG_ERROR, TAG_STEP
from tests.mlproject import snapshot_project

pytestmark = pytest.mark.e2e
NAME = "cancel"


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Phi-3 of 57 M parameters (230 MB): its int4 export takes seconds, not a fraction of one."""
    tokenizer = qa_tokenizer()
    torch.manual_seed(0)
    config = phi3_config(tokenizer, hidden_size=768, intermediate_size=3072, num_layers=6, num_heads=12)
    return save_chat_model(Phi3ForCausalLM(config), tokenizer, tmp_path_factory.mktemp("slow") / "slow-phi3")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return snapshot_project(tmp_path_factory.mktemp("project") / "llmflow", qa_questions=2)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, MlflowClient, dict[str, str]]:
    """A SQLite store, and the environment of a process that uses it with its own temporary folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "TMPDIR": str(tmp_path / "tmp"),
        # `--env-manager local` runs `python` from PATH: the one running these tests.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return tmp_path, MlflowClient(tracking_uri=uri), env


def _children() -> dict[int, list[int]]:
    """Every live process's children, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """The pids of ``pids`` that are still running (zombies, already dead, do not count)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _export_process_pids() -> set[int]:
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"steps/export_onnx.py" in cmdline.read_bytes():
                pids.add(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def _wait_for_export(proc: subprocess.Popen, tmp: Path, timeout: float = 600) -> set[int]:
    """Wait until the export writes its temporary folder; return the processes then under ``proc``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended ({proc.returncode}) before the export started:\n{err[-3000:]}")
        if list(tmp.glob("llmflow-export-*")):
            return _descendants(proc.pid) | {proc.pid}
        time.sleep(0.1)
    pytest.fail("the export did not start")


def _runs(client: MlflowClient, step: str) -> list:
    experiment = client.get_experiment_by_name("Default")
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_STEP}` = '{step}'",
        order_by=["attributes.start_time ASC"],
    )


def _wait_stopped(proc: subprocess.Popen, pids: set[int], timeout: float = 120) -> tuple[str, str, set[int]]:
    """Wait for ``proc`` to exit; return its output and which of ``pids`` still run 3 s later (time for whoever
    adopted an orphan to reap it). A cancelled command returns only once its step has stopped."""
    out, err = proc.communicate(timeout=timeout)
    deadline = time.monotonic() + 3
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return out, err, _alive(pids)


def test_ctrl_c_on_mlflow_run_main_stops_the_export_and_the_rerun_runs_it_again(project, slow_model, store):
    root, client, env = store
    command = [sys.executable, "-m", "mlflow", "run", str(project), "-e", "main", "--env-manager", "local"]
    # The rerun goes through evaluate: 2 short answers and 64 held-out tokens are enough to finish it.
    params = [f"model={slow_model}", f"registered_model_name={NAME}", "eval_max_heldout_tokens=64"]
    params += ["eval_max_questions=2", "eval_max_new_tokens=8"]
    command += [arg for param in params for arg in ("-P", param)]
    # A terminal job: its own process group, which Ctrl-C signals as a whole.
    proc = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    tree = _wait_for_export(proc, root / "tmp")
    export_pids = _export_process_pids() & tree
    assert export_pids, "the export runs under main"
    # What made Ctrl-C miss it: MLflow starts each step of main in a session of its own.
    assert {os.getpgid(pid) for pid in export_pids} != {proc.pid}

    os.killpg(proc.pid, signal.SIGINT)
    out, err, left = _wait_stopped(proc, tree)

    assert proc.returncode != 0
    assert left == set(), f"still running after `mlflow run` returned: {left}"
    [main] = _runs(client, "main")
    [export] = _runs(client, "export_onnx")
    assert export.info.status == "KILLED", f"{export.data.tags.get(TAG_ERROR)}\n{err[-6000:]}"
    # The step ends its own run on main's SIGTERM; if it has not within main's grace (a loaded machine), main kills
    # its group and records why itself.
    assert export.data.tags[TAG_ERROR] in ("cancelled by SIGTERM", "cancelled: main received SIGINT"), err[-3000:]
    # main ends its run KILLED; then `mlflow run` marks it FAILED over that: MLflow 3.17's _maybe_set_run_terminated
    # passes the status string to RunStatus.is_terminated, which compares ints, so it never sees a run as ended.
    assert main.info.status in ("KILLED", "FAILED"), err[-3000:]
    reason = main.data.tags[TAG_ERROR]
    assert reason.startswith("cancelled by SIGINT") and export.info.run_id in reason, reason
    assert f"error: main: cancelled by SIGINT: step 'export_onnx' (run {export.info.run_id}) stopped" in err
    assert list((root / "tmp").glob("llmflow-*")) == [], "the export's temporary folders are removed"

    rerun = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)

    assert rerun.returncode == 0, rerun.stderr[-4000:]
    exports = _runs(client, "export_onnx")
    assert [r.info.status for r in exports] == ["KILLED", "FINISHED"]
    assert len(_runs(client, "download")) == 1, "the finished download is reused"
    assert _runs(client, "main")[-1].info.status == "FINISHED"


def test_sigterm_to_a_step_run_alone_ends_its_run_killed_and_removes_its_files(project, slow_model, store):
    """As Databricks and Kubernetes cancel a task: SIGTERM to the step's own process."""
    root, client, env = store
    download = subprocess.run(
        [sys.executable, "steps/download.py", "--model", str(slow_model)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert download.returncode == 0, download.stderr[-3000:]
    [download_run] = _runs(client, "download")
    step = [sys.executable, "steps/export_onnx.py", "--download-run-id", download_run.info.run_id]
    proc = subprocess.Popen(
        step, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    tree = _wait_for_export(proc, root / "tmp")

    proc.send_signal(signal.SIGTERM)
    out, err, left = _wait_stopped(proc, tree)

    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert left == set(), f"still running after the step returned: {left}"
    assert "error: export_onnx: cancelled by SIGTERM" in err
    assert list((root / "tmp").glob("llmflow-*")) == []
    [export] = _runs(client, "export_onnx")
    assert (export.info.status, export.data.tags[TAG_ERROR]) == ("KILLED", "cancelled by SIGTERM")

"""Runs the chain's steps: each as its own ``mlflow run`` in a nested MLflow run, reusing a finished one unless
forced, and stopping a step's whole process tree when ``main`` is cancelled.

``main`` and ``reproduce`` both drive their steps with ``Runner``; ``ChainResult`` is what a run of the chain did
(each step's run id, which were reused, what was registered), which the summary prints.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.projects.submitted_run import LocalSubmittedRun

from llmflow import PROJECT_ROOT
from llmflow.chain.graph import ENTRY_POINTS
from llmflow.chain.reuse import find_reusable_run, upstream_key
from llmflow.errors import Cancelled, InputError, StepFailed
from llmflow.tracking.names import ENV_UPSTREAM, TAG_ERROR

logger = logging.getLogger(__name__)

# rerun_from names an entry point of the chain, "none", or "all" (download, and so everything after it).
RERUN_CHOICES = ("none", "all", *ENTRY_POINTS)
MLFLOW_LOGGING_LEVEL = "MLFLOW_LOGGING_LEVEL"


@dataclass
class ChainResult:
    run_id: str
    step_runs: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    registered: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class Runner:
    """Runs the chain's steps as nested MLflow runs, reusing finished ones unless forced."""

    experiment_id: str
    result: ChainResult
    forced: frozenset[str] = frozenset()

    def step(self, entry_point: str, parameters: dict[str, str], upstream: list[str], key: str | None = None) -> Run:
        """Run one entry point, or reuse an equal finished run; raise ``StepFailed`` naming a failed step."""
        key = key or entry_point
        if entry_point not in self.forced:
            reusable = find_reusable_run(self.experiment_id, entry_point, parameters, upstream)
            if reusable is not None:
                logger.info("reusing %s run %s", key, reusable.info.run_id)
                self.result.reused.append(key)
                self.result.step_runs[key] = reusable.info.run_id
                return reusable
        logger.info("running step %s %s", key, parameters)
        started = time.perf_counter()
        # The child records its upstream runs itself (runs.step_run reads this), so the record is there
        # from its first moment, whatever happens to it or to this process.
        os.environ[ENV_UPSTREAM] = upstream_key(upstream)
        try:
            with quiet_projects():
                submitted = mlflow.projects.run(
                    uri=str(PROJECT_ROOT),
                    entry_point=entry_point,
                    parameters=parameters,
                    env_manager="local",
                    experiment_id=self.experiment_id,
                    run_name=key,  # "download", "evaluate:onnx": what the UI's run tree shows
                    synchronous=False,
                )
                try:
                    ok = submitted.wait()
                except Cancelled as exc:
                    # The step runs in a session of its own: the signal that stops main does not reach it.
                    self.result.step_runs[key] = submitted.run_id
                    status = stop_step(MlflowClient(), submitted, f"cancelled: main received {exc.signal_name}")
                    raise Cancelled(exc.signum, f"step '{key}' (run {submitted.run_id}) stopped, {status}") from None
        finally:
            os.environ.pop(ENV_UPSTREAM, None)
        self.result.step_runs[key] = submitted.run_id
        client = MlflowClient()
        if not ok:
            end_abandoned_run(client, submitted)
            run = client.get_run(submitted.run_id)
            error = run.data.tags.get(TAG_ERROR, "see the step's log above")
            raise StepFailed(f"step '{key}' failed (run {submitted.run_id}, {run.info.status}): {error}")
        logger.info("step %s succeeded in %.1f s, run %s", key, time.perf_counter() - started, submitted.run_id)
        return client.get_run(submitted.run_id)


@contextmanager
def quiet_projects() -> Iterator[None]:
    """Within this block MLflow logs warnings only, in this process and in the ``mlflow run`` processes it starts.

    Each step otherwise adds four INFO lines (launching, a temporary folder for 'path' parameters, the command,
    success) to the runner's two, and its MLflow calls more ("Active model is set ..."); the summary gives each
    step's run id and the command that reruns it. A user's own ``MLFLOW_LOGGING_LEVEL`` wins.
    """
    projects = logging.getLogger("mlflow.projects")
    level, chosen = projects.level, os.environ.get(MLFLOW_LOGGING_LEVEL)
    projects.setLevel(max(level, logging.WARNING))
    os.environ[MLFLOW_LOGGING_LEVEL] = chosen or "WARNING"
    try:
        yield
    finally:
        projects.setLevel(level)
        if chosen is None:
            os.environ.pop(MLFLOW_LOGGING_LEVEL, None)


def forced_steps(rerun_from: str) -> frozenset[str]:
    """The entry points ``rerun_from`` forces to run; the steps after them follow, as their inputs change."""
    if rerun_from not in RERUN_CHOICES:
        raise InputError(f"rerun_from '{rerun_from}' is not accepted; expected one of {', '.join(RERUN_CHOICES)}")
    if rerun_from == "none":
        return frozenset()
    return frozenset({"download" if rerun_from == "all" else rerun_from})


def end_abandoned_run(client: MlflowClient, submitted: LocalSubmittedRun) -> None:
    """Record why a step's run ended without the step recording an error itself (killed, crashed).

    A step killed by a signal cannot end its own run. MLflow's ``mlflow run`` process around it usually
    marks the run FAILED; if it is still RUNNING, it is marked KILLED here (the shell reports a signal as
    exit status 128 + its number), else FAILED. Either way it is never reused.
    """
    run = client.get_run(submitted.run_id)
    if TAG_ERROR in run.data.tags:
        return
    code = submitted.command_proc.returncode
    signalled = code is not None and (code < 0 or code > 128)
    client.set_tag(
        submitted.run_id,
        TAG_ERROR,
        f"the step's process ended (exit status {code}) without recording an error: it was killed or crashed",
    )
    if run.info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(submitted.run_id, "KILLED" if signalled else "FAILED")


# How long a step has to end its own run and clean up after SIGTERM before its process group gets SIGKILL.
STOP_GRACE_S = 15.0


def _group_gone(pgid: int) -> bool:
    """No live process is left in group ``pgid``. Zombies do not count: the step's orphans are reaped by whoever
    adopts them, and an init that is slow to reap (or none, in some containers) would otherwise look like a live step.
    Read from /proc where there is one; elsewhere a signal 0 to the group, which counts zombies."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while this was reading
        if int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def _reap_orphans() -> None:
    """As a container's PID 1 (``main`` on Kubernetes) this process inherits the step's orphans: reap them, or their
    zombies would keep the step's process group alive."""
    if os.getpid() != 1:
        return
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _wait_gone(submitted: LocalSubmittedRun, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        submitted.command_proc.poll()  # reaps the group's leader, whose zombie would count as alive
        _reap_orphans()
        if _group_gone(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def stop_step(client: MlflowClient, submitted: LocalSubmittedRun, reason: str, grace: float = STOP_GRACE_S) -> str:
    """Stop a running step's whole process tree and end its run KILLED with ``reason``; return the run's status.

    ``mlflow.projects.run(synchronous=False)`` starts the step's ``mlflow run`` process as the leader of a new
    session, with the step's own process (and whatever it starts) in that process group. So the group is the step's
    whole tree, and nothing sent to ``main`` reaches it by itself: a Ctrl-C in a terminal signals the terminal's
    group, and Kubernetes signals the container's first process. It gets SIGTERM (the step ends its run KILLED and
    removes its temporary folders, see ``llmflow.cli``), then SIGKILL for what is left after ``grace`` seconds.
    """
    proc = submitted.command_proc
    pgid = proc.pid
    try:
        leader = os.getpgid(pgid) == pgid
    except ProcessLookupError:
        leader = False
    if leader:
        os.killpg(pgid, signal.SIGTERM)
        if not _wait_gone(submitted, pgid, grace):
            logger.warning("step run %s did not stop within %.0f s of SIGTERM: killing it", submitted.run_id, grace)
            os.killpg(pgid, signal.SIGKILL)
            _wait_gone(submitted, pgid, 5.0)
    elif proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.poll()
    run = client.get_run(submitted.run_id)
    if not RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
        client.set_tag(submitted.run_id, TAG_ERROR, reason)
        client.set_terminated(submitted.run_id, "KILLED")
    elif TAG_ERROR not in run.data.tags:
        client.set_tag(submitted.run_id, TAG_ERROR, reason)
    return client.get_run(submitted.run_id).info.status

"""When ``main`` may reuse a finished step instead of running it again, and how it ends a step's abandoned run.

A finished step is reused only when all of these match (``find_reusable_run``): the entry point; its
parameters, normalised to strings; the digest of the code it runs (``llmflow.tracking.digest``); the ids
of its upstream runs; and what the step read from outside its parameters (``STILL_VALID``: the model
folder's content or the hub commit for download, the registry state for register and evaluate, the data
files for evaluate). Failed and killed runs are never reused.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.projects.submitted_run import LocalSubmittedRun

from llmflow.download import source_fingerprint
from llmflow.errors import InputError
from llmflow.evaluate import fingerprint_files
from llmflow.export.prebuilt import EXPORT, parse_onnx_source, resolve
from llmflow.tracking.digest import code_digest
from llmflow.tracking.names import (
    TAG_CODE_DIGEST,
    TAG_ERROR,
    TAG_EVALUATE_RUN,
    TAG_HF_SHA,
    TAG_ONNX_SOURCE_SHA,
    TAG_REGISTERED_VERSION,
    TAG_STEP,
    TAG_UPSTREAM,
    registry_tag,
)

logger = logging.getLogger(__name__)


def normalise(value: Any) -> str:
    """A parameter value as the string it is compared by: whole numbers without ".0" ("32.0" -> "32")."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def upstream_key(run_ids: list[str]) -> str:
    return ",".join(sorted(run_ids))


# Checks of what a step read from outside its parameters; each takes the candidate run and the step's
# parameters and says whether the run's result still holds. A check that cannot tell says no.
StillValid = Callable[[Run, dict[str, str]], bool]


def _download_still_valid(run: Run, params: dict[str, str]) -> bool:
    """The folder's content (or the hub revision's commit) is what the run recorded."""
    current = source_fingerprint(params["model"], params["revision"], os.environ.get("HF_TOKEN") or None)
    return current is not None and current == run.data.tags.get(TAG_HF_SHA)


def _export_still_valid(run: Run, params: dict[str, str]) -> bool:
    """An export holds; a prebuilt ``onnx_source`` still resolves to the commit (or folder content) it recorded."""
    value = params.get("onnx_source", EXPORT)
    if value == EXPORT:
        return True
    try:
        current = resolve(parse_onnx_source(value), os.environ.get("HF_TOKEN") or None)
    except Exception:  # noqa: BLE001 - any failure means "cannot tell", and then the step runs
        logger.info("could not resolve onnx_source %s now; export_onnx will run", value)
        return False
    return current == run.data.tags.get(TAG_ONNX_SOURCE_SHA)


def _register_still_valid(run: Run, params: dict[str, str]) -> bool:
    """The version it registered still exists, from the same model (``evaluate`` is given that version's number, so
    it does not matter where ``challenger`` points now)."""
    tags = run.data.tags
    name, version = params["registered_model_name"], tags.get(TAG_REGISTERED_VERSION)
    try:
        model_version = MlflowClient().get_model_version(name, version)
    except MlflowException:
        return False
    return params["model_uri"] in (model_version.source, f"models:/{getattr(model_version, 'model_id', '')}")


def _evaluate_still_valid(run: Run, params: dict[str, str]) -> bool:
    """It is the latest evaluation recorded on its version, and the data files have not changed."""
    tags = run.data.tags
    name, version = params["registered_model_name"], tags.get(TAG_REGISTERED_VERSION)
    try:
        recorded = registry_tag(MlflowClient().get_model_version(name, version).tags, TAG_EVALUATE_RUN)
    except MlflowException:
        return False
    try:
        current = fingerprint_files(params["qa_path"], params["heldout_path"])
    except InputError:
        return False
    return recorded == run.info.run_id and all(tags.get(key) == value for key, value in current.items())


STILL_VALID: dict[str, StillValid] = {
    "download": _download_still_valid,
    "export_onnx": _export_still_valid,
    "register": _register_still_valid,
    "evaluate": _evaluate_still_valid,
}


def find_reusable_run(
    experiment_id: str, entry_point: str, parameters: dict[str, str], upstream: list[str]
) -> Run | None:
    """The newest FINISHED run of ``entry_point`` that may stand in for running it now, or None.

    It must have the same code digest and upstream runs, equal parameters after ``normalise``, and pass
    the step's ``STILL_VALID`` check.
    """
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STEP}` = '{entry_point}' and attributes.status = 'FINISHED' "
        f"and tags.`{TAG_CODE_DIGEST}` = '{code_digest(entry_point)}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    wanted = {k: normalise(v) for k, v in parameters.items()}
    for run in runs:
        stored = {k: normalise(v) for k, v in run.data.params.items()}
        if any(stored.get(k) != v for k, v in wanted.items()):
            continue
        if run.data.tags.get(TAG_UPSTREAM, "") != upstream_key(upstream):
            continue
        check = STILL_VALID.get(entry_point)
        if check is None or check(run, parameters):
            return run
    return None


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

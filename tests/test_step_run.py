"""A step cancelled by a signal records it on its run even when the signal lands inside an MLflow store call.

Raised there, the ``Cancelled`` left the call's SQLite cursor alive in the traceback's frames, holding the database's
shared lock: the step's own write of its KILLED status then failed with "database is locked" and the step exited 1
(CI, ``test_cancel``). The handler now waits for the store call to return (``llmflow.cli.DEFERRED_IN``).
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from sqlalchemy import event
from sqlalchemy.orm import loading

from llmflow import cli
from llmflow.errors import Cancelled, cancellation_in
from llmflow.tracking.names import TAG_ERROR
from llmflow.tracking.runs import step_run

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)


@pytest.fixture
def step_handlers() -> Iterator[None]:
    """The step's signal handlers, as ``run_step`` installs them; pytest's own are put back afterwards."""
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    cli.cancel_on_signals()
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig, handler in before.items():
        signal.signal(sig, handler)


def _wait_for_the_signal(seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def _cancelled_during_a_read(arm: dict[str, bool]) -> tuple[mlflow.entities.Run, BaseException]:
    with pytest.raises(Cancelled) as info, step_run("export_onnx", {"precision": "int4"}) as run:
        arm["on"] = True
        mlflow.get_run(run.info.run_id)  # the signal arrives inside this read
        _wait_for_the_signal()  # and is raised at the first moment outside it
    return run, info.value


def _assert_killed_and_raised_outside_the_store(run: mlflow.entities.Run, cancelled: BaseException) -> None:
    ended = mlflow.get_run(run.info.run_id)
    assert (ended.info.status, ended.data.tags[TAG_ERROR]) == ("KILLED", "cancelled by SIGTERM")
    where = traceback.extract_tb(cancelled.__traceback__)
    assert not any("sqlalchemy" in frame.filename for frame in where), [f.name for f in where]


def test_a_signal_between_a_query_and_its_fetch_waits_for_the_read(tracking_uri: str, step_handlers: None):
    engine = mlflow.tracking._tracking_service.utils._get_store().engine
    arm = {"on": False}

    def signal_after_a_select(conn, cursor, statement, *args) -> None:
        if arm["on"] and statement.lstrip().upper().startswith("SELECT"):
            arm["on"] = False
            os.kill(os.getpid(), signal.SIGTERM)

    event.listen(engine, "after_cursor_execute", signal_after_a_select)
    try:
        run, cancelled = _cancelled_during_a_read(arm)
    finally:
        event.remove(engine, "after_cursor_execute", signal_after_a_select)
    _assert_killed_and_raised_outside_the_store(run, cancelled)


def test_a_signal_while_rows_are_loaded_waits_for_the_read(
    tracking_uri: str, step_handlers: None, monkeypatch: pytest.MonkeyPatch
):
    """Where CI's run of test_cancel was hit: inside the ORM's row loading, with the cursor half read."""
    arm = {"on": False}
    real = loading._instance_processor

    def signal_while_loading(*args, **kwargs):
        if arm["on"]:
            arm["on"] = False
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "_instance_processor", signal_while_loading)
    run, cancelled = _cancelled_during_a_read(arm)
    _assert_killed_and_raised_outside_the_store(run, cancelled)


def test_outside_a_store_call_the_signal_is_raised_at_once(step_handlers: None):
    with pytest.raises(Cancelled) as info:
        os.kill(os.getpid(), signal.SIGINT)
        _wait_for_the_signal()
    assert info.value.signal_name == "SIGINT"
    assert not cli.in_store_call(None)


def test_a_signal_while_a_temporary_folder_is_removed_waits_for_the_removal(
    tmp_path, step_handlers: None, monkeypatch: pytest.MonkeyPatch
):
    """A SIGTERM that landed in ``TemporaryDirectory``'s clean-up left the folder half removed (seen in test_cancel:
    a ``llmflow-config-*`` folder of the export's memory check stayed behind)."""
    real_rmdir = os.rmdir
    sent = []

    def signal_then_rmdir(path, *args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", signal_then_rmdir)
    with pytest.raises(Cancelled):
        with tempfile.TemporaryDirectory(dir=tmp_path, prefix="llmflow-") as folder:
            for name in ("a", "b", "c"):
                (Path(folder) / name).mkdir()
        _wait_for_the_signal()
    assert sent and list(tmp_path.iterdir()) == []


def test_a_signal_during_an_artifact_download_waits_for_the_download(
    tmp_path, tracking_uri: str, step_handlers: None, monkeypatch: pytest.MonkeyPatch
):
    """CI's test_cancel: the signal was raised in the thread that waited for MLflow's download pool, whose workers
    went on writing into the step's temporary folder while its clean-up removed it; rmtree failed ("Directory not
    empty"), and that OSError, not the cancellation, reached the run, which ended FAILED with the folder left behind.
    Here each file's copy starts once the clean-up, had it started, would be removing its folder."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with mlflow.start_run() as source:
        for name in ("config.json", "tokenizer.json", "generation_config.json"):
            mlflow.log_text("{}", f"model/{name}")
    real_download, real_rmdir = LocalArtifactRepository._download_file, os.rmdir
    sent = []

    def signal_then_copy(self, remote_file_path, local_path):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        return real_download(self, remote_file_path, local_path)

    def slow_rmdir(path, *args, **kwargs):
        time.sleep(0.4)  # a loaded machine: a copy lands between the listing of a folder and its removal
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(LocalArtifactRepository, "_download_file", signal_then_copy)
    monkeypatch.setattr(os, "rmdir", slow_rmdir)
    with pytest.raises(Cancelled), step_run("export_onnx", {"precision": "int4"}) as run:
        with tempfile.TemporaryDirectory(dir=scratch, prefix="llmflow-config-") as folder:
            mlflow.artifacts.download_artifacts(run_id=source.info.run_id, artifact_path="model", dst_path=folder)
            assert sorted(p.name for p in (Path(folder) / "model").iterdir()) == [
                "config.json",
                "generation_config.json",
                "tokenizer.json",
            ]
            _wait_for_the_signal()
    assert sent and list(scratch.iterdir()) == []
    ended = mlflow.get_run(run.info.run_id)
    assert (ended.info.status, ended.data.tags[TAG_ERROR]) == ("KILLED", "cancelled by SIGTERM")


def test_a_clean_up_that_fails_after_the_signal_still_ends_the_run_killed(tracking_uri: str):
    """Whatever a clean-up raises on the way out of a cancelled step, the run records the cancellation."""
    with pytest.raises(OSError) as info, step_run("export_onnx", {"precision": "int4"}) as run:
        try:
            raise Cancelled(signal.SIGTERM)
        finally:
            raise OSError(39, "Directory not empty")
    assert cancellation_in(info.value).signal_name == "SIGTERM"
    ended = mlflow.get_run(run.info.run_id)
    assert (ended.info.status, ended.data.tags[TAG_ERROR]) == ("KILLED", "cancelled by SIGTERM")


def test_an_error_without_a_signal_behind_it_is_no_cancellation():
    try:
        try:
            raise ValueError("first")
        except ValueError:
            raise OSError("second") from None
    except OSError as exc:
        assert cancellation_in(exc) is None

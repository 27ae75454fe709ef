"""``step_run`` records a cancelled step on its run even when the signal lands inside an MLflow read."""

from __future__ import annotations

import signal

import mlflow
import pytest
from sqlalchemy import event

from llmflow.errors import Cancelled
from llmflow.tracking.names import TAG_ERROR
from llmflow.tracking.runs import step_run


def test_a_signal_inside_a_read_still_ends_the_run_killed(tracking_uri: str):
    """SIGTERM between a query and its fetch once left an open SQLite cursor in the traceback's frames: the step's
    own write of the KILLED status then failed with "database is locked" (CI, test_cancel) and the step exited 1."""
    engine = mlflow.tracking._tracking_service.utils._get_store().engine
    armed = []

    def cancel_after_a_select(conn, cursor, statement, *args) -> None:
        if armed and statement.lstrip().upper().startswith("SELECT"):
            armed.clear()
            raise Cancelled(signal.SIGTERM)  # as the step's handler does, mid-read

    event.listen(engine, "after_cursor_execute", cancel_after_a_select)
    try:
        with pytest.raises(Cancelled), step_run("export_onnx", {"precision": "int4"}) as run:
            armed.append(True)
            mlflow.get_run(run.info.run_id)
    finally:
        event.remove(engine, "after_cursor_execute", cancel_after_a_select)

    ended = mlflow.get_run(run.info.run_id)
    assert (ended.info.status, ended.data.tags[TAG_ERROR]) == ("KILLED", "cancelled by SIGTERM")

"""The decision lock on a registered model: one holder at a time, a lapsed lease is taken over, a lost lock moves
nothing. Against a real SQLite registry, with a short settle time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from llmflow.errors import PipelineError
from llmflow.evaluation.promotion import Lease, LockLost, check_lock_held, decision_lock
from llmflow.tracking.names import TAG_DECISION_LOCK, registry_key

NAME = "locked"


@pytest.fixture
def client(tmp_path: Path, _empty_store: Path) -> MlflowClient:
    import shutil

    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client


def test_two_holders_never_overlap(client: MlflowClient):
    inside, overlaps, order = [0], [], []
    lock = threading.Lock()

    def decide(owner: str) -> None:
        with decision_lock(client, NAME, owner, settle=0.3):
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
            order.append(owner)
            time.sleep(0.5)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=decide, args=(f"run-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sorted(order) == ["run-0", "run-1", "run-2"]
    assert max(overlaps) == 1, "two evaluations decided at once"
    assert Lease.read(client, NAME) is None, "the last holder removes the lock"


def test_a_lapsed_lease_is_taken_over_and_its_holder_moves_nothing(client: MlflowClient):
    key = registry_key(TAG_DECISION_LOCK)
    client.set_registered_model_tag(NAME, key, f"killed-run {time.time() - 1:.3f}")  # a holder killed mid-decision

    with decision_lock(client, NAME, "next-run", settle=0.1):
        assert Lease.read(client, NAME).owner == "next-run"
        check_lock_held(client, NAME, "next-run")
        with pytest.raises(LockLost, match=r"passed to evaluate run 'next-run' before run 'killed-run' moved"):
            check_lock_held(client, NAME, "killed-run")


def test_a_live_lease_is_waited_for_and_named_when_it_never_ends(client: MlflowClient):
    key = registry_key(TAG_DECISION_LOCK)
    client.set_registered_model_tag(NAME, key, f"busy-run {time.time() + 600:.3f}")

    with pytest.raises(PipelineError, match=r"decision lock is still held by evaluate run 'busy-run' after 2 s"):
        with decision_lock(client, NAME, "late-run", settle=0.1, wait=2):
            pass
    assert Lease.read(client, NAME).owner == "busy-run", "a waiting run never overwrites a live lease"

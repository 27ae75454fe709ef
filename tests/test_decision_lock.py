"""The decision lock on a registered model (Lamport's bakery over tags): one holder at a time, in ticket order, a
lapsed entry is passed over and removed, a lost lease moves nothing. Against a real SQLite registry."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from llmflow.errors import PipelineError
from llmflow.evaluation.promotion import LockLost, check_lock_held, contenders, decision_lock
from llmflow.tracking.names import TAG_DECISION_LOCK, registry_key

NAME = "locked"


@pytest.fixture
def client(tmp_path: Path, _empty_store: Path) -> MlflowClient:
    shutil.copyfile(_empty_store, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)
    return client


def _entry(client: MlflowClient, owner: str, value: str) -> None:
    client.set_registered_model_tag(NAME, registry_key(f"{TAG_DECISION_LOCK}.{owner}"), value)


def test_contenders_never_overlap(client: MlflowClient):
    inside, most, order, errors = [0], [0], [], []
    count = threading.Lock()

    def decide(owner: str) -> None:
        try:
            with decision_lock(client, NAME, owner):
                with count:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                order.append(owner)
                time.sleep(0.3)
                with count:
                    inside[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread that raised it
            errors.append((owner, repr(exc)))

    threads = [threading.Thread(target=decide, args=(f"run-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert errors == []
    assert sorted(order) == ["run-0", "run-1", "run-2"]
    assert most[0] == 1, "two evaluations decided at once"
    assert contenders(client, NAME) == {}, "every entry is removed on the way out"


def test_a_smaller_ticket_or_one_choosing_is_waited_for(client: MlflowClient):
    _entry(client, "early", f"1 {time.time() + 600:.3f}")
    with pytest.raises(PipelineError, match=r"evaluate run 'early' still holds or awaits the decision lock after 1 s"):
        with decision_lock(client, NAME, "late", wait=1):
            pass
    _entry(client, "early", f"choosing {time.time() + 600:.3f}")
    with pytest.raises(PipelineError, match=r"evaluate run 'early' still holds or awaits"):
        with decision_lock(client, NAME, "late", wait=1):
            pass
    assert set(contenders(client, NAME)) == {"early"}, "a waiting run leaves no entry behind"


def test_a_lapsed_entry_is_passed_over_and_removed(client: MlflowClient):
    _entry(client, "killed", f"1 {time.time() - 1:.3f}")  # a contender killed mid-decision

    with decision_lock(client, NAME, "next"):
        assert set(contenders(client, NAME)) == {"next"}
        check_lock_held(client, NAME, "next")


def test_a_lease_that_ran_out_moves_nothing(client: MlflowClient):
    with decision_lock(client, NAME, "slow", lease=0.5):
        time.sleep(0.6)
        with pytest.raises(LockLost, match=r"decision lease of evaluate run 'slow' ran out before it moved"):
            check_lock_held(client, NAME, "slow")

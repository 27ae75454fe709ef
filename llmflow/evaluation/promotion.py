"""Alias moves in the Model Registry: promotion after the gate, and rollback.

The order is the contract: ``champion`` always names a version that has been evaluated.

- ``record_decision`` writes the decision to the evaluate run, then to the version, and moves aliases last:
  ``previous`` to the champion being replaced first, then ``champion`` in one call; ``challenger`` leaves the
  version once it is judged.
- ``decision_lock`` serialises decisions on one registered model. MLflow has no compare-and-set on aliases, so two
  evaluations that end together (a scheduled job and a person's ``main``) would each read the same champion and
  each move it. The lock is a tag on the registered model, ``llmflow.decision_lock`` = ``<run id> <lease end>``:
  an evaluation writes it only when no other live lease is there, waits ``SETTLE_S``, and holds it only if it
  reads its own value back (of two writers that both saw it free, the later write wins and the earlier backs
  off). Under the lock it re-reads the champion, and judges again when the champion moved while it was scoring;
  it re-reads the lock before the first alias move. The guarantee: decisions on one model do not interleave as
  long as a writer's read-then-write of the tag takes less than ``SETTLE_S`` (milliseconds, against 2 s) and a
  holder finishes within its lease (``LEASE_S``; a killed holder's lease lapses and the next evaluation goes on).
- ``roll_back`` moves ``champion`` back to ``previous``, tags the version it leaves, and moves ``previous``
  one promotion further back (or removes it), so repeated rollbacks walk back in order.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError, PipelineError
from llmflow.evaluation.gate import Champion, GateDecision
from llmflow.tracking.names import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    TAG_CRITERION_PREFIX,
    TAG_DECISION,
    TAG_DECISION_LOCK,
    TAG_DECISION_REASON,
    TAG_EVALUATE_RUN,
    TAG_PREVIOUS_CHAMPION,
    TAG_ROLLED_BACK,
    TAG_VALIDATION_STATUS,
    registry_key,
    registry_tag,
)

logger = logging.getLogger(__name__)

PASSED, FAILED = "passed", "failed"
LEASE_S = 600.0  # longer than any decision takes (a re-scored champion is scored outside the lock)
SETTLE_S = 2.0
WAIT_S = 3600.0


class LockLost(PipelineError):
    """The decision lock was taken over (its lease ran out) before the aliases moved."""


@dataclass(frozen=True)
class Lease:
    owner: str
    until: float

    @classmethod
    def read(cls, client: MlflowClient, name: str) -> Lease | None:
        value = (client.get_registered_model(name).tags or {}).get(registry_key(TAG_DECISION_LOCK), "")
        owner, _, until = value.partition(" ")
        try:
            return cls(owner, float(until)) if owner else None
        except ValueError:
            return None

    def live(self) -> bool:
        return self.until > time.time()


@contextmanager
def decision_lock(
    client: MlflowClient, name: str, owner: str, lease: float = LEASE_S, settle: float = SETTLE_S, wait: float = WAIT_S
) -> Iterator[None]:
    """Hold the decision lock of registered model ``name`` for the block; see the module's docstring."""
    key = registry_key(TAG_DECISION_LOCK)
    deadline, told = time.monotonic() + wait, False
    while True:
        holder = Lease.read(client, name)
        if holder is None or not holder.live() or holder.owner == owner:
            client.set_registered_model_tag(name, key, f"{owner} {time.time() + lease:.3f}")
            time.sleep(settle)
            holder = Lease.read(client, name)
            if holder is not None and holder.owner == owner:
                break
        if time.monotonic() > deadline:
            raise PipelineError(
                f"registered model '{name}': the decision lock is still held by evaluate run "
                f"'{holder.owner if holder else '?'}' after {wait:.0f} s; if that run is gone, delete tag '{key}'"
            )
        if not told:
            logger.info(
                "registered model %s: waiting for evaluate run %s to decide first", name, holder and holder.owner
            )
            told = True
        time.sleep(1.0 + secrets.randbelow(1000) / 1000)
    try:
        yield
    finally:
        holder = Lease.read(client, name)
        if holder is not None and holder.owner == owner:
            client.delete_registered_model_tag(name, key)


def check_lock_held(client: MlflowClient, name: str, owner: str) -> None:
    """Re-read the lock before an alias moves: ``LockLost`` when another evaluation holds it now."""
    holder = Lease.read(client, name)
    if holder is None or holder.owner != owner:
        raise LockLost(
            f"registered model '{name}': the decision lock passed to evaluate run "
            f"'{holder.owner if holder else 'none'}' before run '{owner}' moved the aliases; nothing was moved"
        )


@dataclass(frozen=True)
class Rollback:
    restored: str
    replaced: str | None
    previous: str | None


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """The run tags of a decision: its outcome, its reason and one tag per criterion with its figures."""
    return {
        TAG_DECISION: decision.decision,
        TAG_DECISION_REASON: decision.reason,
        **{
            f"{TAG_CRITERION_PREFIX}{n:02d}": f"{'pass' if c.passed else 'FAIL'}: {c.name}: {c.detail}"
            for n, c in enumerate(decision.criteria, start=1)
        },
    }


def record_decision(
    client: MlflowClient,
    name: str,
    version: str,
    run_id: str,
    champion: Champion | None,
    decision: GateDecision,
    description: str,
) -> None:
    """Write the decision to the active run, then the version (short tags, the report as its description);
    move aliases last, and take ``challenger`` off the version now judged. The reason and the criteria are long, so
    on the version they are in the description. Call it holding ``decision_lock`` (owner ``run_id``)."""
    mlflow.log_metric("promoted", float(decision.passed))
    mlflow.set_tags(decision_tags(decision))
    client.update_model_version(name, version, description=description)
    version_tags = {TAG_VALIDATION_STATUS: PASSED if decision.passed else FAILED, TAG_EVALUATE_RUN: run_id}
    replaced = champion.version if decision.passed and champion and champion.version != version else None
    if replaced:
        version_tags[TAG_PREVIOUS_CHAMPION] = replaced
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, registry_key(key), value)
    check_lock_held(client, name, run_id)
    if decision.passed:
        promote_alias(client, name, version, replaced)
    aliases = client.get_registered_model(name).aliases or {}
    if str(aliases.get(CHALLENGER)) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)


def promote_alias(client: MlflowClient, name: str, version: str, replaced: str | None) -> None:
    """``previous`` to the replaced champion (if any), then ``champion`` to ``version`` in one call."""
    if replaced:
        client.set_registered_model_alias(name, PREVIOUS, replaced)
    client.set_registered_model_alias(name, CHAMPION, version)


def roll_back(client: MlflowClient, name: str, run_id: str) -> Rollback:
    """Move ``champion`` of ``name`` to its ``previous`` version; ``InputError`` when there is none."""
    try:
        aliases = {alias: str(v) for alias, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        raise InputError(
            f"registered model '{name}' not found in tracking store '{mlflow.get_tracking_uri()}'"
        ) from None
    if PREVIOUS not in aliases:
        raise InputError(
            f"registered model '{name}' has no '{PREVIOUS}' alias (aliases: {sorted(aliases) or 'none'}); "
            "there is no earlier champion to roll back to"
        )
    restored, replaced = aliases[PREVIOUS], aliases.get(CHAMPION)
    before = registry_tag(client.get_model_version(name, restored).tags, TAG_PREVIOUS_CHAMPION)
    if replaced:
        client.set_model_version_tag(name, replaced, registry_key(TAG_ROLLED_BACK), run_id)
    client.set_registered_model_alias(name, CHAMPION, restored)
    if before:
        client.set_registered_model_alias(name, PREVIOUS, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    return Rollback(restored, replaced, before)

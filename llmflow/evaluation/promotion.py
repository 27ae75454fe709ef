"""Alias moves in the Model Registry: promotion after the gate, and rollback.

The order is the contract: ``champion`` always names a version that has been evaluated.

- ``record_decision`` writes the decision to the evaluate run, then to the version, and moves aliases last:
  ``previous`` to the champion being replaced first, then ``champion`` in one call; ``challenger`` leaves the
  version once it is judged.
- ``decision_lock`` serialises decisions on one registered model. MLflow has no compare-and-set on aliases, so two
  evaluations that end together (a scheduled job and a person's ``main``) would each read the same champion and
  each move it. The lock is Lamport's bakery algorithm over registered-model tags, one per contender
  (``llmflow_decision_lock_<run id>``): a contender writes ``choosing``, then a ticket one above every ticket it
  sees, and enters once no live contender is choosing or holds a smaller (ticket, run id). Reads and writes of
  the registry are all it needs, with no timing assumption. Each entry carries a lease end: a killed contender's
  entry lapses (``LEASE_S``) and is removed by the next one. Under the lock an evaluation re-reads the champion,
  judges again when it moved while it was scoring, and checks its own lease before the first alias move.
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
from llmflow.tracking.registry import missing_model

logger = logging.getLogger(__name__)

PASSED, FAILED = "passed", "failed"
LEASE_S = 600.0  # longer than any decision takes (a re-scored champion is scored outside the lock)
WAIT_S = 3600.0
POLL_S = 0.5
CHOOSING = "choosing"


class LockLost(PipelineError):
    """A contender's lease ran out before the aliases moved: another evaluation may hold the lock now."""


@dataclass(frozen=True)
class Contender:
    """One evaluation's entry in the bakery: its ticket (None while it is choosing one) and its lease end."""

    owner: str
    ticket: int | None
    until: float

    def live(self) -> bool:
        return self.until > time.time()


def _lock_key(owner: str) -> str:
    return registry_key(f"{TAG_DECISION_LOCK}.{owner}")


def contenders(client: MlflowClient, name: str) -> dict[str, Contender]:
    """The entries of the decision lock on registered model ``name``, by owner (evaluate run id)."""
    prefix = _lock_key("")
    found = {}
    for key, value in (client.get_registered_model(name).tags or {}).items():
        if not key.startswith(prefix):
            continue
        ticket, _, until = value.partition(" ")
        try:
            entry = Contender(key[len(prefix) :], None if ticket == CHOOSING else int(ticket), float(until))
        except ValueError:
            continue
        found[entry.owner] = entry
    return found


@contextmanager
def decision_lock(
    client: MlflowClient, name: str, owner: str, lease: float = LEASE_S, wait: float = WAIT_S
) -> Iterator[None]:
    """Hold the decision lock of registered model ``name`` for the block; see the module's docstring."""
    key, until = _lock_key(owner), f"{time.time() + lease:.3f}"
    owner = key[len(_lock_key("")) :]  # as the registry spells it in the tag's key (Unity Catalog's characters)
    client.set_registered_model_tag(name, key, f"{CHOOSING} {until}")
    others = {o: c for o, c in contenders(client, name).items() if o != owner}
    for lapsed in [c for c in others.values() if not c.live()]:
        client.delete_registered_model_tag(name, _lock_key(lapsed.owner))
    ticket = 1 + max((c.ticket or 0 for c in others.values() if c.live()), default=0)
    client.set_registered_model_tag(name, key, f"{ticket} {until}")
    deadline, told = time.monotonic() + wait, False
    try:
        while True:
            ahead = [
                c
                for o, c in contenders(client, name).items()
                if o != owner and c.live() and (c.ticket is None or (c.ticket, o) < (ticket, owner))
            ]
            if not ahead:
                break
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"registered model '{name}': evaluate run '{ahead[0].owner}' still holds or awaits the decision "
                    f"lock after {wait:.0f} s; if that run is gone, delete tag '{_lock_key(ahead[0].owner)}'"
                )
            if not told:
                logger.info("registered model %s: waiting for evaluate run %s to decide first", name, ahead[0].owner)
                told = True
            time.sleep(POLL_S + secrets.randbelow(500) / 1000)
        yield
    finally:
        try:
            client.delete_registered_model_tag(name, key)
        except MlflowException:
            logger.warning("registered model %s: could not remove decision lock entry %s", name, key)


def check_lock_held(client: MlflowClient, name: str, owner: str) -> None:
    """Before an alias moves: ``LockLost`` unless ``owner``'s entry is there and its lease still runs."""
    mine = contenders(client, name).get(_lock_key(owner)[len(_lock_key("")) :])
    if mine is None or not mine.live():
        raise LockLost(
            f"registered model '{name}': the decision lease of evaluate run '{owner}' "
            f"{'is gone' if mine is None else 'ran out'} before it moved the aliases; nothing was moved"
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
        raise missing_model(client, name) from None
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

"""Alias moves in the Model Registry: promotion after the gate, and rollback.

The order is the contract: ``champion`` always names a version that has been evaluated.

- ``record_decision`` writes the decision to the evaluate run, then to the version, and moves aliases last:
  ``previous`` to the champion being replaced first, then ``champion`` in one call.
- ``roll_back`` moves ``champion`` back to ``previous``, tags the version it leaves, and moves ``previous``
  one promotion further back (or removes it), so repeated rollbacks walk back in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError
from llmflow.evaluation.gate import Champion, GateDecision
from llmflow.tracking.names import (
    CHAMPION,
    PREVIOUS,
    TAG_CRITERION_PREFIX,
    TAG_DECISION,
    TAG_DECISION_REASON,
    TAG_EVALUATE_RUN,
    TAG_PREVIOUS_CHAMPION,
    TAG_ROLLED_BACK,
    TAG_VALIDATION_STATUS,
    registry_key,
    registry_tag,
)

PASSED, FAILED = "passed", "failed"


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
    move aliases last. The reason and the criteria are long, so on the version they are in the description."""
    mlflow.log_metric("promoted", float(decision.passed))
    mlflow.set_tags(decision_tags(decision))
    client.update_model_version(name, version, description=description)
    version_tags = {TAG_VALIDATION_STATUS: PASSED if decision.passed else FAILED, TAG_EVALUATE_RUN: run_id}
    replaced = champion.version if decision.passed and champion and champion.version != version else None
    if replaced:
        version_tags[TAG_PREVIOUS_CHAMPION] = replaced
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, registry_key(key), value)
    if decision.passed:
        promote_alias(client, name, version, replaced)


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

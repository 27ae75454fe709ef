"""Entry point ``rollback``: put ``champion`` back on the version it replaced.

``evaluate`` gives the champion it replaces alias ``previous`` and records it on the new champion's
version (tag ``llmflow.previous_champion``). Rolling back moves ``champion`` to ``previous`` in one
call, tags the version it leaves, and moves ``previous`` one step further back (to the version the
restored champion had replaced), or removes it when there is none, so repeated rollbacks walk back
through the promotions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError
from llmflow.options import StepOptions, non_empty, option
from llmflow.tracking.names import (
    CHAMPION,
    PREVIOUS,
    TAG_PREVIOUS_CHAMPION,
    TAG_REGISTERED_NAME,
    TAG_REPLACED_VERSION,
    TAG_RESTORED_VERSION,
    TAG_ROLLED_BACK,
)
from llmflow.tracking.runs import step_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackResult:
    run_id: str
    restored: str
    replaced: str | None
    previous: str | None


@dataclass(frozen=True, kw_only=True)
class RollbackOptions(StepOptions):
    """Move 'champion' back to the version it replaced (alias 'previous')."""

    registered_model_name: str = option(help="Registered model whose champion is rolled back.", check=non_empty)


def rollback(options: RollbackOptions) -> RollbackResult:
    """Move ``champion`` of ``options.registered_model_name`` to its ``previous`` version."""
    name = options.registered_model_name
    with step_run("rollback", options) as run:
        client = MlflowClient()
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
        before = client.get_model_version(name, restored).tags.get(TAG_PREVIOUS_CHAMPION)
        if replaced:
            client.set_model_version_tag(name, replaced, TAG_ROLLED_BACK, run.info.run_id)
        client.set_registered_model_alias(name, CHAMPION, restored)
        if before:
            client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: name,
                TAG_RESTORED_VERSION: restored,
                TAG_REPLACED_VERSION: replaced or "none",
            }
        )
        logger.info("%s: champion moved from version %s back to version %s", name, replaced, restored)
        print(f"{name}: champion is version {restored} again (was {replaced}); previous: {before or 'none'}")
        return RollbackResult(run.info.run_id, restored, replaced, before)

"""Entry point ``rollback``: put ``champion`` back on the version it replaced.

``evaluate`` gives the champion it replaces alias ``previous`` and records it on the new champion's
version (tag ``llmflow.previous_champion``). Rolling back moves ``champion`` to ``previous`` in one
call, tags the version it leaves, and moves ``previous`` one step further back (to the version the
restored champion had replaced), or removes it when there is none, so repeated rollbacks walk back
through the promotions. The alias moves are ``llmflow.evaluation.promotion``'s, shared with ``evaluate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from llmflow.evaluation.promotion import roll_back
from llmflow.options import StepOptions, non_empty, option
from llmflow.tracking.names import TAG_REGISTERED_NAME, TAG_REPLACED_VERSION, TAG_RESTORED_VERSION
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
        moved = roll_back(MlflowClient(), name, run.info.run_id)
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: name,
                TAG_RESTORED_VERSION: moved.restored,
                TAG_REPLACED_VERSION: moved.replaced or "none",
            }
        )
        logger.info("%s: champion moved from version %s back to version %s", name, moved.replaced, moved.restored)
        print(
            f"{name}: champion is version {moved.restored} again (was {moved.replaced}); "
            f"previous: {moved.previous or 'none'}"
        )
        return RollbackResult(run.info.run_id, moved.restored, moved.replaced, moved.previous)

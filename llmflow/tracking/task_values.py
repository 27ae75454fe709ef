"""Task values: how a step hands its run id and model URI to the next task of a Databricks job.

A Databricks multi-task job passes values between tasks with ``dbutils.jobs.taskValues.set(key, value)``
in one task and ``{{tasks.<task_key>.values.<key>}}`` in a later task's parameters. Every step publishes
the scalar fields of its result (``run_id``, ``model_uri``, ``version`` ...) this way, through
:func:`publish`, which ``llmflow.cli.run_step`` calls after the step returns. Where it runs decides what
publishing means:

- **On Databricks** (``DATABRICKS_RUNTIME_VERSION`` is set): ``dbutils.jobs.taskValues.set``, from
  ``databricks.sdk.runtime``, which the runtime ships.
- **Elsewhere, with** ``LLMFLOW_TASK_VALUES_FILE`` **set**: the values are written to that file as one JSON
  object. This is the shim that ``deploy/databricks/local_job.py`` uses to run the bundle's task graph on
  one machine: it gives each task its own file and fills the later tasks' ``{{tasks.*.values.*}}`` from
  it. It stands in for the Jobs service, not for anything the step does: the step calls the same
  :func:`publish` in both places.
- **Otherwise** (``mlflow run``, ``python steps/<x>.py`` on a laptop): nothing is published.

A serverless task cannot set environment variables, so it cannot put ``HF_TOKEN`` in its environment from
a secret reference as a job cluster does; :func:`hf_token_from_secret` reads it from the secret scope
there instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ON_DATABRICKS = "DATABRICKS_RUNTIME_VERSION"
ENV_TASK_VALUES_FILE = "LLMFLOW_TASK_VALUES_FILE"
# "<scope>/<key>" of the Hugging Face token's secret; the default is the scope the README creates.
ENV_HF_TOKEN_SECRET = "LLMFLOW_HF_TOKEN_SECRET"
DEFAULT_HF_TOKEN_SECRET = "llmflow/hf_token"
SCALARS = (str, int, float, bool)


def on_databricks() -> bool:
    return ON_DATABRICKS in os.environ


def values_of(result: object) -> dict[str, str | int | float | bool]:
    """The scalar fields of a step's result dataclass: ids, URIs, names, flags. Paths and tables are left out.

    A ``Path`` names a folder on the machine that ran the step, which a later task cannot read.
    """
    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        return {}
    return {
        field.name: value
        for field in dataclasses.fields(result)
        if isinstance(value := getattr(result, field.name), SCALARS)
    }


def _dbutils() -> Any:
    from databricks.sdk.runtime import dbutils  # only on a Databricks runtime

    return dbutils


def publish(result: object) -> dict[str, Any]:
    """Publish the scalar fields of ``result`` as task values where a job can read them; return them."""
    values = values_of(result)
    if not values:
        return values
    if on_databricks():
        task_values = _dbutils().jobs.taskValues
        for key, value in values.items():
            task_values.set(key=key, value=value)
        logger.info("task values set: %s", ", ".join(values))
    elif path := os.environ.get(ENV_TASK_VALUES_FILE):
        Path(path).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        logger.info("task values written to %s: %s", path, ", ".join(values))
    return values


def hf_token_from_secret() -> None:
    """On Databricks with no ``HF_TOKEN`` in the environment, read it from the secret scope (serverless tasks).

    A missing scope or key is not an error: public models such as Phi-3 need no token.
    """
    if not on_databricks() or os.environ.get("HF_TOKEN"):
        return
    scope, _, key = os.environ.get(ENV_HF_TOKEN_SECRET, DEFAULT_HF_TOKEN_SECRET).partition("/")
    try:
        os.environ["HF_TOKEN"] = _dbutils().secrets.get(scope=scope, key=key)
    except Exception as exc:  # noqa: BLE001 - dbutils raises its own exception types; no token is a valid state
        logger.info("no Hugging Face token in secret %s/%s (%s); going on without", scope, key, type(exc).__name__)

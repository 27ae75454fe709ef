"""Step ``register``: register a logged model in the Model Registry and point ``challenger`` at it.

Reads a logged model URI (``models:/<model_id>``) and a registered model name. Writes a model version
tagged with its lineage (the logging run, upstream download and export runs, HF repo and commit sha,
precision, execution provider, the project's git commit) and sets alias ``challenger`` on it.
Registering the same logged model again finds its existing version instead of creating a second one.
``champion`` is never touched here: only ``evaluate`` moves it.

The version is made from the ``models:/<model_id>`` URI, so it is linked to its LoggedModel: its source
names the model, and the model's ``mlflow.modelVersions`` tag names the version (MLflow 3.17's SQL registry
keeps no ``ModelVersion.model_id``; ``llmflow.tracking.model_cards.version_model_id`` reads the link). A new
registered model gets a description: what the model is, where it came from and how to serve it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError
from llmflow.options import StepOptions, option
from llmflow.tracking.model_cards import lineage_section, registered_model_description
from llmflow.tracking.names import (
    CHALLENGER,
    FREEZE_ARTIFACT,
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_EXPORT_RUN,
    TAG_GIT_CLEAN,
    TAG_GIT_COMMIT,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_LOGGED_BY_STEP,
    TAG_ONNX_SOURCE,
    TAG_PRECISION,
    TAG_REGISTERED_NAME,
    TAG_REGISTERED_VERSION,
    TAG_SEED,
    TAG_SOURCE_RUN,
    TAG_STEP,
    TAG_VERSION_CREATED,
)
from llmflow.tracking.registry import check_registered_model_name
from llmflow.tracking.runs import step_run
from llmflow.tracking.unity_catalog import uc_tags

logger = logging.getLogger(__name__)

LINEAGE_TAGS = (
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_PRECISION,
    TAG_EXECUTION_PROVIDER,
    TAG_DOWNLOAD_RUN,
    TAG_EXPORT_RUN,
    TAG_ONNX_SOURCE,
)
MODEL_URI_PATTERN = re.compile(r"^models:/(m-[0-9a-f]+)$")


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    name: str
    version: str
    created: bool


@dataclass(frozen=True, kw_only=True)
class RegisterOptions(StepOptions):
    """Register a logged model once, tag its lineage and alias it 'challenger'."""

    model_uri: str = option(help="Logged model URI (models:/m-<id>) written by log_pyfunc or log_transformers.")
    registered_model_name: str = option(
        help="Name of the registered model in the Model Registry.", check=check_registered_model_name
    )


def lineage(model_uri: str) -> tuple[dict[str, str], dict[str, str]]:
    """A new version's lineage, read from the run that logged ``model_uri`` and its upstream tags: the tags that
    people and the steps filter on, and the details that go into its description."""
    match = MODEL_URI_PATTERN.match(model_uri)
    if not match:
        raise InputError(f"model URI '{model_uri}' is not a logged model URI; expected models:/m-<id> from a log step")
    try:
        logged = mlflow.get_logged_model(match.group(1))
    except MlflowException:
        raise InputError(
            f"logged model '{model_uri}' not found in tracking store '{mlflow.get_tracking_uri()}'"
        ) from None
    source_run = mlflow.get_run(logged.source_run_id)
    run_tags = source_run.data.tags
    tags = {key: run_tags[key] for key in LINEAGE_TAGS if key in run_tags}
    tags.update(
        {
            TAG_SOURCE_RUN: logged.source_run_id,
            TAG_LOGGED_BY_STEP: run_tags.get(TAG_STEP, "unknown"),
            TAG_GIT_COMMIT: run_tags.get(TAG_GIT_COMMIT, "unknown"),
        }
    )
    details = {
        "logged model": logged.model_id,
        "logged by": f"{run_tags.get(TAG_STEP, 'unknown')} run {logged.source_run_id}",
        "git commit": run_tags.get(TAG_GIT_COMMIT, "unknown"),
        "git tree clean": run_tags.get(TAG_GIT_CLEAN, "unknown"),
        "seed": run_tags.get(TAG_SEED, "unknown"),
        # The resolved environment the model was logged in (pip freeze format).
        "environment": f"runs:/{logged.source_run_id}/{FREEZE_ARTIFACT}",
    }
    return tags, details


def find_version(client: MlflowClient, name: str, model_uri: str) -> ModelVersion | None:
    """The existing version of ``name`` made from ``model_uri``, if any."""
    model_id = model_uri.removeprefix("models:/")
    for version in client.search_model_versions(f"name='{name}'"):
        if version.source == model_uri or getattr(version, "model_id", None) == model_id:
            return version
    return None


def register(options: RegisterOptions) -> RegisterResult:
    """Register ``options.model_uri`` as a version of ``registered_model_name`` (once) and alias it ``challenger``."""
    model_uri, registered_model_name = options.model_uri, options.registered_model_name
    with step_run("register", options) as run:
        tags, details = lineage(model_uri)
        client = MlflowClient()
        version = find_version(client, registered_model_name, model_uri)
        created = version is None
        if created:
            # One call creates the version with all its tags, so a failure leaves no half-tagged version.
            # (A failure before the description below leaves a tagged version without it; a re-run keeps it.)
            # The version's tags in the form every registry takes (Unity Catalog: no `.` in keys, values of at
            # most 1,000 characters); a value that had to be cut is kept whole in the description.
            fitted = uc_tags(tags)
            version = mlflow.register_model(model_uri, registered_model_name, tags=fitted.tags)
            # Until evaluate writes its report above it, the description is the lineage alone.
            description = lineage_section({**details, **fitted.cut})
            client.update_model_version(registered_model_name, version.version, description=description)
            # (MLflow prints "Created version N of model ..." itself.)
            description = registered_model_description(registered_model_name, tags, tags[TAG_LOGGED_BY_STEP])
            client.update_registered_model(registered_model_name, description=description)
        else:
            logger.info("%s is already version %s of %s", model_uri, version.version, registered_model_name)
        client.set_registered_model_alias(registered_model_name, CHALLENGER, version.version)
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: registered_model_name,
                TAG_REGISTERED_VERSION: version.version,
                TAG_VERSION_CREATED: str(created).lower(),
            }
        )
        return RegisterResult(run.info.run_id, registered_model_name, str(version.version), created)

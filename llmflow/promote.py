"""Entry point ``promote``: copy ``models:/<name>@champion`` into another registry (or name) as its champion.

Reads the version behind ``champion`` of ``registered_model_name`` in this project's registry
(``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``). It refuses a version whose ``validation_status`` is
not ``passed``. Writes, in the target registry (``target_registry_uri``, e.g. a production tracking server
or ``databricks-uc``) under ``target_name``:

- a new version with the same lineage tags and description (the evaluation report), plus
  ``llmflow.promoted_from`` (the source registry without credentials, name and version);
- alias ``champion`` on it (the champion it replaces there gets ``previous``, as ``evaluate`` does);
- the registered model's description, when the target has none.

Within one registry it calls MLflow's ``copy_model_version``. Between registries, where that call cannot
reach the source, it downloads the model and logs it as a LoggedModel of the target's tracking store
(experiment ``llmflow-promoted``, same name and params), then registers it from ``models:/<model_id>``.
An ONNX model logged with ``onnx_storage=reference`` points to its export run, which the target cannot read: its
ONNX folder is fetched into the copy, which then holds it (``onnx_storage`` ``copy`` in the copy's params).
Promoting the same version again reuses its copy and only moves the aliases.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError
from llmflow.evaluation.promotion import PASSED, promote_alias
from llmflow.options import StepOptions, non_empty, option
from llmflow.tracking.model_cards import version_model_id
from llmflow.tracking.names import (
    CHAMPION,
    TAG_PROMOTE_TARGET,
    TAG_PROMOTED_FROM,
    TAG_REGISTERED_NAME,
    TAG_REGISTERED_VERSION,
    TAG_VALIDATION_STATUS,
    registry_key,
    registry_tag,
)
from llmflow.tracking.registry import check_registered_model_name, missing_model
from llmflow.tracking.runs import step_run
from llmflow.tracking.unity_catalog import is_three_level, uc_tags

logger = logging.getLogger(__name__)

# The target registry's own tracking store, where it is not the registry URI itself.
TRACKING_OF_REGISTRY = {"databricks-uc": "databricks"}
TARGET_EXPERIMENT = "llmflow-promoted"
UNITY_CATALOG = "databricks-uc"
SAME = "same"  # target_registry_uri: this project's own registry


@dataclass(frozen=True, kw_only=True)
class PromoteOptions(StepOptions):
    """Copy models:/<name>@champion into another registry (or under another name) and make it champion there."""

    registered_model_name: str = option(
        help="Registered model whose 'champion' is promoted.", check=check_registered_model_name
    )
    target_registry_uri: str = option(
        SAME,
        help="Target registry: a tracking server URL, a database URI, 'databricks-uc', or 'same' (this one). "
        "Give credentials through the environment (MLFLOW_TRACKING_USERNAME/PASSWORD, DATABRICKS_TOKEN), "
        "never inside the URI: MLflow records parameters.",
        check=non_empty,
    )
    target_name: str = option(
        help="Registered model name in the target, e.g. 'phi3-prod' or 'catalog.schema.model' for Unity Catalog.",
        check=check_registered_model_name,
    )


@dataclass(frozen=True)
class PromoteResult:
    run_id: str
    source_version: str
    target_registry_uri: str
    target_name: str
    target_version: str
    copied: bool


def redact(uri: str) -> str:
    """``uri`` without a user name or password, so it can be written into tags."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def champion_version(client: MlflowClient, name: str) -> ModelVersion:
    """The version behind ``champion``; ``InputError`` unless it exists and passed its evaluation."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        try:
            client.get_registered_model(name)
        except MlflowException:
            raise missing_model(client, name, where=f"registry '{redact(mlflow.get_registry_uri())}'") from None
        raise InputError(
            f"registered model '{name}' has no '{CHAMPION}' alias in registry '{redact(mlflow.get_registry_uri())}'; "
            "expected a model whose champion passed evaluate"
        ) from None
    status = version.tags.get(TAG_VALIDATION_STATUS)
    if status != PASSED:
        raise InputError(
            f"version {version.version} of '{name}' has validation_status {status!r}; only a version whose "
            f"validation_status is '{PASSED}' is promoted"
        )
    return version


def target_card(registry: str, target_name: str, tags: dict[str, str], description: str) -> tuple[dict, str]:
    """The tags and description as the target registry takes them: Unity Catalog allows no ``.`` in tag keys
    and 1,000 characters per value, so there the keys use ``_`` and a cut value is written in full into the
    description."""
    if registry != UNITY_CATALOG:
        return tags, description
    if not is_three_level(target_name):
        raise InputError(
            f"target_name '{target_name}' is not accepted for {UNITY_CATALOG}; expected catalog.schema.model"
        )
    fitted = uc_tags(tags)
    extra = "".join(f"\n\n**{key}**: {value}" for key, value in fitted.cut.items())
    return fitted.tags, (description or "") + extra


def _existing_copy(target: MlflowClient, target_name: str, origin: str) -> ModelVersion | None:
    try:
        versions = target.search_model_versions(f"name='{target_name}'")
    except MlflowException:
        return None
    return next((v for v in versions if registry_tag(v.tags, TAG_PROMOTED_FROM) == origin), None)


def _copy_across(
    source: ModelVersion,
    target: MlflowClient,
    tracking_uri: str,
    target_name: str,
    card: tuple[dict[str, str], str],
    origin: str,
) -> ModelVersion:
    """Log the source version's files as a LoggedModel of the target's store and register it there."""
    model_id = version_model_id(source)
    logged = mlflow.get_logged_model(model_id) if model_id else None
    experiment = target.get_experiment_by_name(TARGET_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else target.create_experiment(TARGET_EXPERIMENT)
    with tempfile.TemporaryDirectory(prefix="llmflow-promote-") as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{source.name}/{source.version}", dst_path=tmp)
        params = dict(logged.params) if logged else None
        if include_referenced_onnx(Path(local)) and params is not None:
            params["onnx_storage"] = "copy"
        copy = target.create_logged_model(
            experiment_id,
            name=logged.name if logged else target_name.replace(".", "-"),
            params=params,
            tags={TAG_PROMOTED_FROM: origin},
        )
        target.log_model_artifacts(copy.model_id, local)
    target.finalize_logged_model(copy.model_id, LoggedModelStatus.READY)
    try:
        target.create_registered_model(target_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # An in-process SQL registry resolves a models:/ source through the *global* tracking URI (MLflow 3.17's
    # own TODO in SqlAlchemyStore.create_model_version), so point it at the target for this one call.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return target.create_model_version(
            target_name,
            source=f"models:/{copy.model_id}",
            tags=card[0],
            description=card[1],
            model_id=copy.model_id,
        )
    finally:
        mlflow.set_tracking_uri(previous)


def include_referenced_onnx(model_dir: Path) -> bool:
    """Fetch the ONNX folder of a model logged with ``onnx_storage=reference`` into ``model_dir``; False if none.

    The folder becomes the model's ``onnx`` artifact, as ``onnx_storage=copy`` logs it, and ``onnx_uri`` leaves the
    model config, so the copy loads wherever it is (``OnnxChatModel.load_context`` reads either form).
    """
    from mlflow.models import Model

    mlmodel = Model.load(model_dir / "MLmodel")
    pyfunc = mlmodel.flavors.get("python_function", {})
    config = pyfunc.get("config") or {}
    uri = config.get("onnx_uri")
    if not uri:
        return False
    (model_dir / "artifacts").mkdir(exist_ok=True)
    fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(model_dir / "artifacts")))
    pyfunc["artifacts"] = {"onnx": {"path": fetched.relative_to(model_dir).as_posix(), "uri": uri}}
    pyfunc["config"] = {key: value for key, value in config.items() if key != "onnx_uri"}
    mlmodel.save(model_dir / "MLmodel")
    logger.info("promote: %s copied into the promoted model (it was logged with onnx_storage=reference)", uri)
    return True


def promote(options: PromoteOptions) -> PromoteResult:
    """Copy ``models:/<registered_model_name>@champion`` to ``target_name`` in ``target_registry_uri``."""
    registered_model_name, target_name = options.registered_model_name, options.target_name
    target_registry_uri = options.target_registry_uri.strip()
    # What this step records never holds a password, even if the URI was given one.
    recorded = dataclasses.replace(options, target_registry_uri=redact(target_registry_uri))
    with step_run("promote", recorded) as run:
        source = MlflowClient()
        version = champion_version(source, registered_model_name)
        same = target_registry_uri.lower() == SAME or target_registry_uri == mlflow.get_registry_uri()
        registry = mlflow.get_registry_uri() if same else target_registry_uri
        if same and target_name == registered_model_name:
            raise InputError(
                f"target_name '{target_name}' is the source itself; expected another name or another registry"
            )
        tracking_uri = TRACKING_OF_REGISTRY.get(registry, registry)
        target = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry)
        origin = f"{redact(mlflow.get_registry_uri())}#models:/{registered_model_name}/{version.version}"
        copy = _existing_copy(target, target_name, origin)
        copied = copy is None
        if copied and same:
            copy = source.copy_model_version(f"models:/{registered_model_name}/{version.version}", target_name)
            target.set_model_version_tag(target_name, copy.version, registry_key(TAG_PROMOTED_FROM), origin)
        elif copied:
            card = target_card(
                registry,
                target_name,
                {**version.tags, registry_key(TAG_PROMOTED_FROM): origin},
                version.description or "",
            )
            copy = _copy_across(version, target, tracking_uri, target_name, card, origin)
        described = target.get_registered_model(target_name).description
        if not described:
            own = source.get_registered_model(registered_model_name).description
            if own:
                target.update_registered_model(target_name, description=own)
        replaced = (target.get_registered_model(target_name).aliases or {}).get(CHAMPION)
        replaced = str(replaced) if replaced is not None and str(replaced) != str(copy.version) else None
        promote_alias(target, target_name, str(copy.version), replaced)
        where = f"{redact(registry)}#models:/{target_name}/{copy.version}"
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: registered_model_name,
                TAG_REGISTERED_VERSION: str(version.version),
                TAG_PROMOTE_TARGET: where,
            }
        )
        logger.info("promoted %s version %s to %s", registered_model_name, version.version, where)
        print(
            f"{registered_model_name} version {version.version} -> {where} ({'copied' if copied else 'already there'})"
            f"; alias {CHAMPION} set there"
        )
        return PromoteResult(
            run.info.run_id, str(version.version), redact(registry), target_name, str(copy.version), copied
        )

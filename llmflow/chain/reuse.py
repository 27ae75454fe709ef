"""When ``main`` may reuse a finished step instead of running it again.

A finished step is reused only when all of these match (``find_reusable_run``): the entry point; its
parameters, normalised to strings; the digest of the code it runs (``llmflow.tracking.digest``); the ids
of its upstream runs; and what the step read from outside its parameters (``STILL_VALID``: the model
folder's content or the hub commit for download, the registry state for register and evaluate, the data
files for evaluate). Failed and killed runs are never reused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError
from llmflow.evaluation.inputs import fingerprint_files
from llmflow.export.prebuilt import EXPORT, parse_onnx_source, resolve
from llmflow.options import BOOLEANS, param_text
from llmflow.sources.hub import source_fingerprint
from llmflow.tracking.digest import code_digest
from llmflow.tracking.names import (
    TAG_CODE_DIGEST,
    TAG_EVALUATE_RUN,
    TAG_HF_SHA,
    TAG_ONNX_SOURCE_SHA,
    TAG_REGISTERED_VERSION,
    TAG_STEP,
    TAG_UPSTREAM,
    registry_tag,
)

logger = logging.getLogger(__name__)


def normalise(value: Any) -> str:
    """A parameter value as the string it is compared by: whole numbers without ".0" ("32.0" -> "32"), bools in
    lower case."""
    text = param_text(value).strip()
    if text.lower() in BOOLEANS:
        return text.lower()  # a bool parameter: -P save_pretrained=True and the default "true" are one value
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def upstream_key(run_ids: list[str]) -> str:
    return ",".join(sorted(run_ids))


# Checks of what a step read from outside its parameters; each takes the candidate run and the step's
# parameters and says whether the run's result still holds. A check that cannot tell says no.
StillValid = Callable[[Run, dict[str, str]], bool]


def _download_still_valid(run: Run, params: dict[str, str]) -> bool:
    """The folder's content (or the hub revision's commit) is what the run recorded."""
    current = source_fingerprint(params["model"], params["revision"], os.environ.get("HF_TOKEN") or None)
    return current is not None and current == run.data.tags.get(TAG_HF_SHA)


def _export_still_valid(run: Run, params: dict[str, str]) -> bool:
    """An export holds; a prebuilt ``onnx_source`` still resolves to the commit (or folder content) it recorded."""
    value = params.get("onnx_source", EXPORT)
    if value == EXPORT:
        return True
    try:
        current = resolve(parse_onnx_source(value), os.environ.get("HF_TOKEN") or None)
    except Exception:  # noqa: BLE001 - any failure means "cannot tell", and then the step runs
        logger.info("could not resolve onnx_source %s now; export_onnx will run", value)
        return False
    return current == run.data.tags.get(TAG_ONNX_SOURCE_SHA)


def _register_still_valid(run: Run, params: dict[str, str]) -> bool:
    """The version it registered still exists, from the same model (``evaluate`` is given that version's number, so
    it does not matter where ``challenger`` points now)."""
    tags = run.data.tags
    name, version = params["registered_model_name"], tags.get(TAG_REGISTERED_VERSION)
    try:
        model_version = MlflowClient().get_model_version(name, version)
    except MlflowException:
        return False
    return params["model_uri"] in (model_version.source, f"models:/{getattr(model_version, 'model_id', '')}")


def _evaluate_still_valid(run: Run, params: dict[str, str]) -> bool:
    """It is the latest evaluation recorded on its version, and the data files have not changed."""
    tags = run.data.tags
    name, version = params["registered_model_name"], tags.get(TAG_REGISTERED_VERSION)
    try:
        recorded = registry_tag(MlflowClient().get_model_version(name, version).tags, TAG_EVALUATE_RUN)
    except MlflowException:
        return False
    try:
        current = fingerprint_files(params["qa_path"], params["heldout_path"])
    except InputError:
        return False
    return recorded == run.info.run_id and all(tags.get(key) == value for key, value in current.items())


STILL_VALID: dict[str, StillValid] = {
    "download": _download_still_valid,
    "export_onnx": _export_still_valid,
    "register": _register_still_valid,
    "evaluate": _evaluate_still_valid,
}


def find_reusable_run(
    experiment_id: str, entry_point: str, parameters: dict[str, str], upstream: list[str]
) -> Run | None:
    """The newest FINISHED run of ``entry_point`` that may stand in for running it now, or None.

    It must have the same code digest and upstream runs, equal parameters after ``normalise``, and pass
    the step's ``STILL_VALID`` check.
    """
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STEP}` = '{entry_point}' and attributes.status = 'FINISHED' "
        f"and tags.`{TAG_CODE_DIGEST}` = '{code_digest(entry_point)}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    wanted = {k: normalise(v) for k, v in parameters.items()}
    for run in runs:
        stored = {k: normalise(v) for k, v in run.data.params.items()}
        if any(stored.get(k) != v for k, v in wanted.items()):
            continue
        if run.data.tags.get(TAG_UPSTREAM, "") != upstream_key(upstream):
            continue
        check = STILL_VALID.get(entry_point)
        if check is None or check(run, parameters):
            return run
    return None

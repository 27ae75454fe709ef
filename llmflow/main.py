"""Entry point ``main``: run the whole chain with ``mlflow.run``, each step in its own nested run.

Reads every parameter of the chain. Validates them all before any child run starts, then runs
download -> export_onnx -> log_pyfunc and download -> log_transformers, then register and evaluate
for each flavour (registered as ``<name>-onnx`` and ``<name>-transformers``). Steps receive only run
ids and ``models:/`` URIs. Prints a summary for a person at the end.

A finished step is reused, not run again, only when all of these match (see ``find_reusable_run``):
the entry point; its parameters, normalised to strings; the digest of the code it runs (its script,
the project modules it imports, its MLproject entry and the pinned environment, uncommitted edits
included); the ids of its upstream runs; and what the step read from outside its parameters (the
model folder's content or the hub commit for download, the registry state for register and evaluate,
the data files for evaluate). Failed and killed runs are never reused. ``rerun_from`` forces one step
(and so, through the new run ids, everything after it) to run again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.projects.submitted_run import LocalSubmittedRun

from llmflow import PROJECT_ROOT
from llmflow.download import is_local_reference, source_fingerprint
from llmflow.errors import InputError, StepFailed
from llmflow.evaluate import TAG_EVALUATE_RUN, fingerprint_files, validate_evaluate_options
from llmflow.export_onnx import validate_export_options
from llmflow.log_transformers import validate_max_new_tokens
from llmflow.register import validate_registered_model_name
from llmflow.tracking.digest import code_digest
from llmflow.tracking.names import (
    ENV_UPSTREAM,
    TAG_CODE_DIGEST,
    TAG_ERROR,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_REGISTERED_VERSION,
    TAG_REUSED_STEPS,
    TAG_STEP,
    TAG_STEP_RUN_PREFIX,
    TAG_UPSTREAM,
)
from llmflow.tracking.runs import step_run
from llmflow.tracking.summary import print_summary

logger = logging.getLogger(__name__)

FLAVOURS = {"onnx": "log_pyfunc", "transformers": "log_transformers"}
# The chain in the order it runs; rerun_from names one of these (or "none", or "all" for download).
CHAIN = ("download", "export_onnx", "log_pyfunc", "log_transformers", "register", "evaluate")
RERUN_CHOICES = ("none", "all", *CHAIN)


@dataclass
class ChainResult:
    run_id: str
    step_runs: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    registered: dict[str, tuple[str, str]] = field(default_factory=dict)


def normalise(value: Any) -> str:
    """A parameter value as the string it is compared by: whole numbers without ".0" ("32.0" -> "32")."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def _upstream_key(run_ids: list[str]) -> str:
    return ",".join(sorted(run_ids))


# Checks of what a step read from outside its parameters; each takes the candidate run and the step's
# parameters and says whether the run's result still holds. A check that cannot tell says no.
StillValid = Callable[[Run, dict[str, str]], bool]


def _download_still_valid(run: Run, params: dict[str, str]) -> bool:
    """The folder's content (or the hub revision's commit) is what the run recorded."""
    current = source_fingerprint(params["model"], params["revision"], os.environ.get("HF_TOKEN") or None)
    return current is not None and current == run.data.tags.get(TAG_HF_SHA)


def _register_still_valid(run: Run, params: dict[str, str]) -> bool:
    """The version it registered still exists, from the same model, and is still the challenger."""
    tags = run.data.tags
    name, version = params["registered_model_name"], tags.get(TAG_REGISTERED_VERSION)
    client = MlflowClient()
    try:
        model_version = client.get_model_version(name, version)
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException:
        return False
    same_model = params["model_uri"] in (model_version.source, f"models:/{getattr(model_version, 'model_id', '')}")
    return same_model and str(aliases.get("challenger")) == str(version)


def _evaluate_still_valid(run: Run, params: dict[str, str]) -> bool:
    """It is the latest evaluation recorded on its version, and the data files have not changed."""
    tags = run.data.tags
    name, version = params["registered_model_name"], tags.get(TAG_REGISTERED_VERSION)
    try:
        recorded = MlflowClient().get_model_version(name, version).tags.get(TAG_EVALUATE_RUN)
    except MlflowException:
        return False
    try:
        current = fingerprint_files(params["qa_path"], params["heldout_path"])
    except InputError:
        return False
    return recorded == run.info.run_id and all(tags.get(key) == value for key, value in current.items())


STILL_VALID: dict[str, StillValid] = {
    "download": _download_still_valid,
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
        if run.data.tags.get(TAG_UPSTREAM, "") != _upstream_key(upstream):
            continue
        check = STILL_VALID.get(entry_point)
        if check is None or check(run, parameters):
            return run
    return None


def _end_abandoned_run(client: MlflowClient, submitted: LocalSubmittedRun) -> None:
    """Record why a step's run ended without the step recording an error itself (killed, crashed).

    A step killed by a signal cannot end its own run. MLflow's ``mlflow run`` process around it usually
    marks the run FAILED; if it is still RUNNING, it is marked KILLED here (the shell reports a signal as
    exit status 128 + its number), else FAILED. Either way it is never reused.
    """
    run = client.get_run(submitted.run_id)
    if TAG_ERROR in run.data.tags:
        return
    code = submitted.command_proc.returncode
    signalled = code is not None and (code < 0 or code > 128)
    client.set_tag(
        submitted.run_id,
        TAG_ERROR,
        f"the step's process ended (exit status {code}) without recording an error: it was killed or crashed",
    )
    if run.info.status in ("RUNNING", "SCHEDULED"):
        client.set_terminated(submitted.run_id, "KILLED" if signalled else "FAILED")


@dataclass
class Runner:
    """Runs the chain's steps as nested MLflow runs, reusing finished ones unless forced."""

    experiment_id: str
    result: ChainResult
    forced: frozenset[str] = frozenset()

    def step(self, entry_point: str, parameters: dict[str, str], upstream: list[str], key: str | None = None) -> Run:
        """Run one entry point, or reuse an equal finished run; raise ``StepFailed`` naming a failed step."""
        key = key or entry_point
        if entry_point not in self.forced:
            reusable = find_reusable_run(self.experiment_id, entry_point, parameters, upstream)
            if reusable is not None:
                logger.info("reusing %s run %s", key, reusable.info.run_id)
                self.result.reused.append(key)
                self.result.step_runs[key] = reusable.info.run_id
                return reusable
        logger.info("running step %s %s", key, parameters)
        # The child records its upstream runs itself (runs.step_run reads this), so the record is there
        # from its first moment, whatever happens to it or to this process.
        os.environ[ENV_UPSTREAM] = _upstream_key(upstream)
        try:
            submitted = mlflow.projects.run(
                uri=str(PROJECT_ROOT),
                entry_point=entry_point,
                parameters=parameters,
                env_manager="local",
                experiment_id=self.experiment_id,
                synchronous=False,
            )
            ok = submitted.wait()
        finally:
            os.environ.pop(ENV_UPSTREAM, None)
        self.result.step_runs[key] = submitted.run_id
        client = MlflowClient()
        if not ok:
            _end_abandoned_run(client, submitted)
            run = client.get_run(submitted.run_id)
            error = run.data.tags.get(TAG_ERROR, "see the step's log above")
            raise StepFailed(f"step '{key}' failed (run {submitted.run_id}, {run.info.status}): {error}")
        return client.get_run(submitted.run_id)


def forced_steps(rerun_from: str) -> frozenset[str]:
    """The entry points ``rerun_from`` forces to run; the steps after them follow, as their inputs change."""
    if rerun_from not in RERUN_CHOICES:
        raise InputError(f"rerun_from '{rerun_from}' is not accepted; expected one of {', '.join(RERUN_CHOICES)}")
    if rerun_from == "none":
        return frozenset()
    return frozenset({"download" if rerun_from == "all" else rerun_from})


def validate_main_options(
    model: str,
    precision: str,
    execution_provider: str,
    int4_block_size: int,
    int4_accuracy_level: int,
    registered_model_name: str,
    max_new_tokens: int,
    qa_path: str,
    heldout_path: str,
    eval_max_new_tokens: int,
    gate_metrics: str,
    min_scores: str,
    champion_tolerance: float,
    min_quality_retained: float,
    max_perplexity_ratio: float,
    rerun_from: str,
) -> None:
    """Fail before any child run starts on every value that can be checked without the network."""
    if is_local_reference(model) and not Path(model).expanduser().is_dir():
        raise InputError(
            f"local model folder '{model}' not found; expected a folder saved with save_pretrained or a hub repo id"
        )
    validate_export_options(precision, execution_provider, int4_block_size, int4_accuracy_level)
    validate_registered_model_name(registered_model_name)
    validate_max_new_tokens(max_new_tokens)
    validate_evaluate_options(
        qa_path,
        heldout_path,
        eval_max_new_tokens,
        "none",
        gate_metrics,
        min_scores,
        champion_tolerance,
        min_quality_retained,
        max_perplexity_ratio,
    )
    forced_steps(rerun_from)


def run_chain(
    model: str,
    revision: str,
    precision: str,
    execution_provider: str,
    int4_block_size: int,
    int4_accuracy_level: int,
    registered_model_name: str,
    max_new_tokens: int,
    qa_path: str,
    heldout_path: str,
    eval_max_new_tokens: int,
    gate_metrics: str,
    min_scores: str,
    champion_tolerance: float,
    min_quality_retained: float,
    max_perplexity_ratio: float,
    rerun_from: str = "none",
) -> ChainResult:
    """Run the whole pipeline under this ``main`` run and print its summary."""
    options = dict(locals())
    with step_run("main", options) as parent:
        validate_main_options(**{k: v for k, v in options.items() if k != "revision"})
        return _chain(parent, options)


def _absolute(path: str) -> str:
    """Children run with the project root as working directory: hand them absolute paths of the caller's files."""
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def _chain(parent: Run, options: dict[str, Any]) -> ChainResult:
    """The chain itself, with ``options`` as validated by ``run_chain``."""
    model = _absolute(options["model"]) if is_local_reference(options["model"]) else options["model"]
    result = ChainResult(parent.info.run_id)
    runner = Runner(parent.info.experiment_id, result, forced_steps(options["rerun_from"]))
    download = runner.step("download", {"model": model, "revision": options["revision"]}, [])
    download_id = download.info.run_id
    export = runner.step(
        "export_onnx",
        {
            "download_run_id": download_id,
            "precision": options["precision"],
            "execution_provider": options["execution_provider"],
            "int4_block_size": normalise(options["int4_block_size"]),
            "int4_accuracy_level": normalise(options["int4_accuracy_level"]),
        },
        [download_id],
    )
    max_new_tokens = normalise(options["max_new_tokens"])
    logged = {
        "onnx": runner.step(
            "log_pyfunc",
            {"export_run_id": export.info.run_id, "max_new_tokens": max_new_tokens},
            [export.info.run_id],
        ),
        "transformers": runner.step(
            "log_transformers", {"download_run_id": download_id, "max_new_tokens": max_new_tokens}, [download_id]
        ),
    }
    # The ONNX model is judged against the transformers model of the same download run, its reference.
    references = {"onnx": logged["transformers"], "transformers": None}
    evaluation_options = {
        "qa_path": _absolute(options["qa_path"]),
        "heldout_path": _absolute(options["heldout_path"]),
        **{
            key: normalise(options[key])
            for key in (
                "eval_max_new_tokens",
                "gate_metrics",
                "min_scores",
                "champion_tolerance",
                "min_quality_retained",
                "max_perplexity_ratio",
            )
        },
    }
    for flavour, log_run in logged.items():
        name = f"{options['registered_model_name']}-{flavour}"
        register = runner.step(
            "register",
            {"model_uri": log_run.data.tags[TAG_MODEL_URI], "registered_model_name": name},
            [log_run.info.run_id],
            key=f"register:{flavour}",
        )
        reference = references[flavour]
        runner.step(
            "evaluate",
            {
                "registered_model_name": name,
                "reference_model_uri": reference.data.tags[TAG_MODEL_URI] if reference else "none",
                **evaluation_options,
            },
            [register.info.run_id] + ([reference.info.run_id] if reference else []),
            key=f"evaluate:{flavour}",
        )
        result.registered[flavour] = (name, register.data.tags[TAG_REGISTERED_VERSION])
    mlflow.set_tags(
        {
            **{f"{TAG_STEP_RUN_PREFIX}{step}": run_id for step, run_id in result.step_runs.items()},
            TAG_REUSED_STEPS: json.dumps(result.reused),
        }
    )
    print_summary(MlflowClient(), result)
    return result

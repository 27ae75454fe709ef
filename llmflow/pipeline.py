"""Entry point ``main``: run the whole chain with ``mlflow.run``, each step in its own nested run.

Reads every parameter of the chain. Validates them all before any child run starts, then runs
download -> export_onnx -> log_pyfunc and download -> log_transformers, then register and evaluate
for each flavour (registered as ``<name>-onnx`` and ``<name>-transformers``). Steps receive only run
ids and ``models:/`` URIs. A finished run of export_onnx, log_pyfunc or log_transformers with the same
parameters and the same code is reused; register and evaluate always run, as they act on the registry.
Prints a summary for a person at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.projects.submitted_run import SubmittedRun

from llmflow.download import is_local_reference
from llmflow.errors import InputError, StepFailed
from llmflow.evaluate import validate_evaluate_options
from llmflow.export_onnx import validate_export_options
from llmflow.log_transformers import validate_max_new_tokens
from llmflow.register import validate_registered_model_name
from llmflow.runs import (
    PROJECT_ROOT,
    TAG_CODE_DIGEST,
    TAG_ERROR,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_STEP,
    code_digest,
    step_run,
)
from llmflow.summary import print_summary

logger = logging.getLogger(__name__)

# download always runs: it is cheap, and only it can tell whether a folder or a branch changed.
REUSABLE_STEPS = frozenset({"export_onnx", "log_pyfunc", "log_transformers"})
FLAVOURS = {"onnx": "log_pyfunc", "transformers": "log_transformers"}


@dataclass
class ChainResult:
    run_id: str
    step_runs: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    registered: dict[str, tuple[str, str]] = field(default_factory=dict)


def _same_value(a: str, b: str) -> bool:
    """Parameters compare as numbers when both are numbers ("32" == "32.0"), else as strings."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def find_reusable_run(experiment_id: str, entry_point: str, parameters: dict[str, str]) -> Run | None:
    """The newest FINISHED run of ``entry_point`` with equal parameters and the same code digest."""
    if entry_point not in REUSABLE_STEPS:
        return None
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STEP}` = '{entry_point}' and attributes.status = 'FINISHED' "
        f"and tags.`{TAG_CODE_DIGEST}` = '{code_digest()}'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    for run in runs:
        stored = run.data.params
        if all(k in stored and _same_value(stored[k], v) for k, v in parameters.items()):
            return run
    return None


def canonical_download_run(experiment_id: str, run: Run) -> Run:
    """The oldest finished download run of the same content (repo and commit sha) and code.

    Downstream steps key their reuse on the download run id, so a second download of unchanged
    content hands on the first run's id, and the export and log steps made from it are reused.
    """
    tags = run.data.tags
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STEP}` = 'download' and attributes.status = 'FINISHED' "
        f"and tags.`{TAG_HF_REPO}` = '{tags[TAG_HF_REPO]}' and tags.`{TAG_HF_SHA}` = '{tags[TAG_HF_SHA]}' "
        f"and tags.`{TAG_CODE_DIGEST}` = '{tags[TAG_CODE_DIGEST]}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else run


def run_step(
    experiment_id: str, entry_point: str, parameters: dict[str, str], result: ChainResult, key: str | None = None
) -> Run:
    """Run one entry point as a nested MLflow run, or reuse an equal finished one; raise ``StepFailed``."""
    key = key or entry_point
    reusable = find_reusable_run(experiment_id, entry_point, parameters)
    if reusable is not None:
        logger.info("reusing %s run %s (same parameters and code)", entry_point, reusable.info.run_id)
        result.reused.append(key)
        result.step_runs[key] = reusable.info.run_id
        return reusable
    logger.info("running step %s %s", entry_point, parameters)
    submitted: SubmittedRun = mlflow.projects.run(
        uri=str(PROJECT_ROOT),
        entry_point=entry_point,
        parameters=parameters,
        env_manager="local",
        experiment_id=experiment_id,
        synchronous=False,
    )
    ok = submitted.wait()
    run = mlflow.get_run(submitted.run_id)
    result.step_runs[key] = submitted.run_id
    if not ok:
        error = run.data.tags.get(TAG_ERROR, "see the step's log above")
        raise StepFailed(f"step '{entry_point}' failed (run {submitted.run_id}): {error}")
    return run


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
) -> ChainResult:
    """Run the whole pipeline under this ``main`` run and print its summary."""
    options = dict(locals())
    with step_run("main", options) as parent:
        validate_main_options(**{k: v for k, v in options.items() if k != "revision"})
        return _chain(parent, options)


def _chain(parent: Run, options: dict[str, Any]) -> ChainResult:
    """The chain itself, with ``options`` as validated by ``run_chain``."""
    model = options["model"]
    if is_local_reference(model):
        # Children run with the project root as working directory: hand them an absolute path.
        model = str(Path(model).expanduser().resolve())
    data_paths = {}
    for key in ("qa_path", "heldout_path"):
        path = options[key]
        data_paths[key] = str(Path(path).resolve()) if not Path(path).is_absolute() and Path(path).exists() else path
    experiment_id = parent.info.experiment_id
    result = ChainResult(parent.info.run_id)
    download_run = run_step(experiment_id, "download", {"model": model, "revision": options["revision"]}, result)
    download_id = canonical_download_run(experiment_id, download_run).info.run_id
    export_params = {
        "download_run_id": download_id,
        "precision": options["precision"],
        "execution_provider": options["execution_provider"],
        "int4_block_size": str(options["int4_block_size"]),
        "int4_accuracy_level": str(options["int4_accuracy_level"]),
    }
    export_run = run_step(experiment_id, "export_onnx", export_params, result)
    logged = {
        "onnx": run_step(
            experiment_id,
            "log_pyfunc",
            {"export_run_id": export_run.info.run_id, "max_new_tokens": str(options["max_new_tokens"])},
            result,
        ),
        "transformers": run_step(
            experiment_id,
            "log_transformers",
            {"download_run_id": download_id, "max_new_tokens": str(options["max_new_tokens"])},
            result,
        ),
    }
    # The ONNX model is judged against the transformers model of the same download run, its reference.
    references = {"onnx": logged["transformers"].data.tags[TAG_MODEL_URI], "transformers": "none"}
    evaluation_options = {
        **data_paths,
        **{
            key: str(options[key])
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
        register_run = run_step(
            experiment_id,
            "register",
            {"model_uri": log_run.data.tags[TAG_MODEL_URI], "registered_model_name": name},
            result,
            key=f"register:{flavour}",
        )
        run_step(
            experiment_id,
            "evaluate",
            {"registered_model_name": name, "reference_model_uri": references[flavour], **evaluation_options},
            result,
            key=f"evaluate:{flavour}",
        )
        result.registered[flavour] = (name, register_run.data.tags["llmflow.registered_model_version"])
    mlflow.set_tags({f"llmflow.run.{step}": run_id for step, run_id in result.step_runs.items()})
    print_summary(MlflowClient(), result)
    return result

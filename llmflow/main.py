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
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from llmflow.chain.graph import GRAPH, Step, walk
from llmflow.chain.reuse import normalise
from llmflow.chain.runner import ChainResult, Runner, forced_steps
from llmflow.chain.summary import print_summary
from llmflow.download import DownloadOptions
from llmflow.evaluation.inputs import EvaluationSettings
from llmflow.export.prebuilt import parse_onnx_source
from llmflow.export_onnx import ExportSettings
from llmflow.log_pyfunc import PyfuncSettings
from llmflow.log_transformers import TransformersSettings
from llmflow.options import GenerationSettings, StepOptions, option
from llmflow.sources.hub import is_local_reference
from llmflow.tracking.names import (
    TAG_REGISTERED_VERSION,
    TAG_REUSED_STEPS,
    TAG_STEP_RUN_PREFIX,
)
from llmflow.tracking.registry import check_registered_model_name
from llmflow.tracking.runs import step_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MainOptions(StepOptions):
    """Run the whole pipeline: download, export, log, register, evaluate, promote."""

    source: DownloadOptions = field(default_factory=DownloadOptions)
    export: ExportSettings = field(default_factory=ExportSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    transformers: TransformersSettings = field(default_factory=TransformersSettings)
    pyfunc: PyfuncSettings = field(default_factory=PyfuncSettings)
    registered_model_name: str = option(
        "phi3-mini-4k-instruct",
        help="Base registered model name; '-onnx' and '-transformers' are appended.",
        check=check_registered_model_name,
    )
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    rerun_from: str = option(
        "none",
        help="Run this step again even if an equal run finished: none, all, or a step name.",
        check=lambda _, value: forced_steps(value),
    )


def run_chain(options: MainOptions) -> ChainResult:
    """Run the whole pipeline under this ``main`` run and print its summary.

    Every option is checked (inside this run) before any child run starts.
    """
    with step_run("main", options) as parent:
        name_for_people(parent, options)
        return _chain(parent, options)


EXPERIMENT_DESCRIPTION = (
    "Runs of llmflow, the MLflow project that takes a Hugging Face chat model to production: each `main` run holds "
    "its steps (download, export_onnx, log_transformers, log_pyfunc, register, evaluate) as nested runs. "
    "Registered models: <name>-onnx and <name>-transformers, with the aliases challenger and champion."
)


def main_run_name(options: MainOptions) -> str:
    """What the UI calls a ``main`` run: ``main: <registered name> <precision>`` (MLflow's own is a random pair
    of words)."""
    return f"main: {options.registered_model_name} {options.export.precision}"


def name_for_people(run: Run, options: MainOptions) -> None:
    """Give the ``main`` run a readable name, and its experiment a description when it has none."""
    client = MlflowClient()
    client.set_tag(run.info.run_id, MLFLOW_RUN_NAME, main_run_name(options))
    experiment = client.get_experiment(run.info.experiment_id)
    if not experiment.tags.get(MLFLOW_RUN_NOTE):
        client.set_experiment_tag(run.info.experiment_id, MLFLOW_RUN_NOTE, EXPERIMENT_DESCRIPTION)


def _absolute(path: str) -> str:
    """Children run with the project root as working directory: hand them absolute paths of the caller's files."""
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def _as_params(options: StepOptions, **extra: str) -> dict[str, str]:
    """A group's parameters as the strings a child step is given and compared by (see ``normalise``)."""
    return {**{name: normalise(value) for name, value in options.params().items()}, **extra}


def _group_params(options: MainOptions) -> dict[str, dict[str, str]]:
    """Each option group's parameters as a step is given them. Children run with the project root as working
    directory: a local model folder, a local ONNX folder and the data files go to them as absolute paths."""
    model = options.source.model
    onnx_source = parse_onnx_source(options.export.onnx_source)
    evaluation = options.evaluation
    return {
        "source": _as_params(options.source, model=_absolute(model) if is_local_reference(model) else model),
        "export": _as_params(
            options.export,
            onnx_source=str(onnx_source.path) if onnx_source.kind == "local" else options.export.onnx_source,
        ),
        "generation": _as_params(options.generation),
        "pyfunc": _as_params(options.pyfunc),
        "transformers": _as_params(options.transformers),
        "evaluation": _as_params(
            evaluation, qa_path=_absolute(evaluation.qa_path), heldout_path=_absolute(evaluation.heldout_path)
        ),
    }


def _chain(parent: Run, options: MainOptions) -> ChainResult:
    """The chain itself (``llmflow.chain.graph``), with ``options`` as checked by ``run_chain``."""
    groups = _group_params(options)

    def own_params(step: Step) -> dict[str, str]:
        named = {"registered_model_name": f"{options.registered_model_name}-{step.flavour}"} if step.flavour else {}
        return {**{k: v for group in step.groups for k, v in groups[group].items()}, **named}

    result = ChainResult(parent.info.run_id)
    runner = Runner(parent.info.experiment_id, result, forced_steps(options.rerun_from))
    runs = walk(GRAPH, own_params, runner.step)
    for registered in (s for s in GRAPH if s.entry_point == "register"):
        result.registered[str(registered.flavour)] = (
            f"{options.registered_model_name}-{registered.flavour}",
            runs[registered.key].data.tags[TAG_REGISTERED_VERSION],
        )
    mlflow.set_tags(
        {
            **{f"{TAG_STEP_RUN_PREFIX}{step}": run_id for step, run_id in result.step_runs.items()},
            TAG_REUSED_STEPS: json.dumps(result.reused),
        }
    )
    print_summary(MlflowClient(), result)
    return result

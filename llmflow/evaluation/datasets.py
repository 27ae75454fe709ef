"""The evaluation data as MLflow datasets, so every figure says what it was measured on.

- The QA set is one **MLflow GenAI evaluation dataset** (the SQL stores keep them), named after its file and
  tagged with the file's path (``llmflow.qa_source``), sha256 (``llmflow.qa_sha256``) and the number of its
  questions scored (``llmflow.qa_rows``: ``eval_max_questions`` may keep only the first ones, and the name then
  says so, e.g. ``qa.jsonl (first 10)``); each record's source is that file. Each evaluation of the same file
  and bound reuses the dataset, and ``mlflow.genai.evaluate``
  is given it, so a run lists the QA set once and every score on a LoggedModel names it.
- The held-out text is a dataset of its own (its file as the source, its sha256 as the digest), named on the
  perplexity figures.

A store without evaluation datasets (MLflow's file store, a workspace without ``databricks-agents``) gets the
QA set as rows and a pandas dataset with the file as its source instead, with a warning.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException

from llmflow import PROJECT_ROOT
from llmflow.evaluation.inputs import EvalInputs, file_sha256
from llmflow.tracking.names import TAG_QA_ROWS, TAG_QA_SHA, TAG_QA_SOURCE

logger = logging.getLogger(__name__)

EXPECTATION = "expected_response"


@dataclass(frozen=True)
class EvalData:
    """What one evaluation scores on: the data for ``mlflow.genai.evaluate`` and the datasets figures name."""

    qa_rows: Any  # an MLflow evaluation dataset, or the rows where the store keeps none
    qa: Any | None  # the dataset the quality and speed figures name (None: the store keeps none)
    heldout: MetaDataset  # the dataset the perplexity figures name


def source_name(path: Path) -> str:
    """The file as people name it: relative to the project root when it lies inside, else absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return resolved.as_posix()


def qa_records(inputs: EvalInputs) -> list[dict[str, Any]]:
    """The QA pairs as ``mlflow.genai.evaluate`` rows (``inputs``, ``expectations``)."""
    return [{"inputs": {"question": p.question}, "expectations": {EXPECTATION: p.answer}} for p in inputs.pairs]


def _find(name: str, sha: str, rows: int, experiment_id: str) -> Any | None:
    from mlflow.genai.datasets import search_datasets

    for dataset in search_datasets(experiment_ids=[experiment_id], filter_string=f"name = '{name}'"):
        if dataset.tags.get(TAG_QA_SHA) == sha and dataset.tags.get(TAG_QA_ROWS) == str(rows):
            return dataset
    return None


def dataset_name(inputs: EvalInputs) -> str:
    """The QA file's name, and ``(first N)`` when ``eval_max_questions`` may have cut it."""
    rows = len(inputs.pairs)
    bounded = inputs.max_questions and rows == inputs.max_questions
    return f"{inputs.qa_file.name} (first {rows})" if bounded else inputs.qa_file.name


def eval_data(inputs: EvalInputs, experiment_id: str) -> EvalData:
    """The QA set and the held-out text as datasets (the QA set made once per file content in the experiment)."""
    dataset = qa_dataset(inputs, experiment_id)
    return EvalData(dataset if dataset is not None else qa_records(inputs), dataset, heldout_dataset(inputs))


def qa_dataset(inputs: EvalInputs, experiment_id: str) -> Any | None:
    """The QA set as one MLflow evaluation dataset of ``experiment_id``, made once per file content.

    On a store without evaluation datasets it logs a pandas dataset with the file as its source to the active
    run instead, and returns None.
    """
    from mlflow.genai.datasets import create_dataset

    name, sha, source = dataset_name(inputs), file_sha256(inputs.qa_file), source_name(inputs.qa_file)
    rows = len(inputs.pairs)
    try:
        dataset = _find(name, sha, rows, experiment_id)
        if dataset is None:
            tags = {TAG_QA_SOURCE: source, TAG_QA_SHA: sha, TAG_QA_ROWS: str(rows)}
            dataset = create_dataset(name=name, experiment_id=experiment_id, tags=tags)
            document = {"source_type": "DOCUMENT", "source_data": {"doc_uri": source}}
            dataset = dataset.merge_records([{**row, "source": document} for row in qa_records(inputs)])
            logger.info(
                "QA set %s (sha256 %s) registered as evaluation dataset %s", source, sha[:12], dataset.dataset_id
            )
        return dataset
    except (MlflowException, NotImplementedError, ImportError) as exc:
        logger.warning("this store keeps no evaluation datasets (%s): logging %s as a pandas dataset", exc, source)
        frame = pd.DataFrame(qa_records(inputs))
        mlflow.log_input(mlflow.data.from_pandas(frame, source=source, name=name), context="evaluation")
        return None


def heldout_dataset(inputs: EvalInputs) -> MetaDataset:
    """The held-out text as a dataset: its file as the source and its sha256 as the digest."""
    with warnings.catch_warnings():
        # MLflow 3.17 registers its local artifact source twice and warns, for any local path, that the path "can be
        # interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource" (both the same class).
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(str(inputs.heldout_file.resolve()))
    return MetaDataset(
        source=source,
        name=inputs.heldout_file.name,
        digest=file_sha256(inputs.heldout_file)[:12],
    )

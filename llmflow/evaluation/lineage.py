"""Who the challenger is judged against: the champion's figures and the reference model.

- The **champion**: the figures recorded by the evaluate run named on its version, when that run used the
  same data and settings (``EvalInputs.fingerprint``), with its per-question scores read back from that run's
  ``eval_table.json`` so the gate can compare question by question; otherwise it is scored again in a nested run.
- The **reference**: as given, none, or (``auto``) the transformers model logged from the challenger's own
  download run; a transformers challenger is its own reference.
- ``export_figures``: what the export cost and bought against the reference, on the same questions.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from llmflow.errors import InputError
from llmflow.evaluation.datasets import EvalData
from llmflow.evaluation.gate import Champion
from llmflow.evaluation.inputs import AUTO, NONE, EvalInputs
from llmflow.evaluation.metrics import QUALITY_METRICS
from llmflow.evaluation.scoring import SCORED_METRICS, Scored, score_nested
from llmflow.tracking.names import (
    CHALLENGER,
    TABLE_FILE,
    TAG_DOWNLOAD_RUN,
    TAG_EVALUATE_RUN,
    TAG_MODEL_URI,
    TAG_STEP,
    registry_key,
    registry_tag,
)
from llmflow.tracking.registry import missing_model

logger = logging.getLogger(__name__)


def registered_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """The aliases of ``name`` (alias -> version); ``InputError`` when the registered model is missing."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise missing_model(client, name, "expected a name that the register step wrote") from None
    return {alias: str(version) for alias, version in (registered.aliases or {}).items()}


def version_to_judge(client: MlflowClient, name: str, requested: str) -> ModelVersion:
    """The version ``requested`` names: a number, or ``challenger`` for the version behind that alias.

    ``main`` passes the number its register step wrote: the alias may have moved to another run's version since.
    """
    aliases = registered_aliases(client, name)
    if requested == CHALLENGER:
        if CHALLENGER not in aliases:
            raise InputError(
                f"registered model '{name}' has no '{CHALLENGER}' alias (aliases: {sorted(aliases) or 'none'}); "
                "expected a model with a version registered by the register step and not judged yet, "
                "or give model_version"
            )
        requested = aliases[CHALLENGER]
    try:
        return client.get_model_version(name, requested)
    except MlflowException:
        raise InputError(
            f"registered model '{name}' has no version {requested}; expected an existing version"
        ) from None


def recorded_evaluation(client: MlflowClient, version: ModelVersion, inputs: EvalInputs) -> dict[str, float] | None:
    """The metrics of the evaluate run recorded on ``version`` if it used the same data and settings."""
    run_id = registry_tag(version.tags, TAG_EVALUATE_RUN)
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        logger.warning("version %s names evaluate run %s, which is gone", version.version, run_id)
        return None
    same = all(run.data.tags.get(key) == value for key, value in inputs.fingerprint().items())
    return {k: v for k, v in run.data.metrics.items() if k in SCORED_METRICS} if same else None


def recorded_question_scores(run_id: str, questions: list[str]) -> list[dict[str, float]] | None:
    """Per-question scores from the ``eval_table.json`` of evaluate run ``run_id``, in the order of ``questions``.

    None when the table is gone or lacks a question or a metric: the gate then compares the recorded means.
    """
    try:
        # mlflow.log_table writes pandas' "split" layout: {"columns": [...], "data": [[...], ...]}.
        table = mlflow.artifacts.load_dict(f"runs:/{run_id}/{TABLE_FILE}")
        rows = {row["question"]: row for row in (dict(zip(table["columns"], r, strict=True)) for r in table["data"])}
        scores = [{m: float(rows[q][m]) for m in QUALITY_METRICS} for q in questions]
    except (MlflowException, OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("evaluate run %s: no per-question scores in %s (%r)", run_id, TABLE_FILE, error)
        return None
    return scores


def champion_scores(
    client: MlflowClient, name: str, version: str | None, challenger: str, inputs: EvalInputs, data: EvalData
) -> tuple[Champion | None, Scored | None]:
    """The champion with comparable figures: those recorded on its version, or a fresh nested scoring."""
    if version is None:
        return None, None
    if version == challenger:
        return Champion(version, None), None
    model_version = client.get_model_version(name, version)
    metrics = recorded_evaluation(client, model_version, inputs)
    if metrics is not None:
        questions = [pair.question for pair in inputs.pairs]
        scores = recorded_question_scores(registry_tag(model_version.tags, TAG_EVALUATE_RUN), questions)
        scored = Scored(f"champion v{version}", f"models:/{name}/{version}", metrics)
        return Champion(version, metrics, scores), scored
    logger.info("champion version %s was evaluated on other data or settings: scoring it again", version)
    scored = score_nested(f"models:/{name}/{version}", f"champion v{version}", inputs, data)
    return Champion(version, scored.metrics, scored.question_scores), scored


def resolve_reference(client: MlflowClient, version: ModelVersion, requested: str) -> str | None:
    """The reference model URI: as given, none, or (``auto``) the transformers model of the same download."""
    if requested == NONE:
        return None
    if requested != AUTO:
        return requested
    download_run_id = registry_tag(version.tags, TAG_DOWNLOAD_RUN)
    if not download_run_id or "transformers" in flavours(version):
        return None  # a transformers challenger is its own reference
    runs = mlflow.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{TAG_STEP}` = 'log_transformers' and params.download_run_id = '{download_run_id}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        logger.warning("no finished log_transformers run of download run %s: no reference", download_run_id)
        return None
    return runs[0].data.tags[TAG_MODEL_URI]


def flavours(version: ModelVersion) -> set[str]:
    return set(mlflow.models.get_model_info(f"models:/{version.name}/{version.version}").flavors)


def load_tokenizer(version: ModelVersion) -> Any:
    """The tokenizer of the download run behind ``version`` (tokenizer files only, not the weights)."""
    from transformers import AutoTokenizer

    from llmflow.sources.folder import model_dir_from_run

    download_run_id = registry_tag(version.tags, TAG_DOWNLOAD_RUN)
    if not download_run_id:
        raise InputError(
            f"version {version.version} of registered model '{version.name}' has no "
            f"'{registry_key(TAG_DOWNLOAD_RUN)}' tag; expected a version registered by the register step"
        )
    with tempfile.TemporaryDirectory(prefix="llmflow-tokenizer-") as tmp:
        return AutoTokenizer.from_pretrained(model_dir_from_run(download_run_id, Path(tmp), weights=False))


def export_figures(challenger: Scored, reference: Scored, tokenizer: Any) -> dict[str, float]:
    """What the export cost and bought against the reference, on the same questions and text."""
    ch, ref = challenger.metrics, reference.metrics
    figures = {"perplexity_ratio": ch["perplexity"] / ref["perplexity"]}
    figures.update(
        {f"quality_retained_{m}": ch[m] / ref[m] for m in QUALITY_METRICS if ref[m] > 0},
    )
    pairs = list(zip(challenger.examples, reference.examples, strict=True))
    figures["greedy_agreement"] = sum(a.prediction.strip() == b.prediction.strip() for a, b in pairs) / len(pairs)

    def first_token(text: str) -> int | None:
        ids = tokenizer(text.strip(), add_special_tokens=False)["input_ids"]
        return ids[0] if ids else None

    figures["first_token_agreement"] = sum(
        first_token(a.prediction) == first_token(b.prediction) for a, b in pairs
    ) / len(pairs)
    if ref["tokens_per_second"] > 0:
        figures["speedup"] = ch["tokens_per_second"] / ref["tokens_per_second"]
    return figures

"""Step ``evaluate``: score a version against the champion and the reference, and gate its promotion.

Reads version ``model_version`` of ``registered_model_name`` (``main`` gives the one its register step wrote; by
default the version behind ``challenger``); the ``champion`` alias, if any, with the figures
of the evaluate run recorded on its version (or scores the champion again when that run used other data);
the reference model (by default the transformers model logged from the challenger's own download run),
the QA set at ``qa_path`` and the held-out text at ``heldout_path``.

Each model is scored through ``mlflow.genai.evaluate`` with code-based scorers (exact match,
contains-answer, token F1, ROUGE-L), so every answer is a trace with its assessments in the MLflow UI;
latency, tokens per second and perplexity on the held-out text are measured alongside. The challenger
is scored in this step's run; the reference and a re-scored champion each in a nested run. The gate
(``llmflow.evaluation.gate``) compares the challenger with the reference and the champion question by
question, from those per-question scores.

Writes, in its MLflow run:
- the challenger's metrics (``exact_match``, ``contains_answer``, ``token_f1``, ``rouge_l``,
  ``latency_p50_s``, ``latency_p95_s``, ``tokens_per_second``, ``perplexity``, ``n_examples``) and, with a
  reference, what export cost and bought (``perplexity_ratio``, ``quality_retained_<metric>``,
  ``greedy_agreement``, ``first_token_agreement``, ``speedup``), and ``promoted`` (1/0);
- ``eval_table.json`` (one row per question) and ``report/`` (``report.md``, ``metrics.png``,
  ``latency.png``, ``decision.json``);
- tags ``llmflow.decision``, ``llmflow.decision_reason`` and one ``llmflow.criterion.<n>`` per criterion.

Every figure of a model also goes onto its LoggedModel (``model_id=``, with the dataset it was measured on),
and the traces carry the model id: the challenger's, the reference's and a re-scored champion's. The QA set
is one MLflow evaluation dataset (``llmflow.evaluation.datasets``); the experiment gets its kind
(``mlflow.experimentKind``) so the UI shows the tabs that fit.

On the challenger's version it writes ``validation_status`` (passed / failed) and ``llmflow.evaluate_run_id``,
and its description: the report in Markdown (decision, criteria with their figures, metrics side by side).
Only when the gate passes, and after every other record is written, the replaced champion gets alias
``previous`` and then ``champion`` moves to the challenger; either way ``challenger`` leaves the judged version.
The decision is made holding the registered model's decision lock (``llmflow.evaluation.promotion``), against the
champion as it is then: two evaluations of one model that end together decide one after the other.

This module only orchestrates; the work lives in ``llmflow.evaluation``: ``inputs`` (options and data
files), ``scoring`` (one model), ``lineage`` (champion and reference), ``gate``, ``report`` and
``promotion`` (the alias moves, shared with ``rollback``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from llmflow.evaluation.datasets import eval_data
from llmflow.evaluation.gate import gate
from llmflow.evaluation.inputs import (
    EvaluateOptions,
    validate_evaluate_options,
)
from llmflow.evaluation.lineage import (
    champion_scores,
    export_figures,
    load_tokenizer,
    registered_aliases,
    resolve_reference,
    version_to_judge,
)
from llmflow.evaluation.promotion import decision_lock, record_decision
from llmflow.evaluation.report import log_report
from llmflow.evaluation.scoring import score_model, score_nested
from llmflow.tracking.model_cards import lineage_of, version_description
from llmflow.tracking.names import (
    CHAMPION,
    EXPERIMENT_KIND,
    TAG_CHAMPION_VERSION,
    TAG_EXPERIMENT_KIND,
    TAG_REFERENCE_MODEL_URI,
    TAG_REGISTERED_NAME,
    TAG_REGISTERED_VERSION,
)
from llmflow.tracking.runs import step_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str


def evaluate(options: EvaluateOptions) -> EvaluateResult:
    """Evaluate a version of ``registered_model_name`` (by default its ``challenger``) and promote it if it passes."""
    with step_run("evaluate", options) as run:
        inputs = validate_evaluate_options(options, options.reference_model_uri)
        client = MlflowClient()
        name = options.registered_model_name
        version = version_to_judge(client, name, options.model_version)
        number = str(version.version)
        reference_uri = resolve_reference(client, version, inputs.reference_model_uri)
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: name,
                TAG_REGISTERED_VERSION: number,
                TAG_REFERENCE_MODEL_URI: reference_uri or "none",
                **inputs.fingerprint(),
            }
        )
        client.set_experiment_tag(run.info.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        data = eval_data(inputs, run.info.experiment_id)
        # The version, not the alias: the alias may move while this step runs.
        challenger = score_model(f"models:/{name}/{number}", f"challenger v{number}", inputs, data)
        reference = score_nested(reference_uri, "reference", inputs, data) if reference_uri else None
        figures = export_figures(challenger, reference, load_tokenizer(version)) if reference else {}
        if figures:
            mlflow.log_metrics(figures, model_id=challenger.model_id)
        judged, judged_against = False, None
        while True:
            # Judged outside the lock (a champion scored again takes minutes), decided under it: if the champion
            # moved meanwhile (another evaluation of this model decided first), judge again against the new one.
            current = registered_aliases(client, name).get(CHAMPION)
            if not judged or current != judged_against:
                champion, champion_scored = champion_scores(client, name, current, number, inputs, data)
                decision = gate(
                    number,
                    challenger.metrics,
                    champion,
                    reference.metrics if reference else None,
                    inputs.config,
                    challenger_scores=challenger.question_scores,
                    reference_scores=reference.question_scores if reference else None,
                )
                judged, judged_against = True, current
            with decision_lock(client, name, run.info.run_id):
                if registered_aliases(client, name).get(CHAMPION) != judged_against:
                    logger.info("%s: the champion moved while version %s was judged; judging it again", name, number)
                    continue
                mlflow.set_tag(TAG_CHAMPION_VERSION, judged_against or "none")
                columns = [s for s in (challenger, champion_scored, reference) if s is not None]
                report = log_report(name, number, decision, columns, figures)
                description = version_description(report, run.info.run_id, lineage_of(version.description))
                record_decision(client, name, number, run.info.run_id, champion, decision, description)
                break
        logger.info("%s version %s %s: %s", name, number, decision.decision, decision.reason)
        return EvaluateResult(run.info.run_id, number, challenger.metrics, decision.passed, decision.reason)

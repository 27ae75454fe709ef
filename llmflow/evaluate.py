"""Step ``evaluate``: score the ``challenger`` against the champion and the reference, and gate its promotion.

Reads ``models:/<registered_model_name>@challenger``; the ``champion`` alias, if any, with the figures
of the evaluate run recorded on its version (or scores the champion again when that run used other data);
the reference model (by default the transformers model logged from the challenger's own download run),
the QA set at ``qa_path`` and the held-out text at ``heldout_path``.

Each model is scored through ``mlflow.genai.evaluate`` with code-based scorers (exact match,
contains-answer, token F1, ROUGE-L), so every answer is a trace with its assessments in the MLflow UI;
latency, tokens per second and perplexity on the held-out text are measured alongside. The challenger
is scored in this step's run; the reference and a re-scored champion each in a nested run.

Writes, in its MLflow run:
- the challenger's metrics (``exact_match``, ``contains_answer``, ``token_f1``, ``rouge_l``,
  ``latency_p50_s``, ``latency_p95_s``, ``tokens_per_second``, ``perplexity``, ``n_examples``) and, with a
  reference, what export cost and bought (``perplexity_ratio``, ``quality_retained_<metric>``,
  ``greedy_agreement``, ``first_token_agreement``, ``speedup``), and ``promoted`` (1/0);
- ``eval_table.json`` (one row per question) and ``report/`` (``report.md``, ``metrics.png``,
  ``latency.png``, ``decision.json``);
- tags ``llmflow.decision``, ``llmflow.decision_reason`` and one ``llmflow.criterion.<n>`` per criterion.

On the challenger's version it writes ``validation_status`` (passed / failed), ``llmflow.decision_reason``
and ``llmflow.evaluate_run_id``. Only when the gate passes, and after every other record is written,
the replaced champion gets alias ``previous`` and then ``champion`` moves to the challenger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError
from llmflow.evaluation.gate import (
    Champion,
    GateConfig,
    GateDecision,
    gate,
    parse_gate_metrics,
    parse_min_scores,
    validate_gate_config,
)
from llmflow.evaluation.metrics import QUALITY_METRICS, SCORERS, Example, example_table, summarize
from llmflow.evaluation.perplexity import PerplexityResult, load_heldout, perplexity_onnx, perplexity_transformers
from llmflow.evaluation.qa import QAPair, load_qa
from llmflow.options import StepOptions, at_least, fraction, non_empty, option
from llmflow.tracking.names import (
    CHALLENGER,
    CHAMPION,
    DECISION_FILE,
    PREVIOUS,
    REPORT_DIR,
    TABLE_FILE,
    TAG_CHAMPION_VERSION,
    TAG_CRITERION_PREFIX,
    TAG_DECISION,
    TAG_DECISION_REASON,
    TAG_DOWNLOAD_RUN,
    TAG_EVAL_MAX_NEW_TOKENS,
    TAG_EVALUATE_RUN,
    TAG_HELDOUT_SHA,
    TAG_MODEL_URI,
    TAG_PREVIOUS_CHAMPION,
    TAG_QA_SHA,
    TAG_REFERENCE_MODEL_URI,
    TAG_REGISTERED_NAME,
    TAG_REGISTERED_VERSION,
    TAG_STEP,
    TAG_VALIDATION_STATUS,
)
from llmflow.tracking.runs import step_run

logger = logging.getLogger(__name__)

# What score_model measures of one model; a champion's recorded evaluation is read back as these.
SCORED_METRICS = (
    *QUALITY_METRICS,
    "latency_p50_s",
    "latency_p95_s",
    "tokens_per_second",
    "n_examples",
    "perplexity",
    "heldout_tokens",
)
# reference_model_uri values that are not URIs.
AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class EvalInputs:
    """Everything ``evaluate`` reads besides the models, checked before any model loads."""

    pairs: list[QAPair]
    qa_file: Path
    heldout: str
    heldout_file: Path
    max_new_tokens: int
    reference_model_uri: str
    config: GateConfig

    def fingerprint(self) -> dict[str, str]:
        """What must match for two evaluations to be comparable."""
        return {
            **fingerprint_files(self.qa_file, self.heldout_file),
            TAG_EVAL_MAX_NEW_TOKENS: str(self.max_new_tokens),
        }


@dataclass
class Scored:
    """One model's evaluation: its figures and answers."""

    label: str
    model_uri: str
    metrics: dict[str, float]
    examples: list[Example] = field(default_factory=list)
    run_id: str | None = None


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str


def resolve_data_path(path: str | Path) -> Path:
    """``path`` as given when it exists, else relative to the project root (where ``data/`` lives)."""
    resolved = Path(path).expanduser()
    if not resolved.exists() and not resolved.is_absolute() and (PROJECT_ROOT / resolved).exists():
        return PROJECT_ROOT / resolved
    return resolved


def fingerprint_files(qa_path: str | Path, heldout_path: str | Path) -> dict[str, str]:
    """sha256 of the QA file and the held-out text, as tags; ``InputError`` when one is missing."""
    digests = {}
    for tag, path in ((TAG_QA_SHA, qa_path), (TAG_HELDOUT_SHA, heldout_path)):
        resolved = resolve_data_path(path)
        if not resolved.is_file():
            raise InputError(f"evaluation file '{path}' not found")
        digests[tag] = hashlib.sha256(resolved.read_bytes()).hexdigest()
    return digests


def validate_reference_uri(uri: str) -> str:
    """``auto``, ``none``, or a model URI MLflow can load (``models:/``, ``runs:/`` or a local folder)."""
    text = str(uri).strip()
    if text.lower() in (AUTO, NONE):
        return text.lower()
    if text.startswith(("models:/", "runs:/")) or "://" in text or Path(text).expanduser().is_dir():
        return text
    raise InputError(
        f"reference_model_uri {uri!r} is not accepted; expected 'auto' (the transformers model of the same "
        "download run), 'none', or a model URI such as models:/<name>/<version> or runs:/<run_id>/<path>"
    )


def _check_metrics(name: str, value: str) -> None:
    parse_gate_metrics(value)


def _check_floors(name: str, value: str) -> None:
    parse_min_scores(value)


def _check_ratio(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 1:
        raise InputError(f"{name} {value!r} is not accepted; expected a number >= 1 (e.g. 1.2 allows 20% more)")


def _check_reference(name: str, value: str) -> None:
    validate_reference_uri(value)


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings(StepOptions):
    """What evaluate scores on and how its gate decides; ``main`` hands the same settings to evaluate."""

    qa_path: str = option(
        "data/qa.jsonl", help="JSONL of {question, answer} rows; a relative path may also be from the project root."
    )
    heldout_path: str = option(
        "data/heldout.txt", help="Held-out text for perplexity; a relative path may also be from the project root."
    )
    eval_max_new_tokens: int = option(32, help="Most tokens generated per question.", check=at_least(1))
    gate_metrics: str = option(
        "exact_match,contains_answer,token_f1,rouge_l",
        help="Comma-separated metrics compared with the champion and the reference.",
        check=_check_metrics,
    )
    min_scores: str = option(
        "contains_answer=0.5",
        help="Absolute floors, e.g. 'contains_answer=0.5,token_f1=0.3'; 'none' for none.",
        check=_check_floors,
    )
    champion_tolerance: float = option(
        0.02, help="How far (0-1) below the champion a gated metric may fall.", check=fraction
    )
    min_quality_retained: float = option(
        0.9, help="Least share (0-1) of the reference's score kept on each gated metric.", check=fraction
    )
    max_perplexity_ratio: float = option(
        1.2, help="Highest perplexity ratio, challenger / reference (>= 1).", check=_check_ratio
    )

    def check_together(self) -> None:
        validate_evaluate_options(self)  # the gate's settings together, and the data files load


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(EvaluationSettings):
    """Score the 'challenger' against champion and reference; gate its promotion."""

    registered_model_name: str = option(help="Registered model whose 'challenger' alias is evaluated.", check=non_empty)
    reference_model_uri: str = option(
        AUTO,
        help="Reference model: 'auto' (transformers model of the same download run), 'none', or a model URI.",
        check=_check_reference,
    )


def validate_evaluate_options(settings: EvaluationSettings, reference_model_uri: str = NONE) -> EvalInputs:
    """Check the data files and every gate setting without touching a model; load the data.

    Raises ``InputError`` with one line naming the bad value, so ``main`` can fail before any child run.
    """
    config = GateConfig(
        gate_metrics=parse_gate_metrics(settings.gate_metrics),
        min_scores=parse_min_scores(settings.min_scores),
        champion_tolerance=settings.champion_tolerance,
        min_quality_retained=settings.min_quality_retained,
        max_perplexity_ratio=settings.max_perplexity_ratio,
    )
    validate_gate_config(config)
    qa_file, heldout_file = resolve_data_path(settings.qa_path), resolve_data_path(settings.heldout_path)
    return EvalInputs(
        pairs=load_qa(qa_file),
        qa_file=qa_file,
        heldout=load_heldout(heldout_file),
        heldout_file=heldout_file,
        max_new_tokens=settings.eval_max_new_tokens,
        reference_model_uri=validate_reference_uri(reference_model_uri),
        config=config,
    )


def chat_answer(model: PyFuncModel, question: str, max_new_tokens: int) -> tuple[str, int]:
    """Ask one question as an OpenAI chat request; return the answer and its completion tokens.

    Both flavours take the same request (the transformers ``llm/v1/chat`` model and the ONNX pyfunc) and
    decode greedily through the model_config their log step recorded.
    """
    [response] = model.predict({"messages": [{"role": "user", "content": question}], "max_tokens": max_new_tokens})
    return response["choices"][0]["message"]["content"] or "", int(response["usage"]["completion_tokens"])


def model_perplexity(model: PyFuncModel, text: str) -> PerplexityResult:
    """Perplexity of a loaded transformers or ONNX pyfunc on ``text``."""
    if "transformers" in model.metadata.flavors:
        pipeline = model.get_raw_model()
        return perplexity_transformers(pipeline.model, pipeline.tokenizer, text)
    onnx_dir = getattr(model.unwrap_python_model(), "onnx_dir", None)
    if onnx_dir is None:
        raise InputError(
            f"model flavours {sorted(model.metadata.flavors)} have no perplexity; expected a transformers "
            "model or this project's ONNX pyfunc"
        )
    return perplexity_onnx(onnx_dir, text)


def _genai_scorers() -> list[Any]:
    """The quality scores of ``llmflow.evaluation.metrics`` as MLflow code-based scorers (one assessment per answer)."""
    from mlflow.genai.scorers import scorer

    def make(name: str) -> Any:
        def score(outputs: Any, expectations: dict[str, Any]) -> float:
            return SCORERS[name](str(outputs or ""), str(expectations["expected_response"]))

        return scorer(score, name=name)

    return [make(name) for name in QUALITY_METRICS]


def _sequential_evaluation() -> Any:
    """One question at a time, so each latency is the model's alone.

    (MLflow's check call on the first question stays on: with MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION set,
    mlflow 3.17 logs no traces at all.)
    """
    return mock.patch.dict(os.environ, {"MLFLOW_GENAI_EVAL_MAX_WORKERS": "1"})


def score_model(model_uri: str, label: str, inputs: EvalInputs) -> Scored:
    """Evaluate one model in the active run: QA answers through ``mlflow.genai.evaluate``, then perplexity."""
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    records: dict[str, tuple[str, float, int]] = {}

    def answer(question: str) -> str:
        begin = time.perf_counter()
        text, tokens = chat_answer(model, question, inputs.max_new_tokens)
        records[question] = (text, time.perf_counter() - begin, tokens)
        return text

    # One untimed call first, so the first question's latency holds no one-off start-up cost.
    chat_answer(model, inputs.pairs[0].question, inputs.max_new_tokens)
    logger.info("%s: answering %d questions (%s)", label, len(inputs.pairs), model_uri)
    data = [{"inputs": {"question": p.question}, "expectations": {"expected_response": p.answer}} for p in inputs.pairs]
    with _sequential_evaluation():
        mlflow.genai.evaluate(data=data, predict_fn=answer, scorers=_genai_scorers())
    examples = [Example(p.question, p.answer, *records[p.question]) for p in inputs.pairs]
    metrics = summarize(examples)
    logger.info("%s: perplexity on %s", label, inputs.heldout_file.name)
    ppl = model_perplexity(model, inputs.heldout)
    metrics.update(perplexity=ppl.perplexity, heldout_tokens=float(ppl.tokens))
    mlflow.log_metrics(metrics)
    mlflow.log_table(example_table(examples), TABLE_FILE)
    logger.info("%s: scored in %.1f s: %s", label, time.perf_counter() - started, _brief(metrics))
    return Scored(label, model_uri, metrics, examples, mlflow.active_run().info.run_id)


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k in (*QUALITY_METRICS, "perplexity"))


def score_nested(model_uri: str, label: str, inputs: EvalInputs) -> Scored:
    """``score_model`` in a run nested under this step's run, so its traces and table stay apart."""
    with mlflow.start_run(nested=True, run_name=label):
        mlflow.set_tags({TAG_STEP: "evaluate:" + label.split()[0], TAG_MODEL_URI: model_uri})
        mlflow.set_tags(inputs.fingerprint())
        return score_model(model_uri, label, inputs)


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise InputError(
            f"registered model '{name}' not found in tracking store '{mlflow.get_tracking_uri()}'; "
            "expected a name that the register step wrote"
        ) from None
    aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}
    if CHALLENGER not in aliases:
        raise InputError(
            f"registered model '{name}' has no '{CHALLENGER}' alias (aliases: {sorted(aliases) or 'none'}); "
            "expected a model with a version registered by the register step"
        )
    return aliases


def _recorded_evaluation(client: MlflowClient, version: ModelVersion, inputs: EvalInputs) -> dict[str, float] | None:
    """The metrics of the evaluate run recorded on ``version`` if it used the same data and settings."""
    run_id = version.tags.get(TAG_EVALUATE_RUN)
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        logger.warning("version %s names evaluate run %s, which is gone", version.version, run_id)
        return None
    same = all(run.data.tags.get(key) == value for key, value in inputs.fingerprint().items())
    return {k: v for k, v in run.data.metrics.items() if k in SCORED_METRICS} if same else None


def champion_scores(
    client: MlflowClient, name: str, version: str | None, challenger: str, inputs: EvalInputs
) -> tuple[Champion | None, Scored | None]:
    """The champion with comparable figures: those recorded on its version, or a fresh nested scoring."""
    if version is None:
        return None, None
    if version == challenger:
        return Champion(version, None), None
    model_version = client.get_model_version(name, version)
    metrics = _recorded_evaluation(client, model_version, inputs)
    if metrics is not None:
        return Champion(version, metrics), Scored(f"champion v{version}", f"models:/{name}/{version}", metrics)
    logger.info("champion version %s was evaluated on other data or settings: scoring it again", version)
    scored = score_nested(f"models:/{name}/{version}", f"champion v{version}", inputs)
    return Champion(version, scored.metrics), scored


def resolve_reference(client: MlflowClient, version: ModelVersion, requested: str) -> str | None:
    """The reference model URI: as given, none, or (``auto``) the transformers model of the same download."""
    if requested == NONE:
        return None
    if requested != AUTO:
        return requested
    download_run_id = version.tags.get(TAG_DOWNLOAD_RUN)
    if not download_run_id or "transformers" in _flavours(version):
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


def _flavours(version: ModelVersion) -> set[str]:
    return set(mlflow.models.get_model_info(f"models:/{version.name}/{version.version}").flavors)


def load_tokenizer(version: ModelVersion) -> Any:
    """The tokenizer of the download run behind ``version`` (tokenizer files only, not the weights)."""
    from transformers import AutoTokenizer

    from llmflow.download import model_dir_from_run

    download_run_id = version.tags.get(TAG_DOWNLOAD_RUN)
    if not download_run_id:
        raise InputError(
            f"version {version.version} of registered model '{version.name}' has no '{TAG_DOWNLOAD_RUN}' tag; "
            "expected a version registered by the register step"
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


def _record_decision(
    client: MlflowClient,
    name: str,
    version: str,
    run_id: str,
    champion: Champion | None,
    decision: GateDecision,
) -> None:
    """Write the decision to the run, then the version; move aliases last: ``previous`` to the replaced
    champion first, then ``champion`` in one call, so ``champion`` always names an evaluated version."""
    mlflow.log_metric("promoted", float(decision.passed))
    mlflow.set_tags(
        {
            TAG_DECISION: decision.decision,
            TAG_DECISION_REASON: decision.reason,
            **{
                f"{TAG_CRITERION_PREFIX}{n:02d}": f"{'pass' if c.passed else 'FAIL'}: {c.name}: {c.detail}"
                for n, c in enumerate(decision.criteria, start=1)
            },
        }
    )
    version_tags = {
        TAG_VALIDATION_STATUS: "passed" if decision.passed else "failed",
        TAG_DECISION_REASON: decision.reason[:4900],
        TAG_EVALUATE_RUN: run_id,
    }
    if not decision.passed:
        for key, value in version_tags.items():
            client.set_model_version_tag(name, version, key, value)
        return
    replaced = champion.version if champion and champion.version != version else None
    if replaced:
        version_tags[TAG_PREVIOUS_CHAMPION] = replaced
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    if replaced:
        client.set_registered_model_alias(name, PREVIOUS, replaced)
    client.set_registered_model_alias(name, CHAMPION, version)


def _report(
    name: str,
    version: str,
    decision: GateDecision,
    columns: list[Scored],
    figures: dict[str, float],
) -> None:
    """Write and log ``report/``: the Markdown report, its plots, and the decision as JSON."""
    from llmflow.evaluation.report import write_report  # imports matplotlib: only where a report is written

    table = {s.label: {k: v for k, v in s.metrics.items() if not math.isnan(v)} for s in columns}
    latencies = {s.label: [e.latency_s for e in s.examples] for s in columns if s.examples}
    outcome = (
        f"version {version} is now champion"
        if decision.passed
        else f"version {version} stays challenger; champion unchanged"
    )
    with tempfile.TemporaryDirectory(prefix="llmflow-report-") as tmp:
        out = Path(tmp)
        write_report(
            out,
            title=f"{name} version {version}",
            outcome=outcome,
            passed=decision.passed,
            reason=decision.reason,
            criteria=[(c.name, c.passed, c.detail) for c in decision.criteria],
            table=table,
            export_figures=figures,
            latencies=latencies,
        )
        decision_record = {
            "registered_model_name": name,
            "version": version,
            "passed": decision.passed,
            "decision": decision.decision,
            "reason": decision.reason,
            "criteria": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.criteria],
            "table": table,
            "export_figures": figures,
        }
        (out / DECISION_FILE).write_text(json.dumps(decision_record, indent=2), encoding="utf-8")
        mlflow.log_artifacts(str(out), REPORT_DIR)


def evaluate(options: EvaluateOptions) -> EvaluateResult:
    """Evaluate ``models:/<registered_model_name>@challenger`` and promote it if the gate passes."""
    registered_model_name = options.registered_model_name
    with step_run("evaluate", options) as run:
        inputs = validate_evaluate_options(options, options.reference_model_uri)
        client = MlflowClient()
        name = registered_model_name
        aliases = _aliases(client, name)
        version = client.get_model_version(name, aliases[CHALLENGER])
        number = str(version.version)
        reference_uri = resolve_reference(client, version, inputs.reference_model_uri)
        mlflow.set_tags(
            {
                TAG_REGISTERED_NAME: name,
                TAG_REGISTERED_VERSION: number,
                TAG_CHAMPION_VERSION: aliases.get(CHAMPION, "none"),
                TAG_REFERENCE_MODEL_URI: reference_uri or "none",
                **inputs.fingerprint(),
            }
        )
        frame = pd.DataFrame(
            {"question": [p.question for p in inputs.pairs], "answer": [p.answer for p in inputs.pairs]}
        )
        mlflow.log_input(mlflow.data.from_pandas(frame, name=inputs.qa_file.name), context="evaluation")
        # The version, not the alias: the alias may move while this step runs.
        challenger = score_model(f"models:/{name}/{number}", f"challenger v{number}", inputs)
        champion, champion_scored = champion_scores(client, name, aliases.get(CHAMPION), number, inputs)
        reference = score_nested(reference_uri, "reference", inputs) if reference_uri else None
        figures = export_figures(challenger, reference, load_tokenizer(version)) if reference else {}
        if figures:
            mlflow.log_metrics(figures)
        decision = gate(number, challenger.metrics, champion, reference.metrics if reference else None, inputs.config)
        columns = [s for s in (challenger, champion_scored, reference) if s is not None]
        _report(name, number, decision, columns, figures)
        _record_decision(client, name, number, run.info.run_id, champion, decision)
        logger.info("%s version %s %s: %s", name, number, decision.decision, decision.reason)
        return EvaluateResult(run.info.run_id, number, challenger.metrics, decision.passed, decision.reason)

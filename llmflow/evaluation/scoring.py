"""Score one model: its answers through ``mlflow.genai.evaluate``, its speed, and its perplexity.

Each answer is scored once, by the code-based scorers inside ``mlflow.genai.evaluate``, which record the
scores as assessments on the answer's trace. The logged means and the per-example table are read back
from that evaluation's result (one row per trace, with its assessments), so what the MLflow UI shows
and what the run logs come from the same numbers. Latency and completion tokens are measured around each
call of the model; perplexity is computed on the held-out text.

Everything is linked to the model's LoggedModel when it has one (``model_id``): ``mlflow.genai.evaluate``
gets the model id, so its traces carry it, and every figure is logged with ``model_id=`` and the dataset it
was measured on, so it shows on the model's page as well as on the run.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from llmflow.console import DebugLines
from llmflow.errors import InputError
from llmflow.evaluation.datasets import EvalData
from llmflow.evaluation.inputs import EvalInputs
from llmflow.evaluation.metrics import QUALITY_METRICS, SCORERS, Example, example_table, summarize
from llmflow.evaluation.perplexity import PerplexityResult, perplexity_onnx, perplexity_transformers
from llmflow.tracking.names import TABLE_FILE, TAG_MODEL_URI, TAG_STEP

logger = logging.getLogger(__name__)

# MLflow's setting for how many questions mlflow.genai.evaluate scores at once.
EVAL_WORKERS_ENV = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
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


@dataclass
class Scored:
    """One model's evaluation: its figures and answers."""

    label: str
    model_uri: str
    metrics: dict[str, float]
    examples: list[Example] = field(default_factory=list)
    run_id: str | None = None
    model_id: str | None = None

    @property
    def question_scores(self) -> list[dict[str, float]]:
        """Each question's scores, in the QA file's order: what the gate compares question by question."""
        return [dict(e.scores) for e in self.examples]


def chat_answer(model: PyFuncModel, question: str, max_new_tokens: int) -> tuple[str, int]:
    """Ask one question as an OpenAI chat request; return the answer and its completion tokens.

    Both flavours take the same request (the transformers ``llm/v1/chat`` model and the ONNX pyfunc) and
    decode greedily through the model_config their log step recorded.
    """
    [response] = model.predict({"messages": [{"role": "user", "content": question}], "max_tokens": max_new_tokens})
    return response["choices"][0]["message"]["content"] or "", int(response["usage"]["completion_tokens"])


def model_perplexity(model: PyFuncModel, text: str, max_tokens: int | None = None) -> PerplexityResult:
    """Perplexity of a loaded transformers or ONNX pyfunc on the first ``max_tokens`` tokens of ``text``."""
    if "transformers" in model.metadata.flavors:
        pipeline = model.get_raw_model()
        return perplexity_transformers(pipeline.model, pipeline.tokenizer, text, max_tokens=max_tokens)
    onnx_dir = getattr(model.unwrap_python_model(), "onnx_dir", None)
    if onnx_dir is None:
        raise InputError(
            f"model flavours {sorted(model.metadata.flavors)} have no perplexity; expected a transformers "
            "model or this project's ONNX pyfunc"
        )
    return perplexity_onnx(onnx_dir, text, max_tokens=max_tokens)


def genai_scorers() -> list[Any]:
    """The quality scores of ``llmflow.evaluation.metrics`` as MLflow code-based scorers (one assessment per answer)."""
    from mlflow.genai.scorers import scorer

    def make(name: str) -> Any:
        def score(outputs: Any, expectations: dict[str, Any]) -> float:
            return SCORERS[name](str(outputs or ""), str(expectations["expected_response"]))

        return scorer(score, name=name)

    return [make(name) for name in QUALITY_METRICS]


@contextmanager
def _sequential_evaluation() -> Iterator[None]:
    """One question at a time, so each latency is the model's alone (MLflow's documented setting).

    (MLflow's check call on the first question stays on: with MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION set,
    mlflow 3.17 logs no traces at all.)
    """
    before = os.environ.get(EVAL_WORKERS_ENV)
    os.environ[EVAL_WORKERS_ENV] = "1"
    try:
        # mlflow.genai.evaluate prints ten lines when it ends (the run's name and id, and to open the Traces tab),
        # which this step's own log and main's summary already give; its progress bar is on stderr and stays.
        with redirect_stdout(DebugLines(logger, "printed by mlflow.genai.evaluate: ")):
            yield
    finally:
        if before is None:
            os.environ.pop(EVAL_WORKERS_ENV, None)
        else:
            os.environ[EVAL_WORKERS_ENV] = before


def examples_from_result(result_df: Any, inputs: EvalInputs, timings: dict[str, tuple[float, int]]) -> list[Example]:
    """One ``Example`` per question, in the QA file's order, from the rows of ``mlflow.genai.evaluate``'s result.

    The prediction is the trace's response and the scores are its assessments (``<scorer>/value``); the
    latency and completion tokens were measured around the model's call for that question.
    """
    rows = {row["request"]["question"]: row for row in result_df.to_dict(orient="records")}
    examples = []
    for pair in inputs.pairs:
        row = rows.get(pair.question)
        if row is None:
            raise RuntimeError(f"mlflow.genai.evaluate returned no trace for question {pair.question!r}")
        scores = {name: row.get(f"{name}/value") for name in QUALITY_METRICS}
        missing = [name for name, value in scores.items() if value is None]
        if missing:
            raise RuntimeError(f"question {pair.question!r} has no assessment for {missing}: its scorer failed")
        latency, tokens = timings[pair.question]
        examples.append(Example(pair.question, pair.answer, str(row["response"] or ""), latency, tokens, {**scores}))
    return examples


def logged_model_id(model_uri: str) -> str | None:
    """The id of the LoggedModel in this store that ``model_uri`` loads, or None (a folder, another store)."""
    try:
        model_id = mlflow.models.get_model_info(model_uri).model_id
        return mlflow.get_logged_model(model_id).model_id if model_id else None
    except (MlflowException, OSError):
        return None


def score_model(model_uri: str, label: str, inputs: EvalInputs, data: EvalData) -> Scored:
    """Evaluate one model in the active run: QA answers through ``mlflow.genai.evaluate``, then perplexity."""
    started = time.perf_counter()
    model_id = logged_model_id(model_uri)
    if model_id is None:
        logger.warning("%s: %s is no LoggedModel of this store: its figures stay on the run only", label, model_uri)
    # The model is reached only through this holder, emptied at the end: mlflow.genai.evaluate may keep the answer
    # function, and the next model scored in this process (the reference) must not find this one still loaded.
    holder = [mlflow.pyfunc.load_model(model_uri)]
    timings: dict[str, tuple[float, int]] = {}

    def answer(question: str) -> str:
        begin = time.perf_counter()
        text, tokens = chat_answer(holder[0], question, inputs.max_new_tokens)
        timings[question] = (time.perf_counter() - begin, tokens)
        return text

    # One untimed call first, so the first question's latency holds no one-off start-up cost.
    chat_answer(holder[0], inputs.pairs[0].question, inputs.max_new_tokens)
    logger.info("%s: answering %d questions (%s)", label, len(inputs.pairs), model_uri)
    with _sequential_evaluation():
        result = mlflow.genai.evaluate(data=data.qa_rows, predict_fn=answer, scorers=genai_scorers(), model_id=model_id)
    examples = examples_from_result(result.result_df, inputs, timings)
    metrics = summarize(examples)
    mlflow.log_metrics(metrics, model_id=model_id, dataset=data.qa)
    bound = f"first {inputs.max_heldout_tokens} tokens of " if inputs.max_heldout_tokens else ""
    logger.info("%s: perplexity on %s%s", label, bound, inputs.heldout_file.name)
    ppl = model_perplexity(holder[0], inputs.heldout, inputs.max_heldout_tokens)
    holder.clear()
    gc.collect()
    heldout = {"perplexity": ppl.perplexity, "heldout_tokens": float(ppl.tokens)}
    mlflow.log_metrics(heldout, model_id=model_id, dataset=data.heldout)
    metrics.update(heldout)
    mlflow.log_table(example_table(examples), TABLE_FILE)
    logger.info("%s: scored in %.1f s: %s", label, time.perf_counter() - started, _brief(metrics))
    return Scored(label, model_uri, metrics, examples, mlflow.active_run().info.run_id, model_id)


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k in (*QUALITY_METRICS, "perplexity"))


def score_nested(model_uri: str, label: str, inputs: EvalInputs, data: EvalData) -> Scored:
    """``score_model`` in a run nested under this step's run, so its traces and table stay apart."""
    with mlflow.start_run(nested=True, run_name=label):
        mlflow.set_tags({TAG_STEP: "evaluate:" + label.split()[0], TAG_MODEL_URI: model_uri})
        mlflow.set_tags(inputs.fingerprint())
        return score_model(model_uri, label, inputs, data)

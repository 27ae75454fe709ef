"""Step ``evaluate``: score the ``challenger`` version of a registered model and gate its promotion.

Reads ``models:/<registered_model_name>@challenger``, the current ``champion`` alias (if any) with the
metrics of the evaluate run recorded on its version, the QA set at ``qa_path``, and the tokenizer of the
download run named by the challenger's ``llmflow.download_run_id`` version tag.

Writes, in its MLflow run:
- metrics ``exact_match``, ``contains_answer``, ``latency_p50_s``, ``latency_p95_s``, ``tokens_per_second``,
  ``n_examples`` and ``promoted`` (1/0);
- ``eval_table.json``: one row per question (question, answer, prediction, exact_match, contains_answer,
  latency_s, completion_tokens), and the QA set as the run's evaluation dataset input;
- tags ``llmflow.decision`` (promoted / rejected), ``llmflow.decision_reason``, the model name and version,
  the adapter used and the QA file's sha256.

On the challenger's version it writes tags ``validation_status`` (passed / failed),
``llmflow.decision_reason`` and ``llmflow.evaluate_run_id``; when the gate passes, and only then, it
moves alias ``champion`` to that version, after every other record is written.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from llmflow.errors import InputError
from llmflow.gate import GATED_METRICS, Champion, GateDecision, Thresholds, gate, validate_fraction
from llmflow.metrics import Example, example_table, summarize
from llmflow.qa import QAPair, load_qa
from llmflow.runs import PROJECT_ROOT, TAG_DOWNLOAD_RUN, step_run

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_EVALUATE_RUN = "llmflow.evaluate_run_id"
TAG_DECISION = "llmflow.decision"
TAG_DECISION_REASON = "llmflow.decision_reason"
TAG_VALIDATION_STATUS = "validation_status"
TABLE_FILE = "eval_table.json"

# One generation: (model, tokenizer, question, max_new_tokens) -> the answer text.
Generate = Callable[[PyFuncModel, Any, str, int], str]


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str


def resolve_qa_path(qa_path: str | Path) -> Path:
    """``qa_path`` as given when it exists, else relative to the project root (where ``data/`` lives)."""
    path = Path(qa_path).expanduser()
    if not path.exists() and not path.is_absolute() and (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    return path


def validate_evaluate_options(
    qa_path: str | Path, min_exact_match: float, min_contains_answer: float, eval_max_new_tokens: int
) -> list[QAPair]:
    """Check the QA file and the gate's options without touching a model; return the QA pairs.

    Raises ``InputError`` with one line naming the bad value, so ``main`` can fail before any child run.
    """
    validate_fraction("min_exact_match", min_exact_match)
    validate_fraction("min_contains_answer", min_contains_answer)
    if isinstance(eval_max_new_tokens, bool) or not isinstance(eval_max_new_tokens, int) or eval_max_new_tokens <= 0:
        raise InputError(
            f"eval_max_new_tokens {eval_max_new_tokens!r} is not accepted; expected a positive whole number"
        )
    return load_qa(resolve_qa_path(qa_path))


def _chat_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def _generate_chat(model: PyFuncModel, tokenizer: Any, question: str, max_new_tokens: int) -> str:
    """A transformers ``llm/v1/chat`` model: OpenAI chat request in, chat completion out."""
    # The llm/v1/chat signature takes generation options in the request itself (it has no params schema);
    # decoding is greedy through the model_config that log_transformers records.
    output = model.predict({"messages": _chat_messages(question), "max_tokens": max_new_tokens})
    return output[0]["choices"][0]["message"]["content"] or ""


def _generate_from_prompt(model: PyFuncModel, tokenizer: Any, question: str, max_new_tokens: int) -> str:
    """A prompt-in, text-out pyfunc (the ONNX model): the chat template is applied here, with the model's tokenizer."""
    prompt = tokenizer.apply_chat_template(_chat_messages(question), add_generation_prompt=True, tokenize=False)
    output = model.predict(pd.DataFrame({"prompt": [prompt]}), params={"max_new_tokens": max_new_tokens})
    first = output.iloc[0, 0] if isinstance(output, pd.DataFrame) else list(output)[0]
    return str(first)


# Checked in order: a transformers model also carries the python_function flavour.
ADAPTERS: dict[str, Generate] = {"transformers": _generate_chat, "python_function": _generate_from_prompt}


def pick_adapter(flavors: Collection[str]) -> str:
    """The name of the adapter for a model with these flavours (see ``ADAPTERS``)."""
    name = next((flavor for flavor in ADAPTERS if flavor in flavors), None)
    if name is None:
        raise InputError(f"model flavours {sorted(flavors)} are not accepted; expected one of {list(ADAPTERS)}")
    return name


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


def _champion(client: MlflowClient, name: str, version: str | None) -> Champion | None:
    """The champion and the metrics of the evaluate run recorded on its version, if there is one."""
    if version is None:
        return None
    run_id = client.get_model_version(name, version).tags.get(TAG_EVALUATE_RUN)
    try:
        metrics = client.get_run(run_id).data.metrics if run_id else None
    except MlflowException:
        logger.warning("champion %s version %s names evaluate run %s, which is gone", name, version, run_id)
        metrics = None
    return Champion(version, {m: metrics[m] for m in GATED_METRICS if m in metrics} if metrics else None)


def load_tokenizer(version: ModelVersion) -> Any:
    """The tokenizer of the download run behind ``version``: it templates prompts and counts tokens."""
    from transformers import AutoTokenizer

    from llmflow.download import model_dir_from_run

    download_run_id = version.tags.get(TAG_DOWNLOAD_RUN)
    if not download_run_id:
        raise InputError(
            f"version {version.version} of registered model '{version.name}' has no '{TAG_DOWNLOAD_RUN}' tag; "
            "expected a version registered by the register step"
        )
    # Only the tokenizer files are fetched, and the tokenizer is kept in memory: the copy can go.
    with tempfile.TemporaryDirectory(prefix="llmflow-tokenizer-") as tmp:
        return AutoTokenizer.from_pretrained(model_dir_from_run(download_run_id, Path(tmp), weights=False))


def run_examples(
    generate: Generate, model: PyFuncModel, tokenizer: Any, pairs: list[QAPair], max_new_tokens: int
) -> list[Example]:
    """Ask every question once, timing each generation and counting its tokens with ``tokenizer``."""
    # One untimed call first, so the first question's latency holds no one-off start-up cost.
    generate(model, tokenizer, pairs[0].question, max_new_tokens)
    examples = []
    for number, pair in enumerate(pairs, start=1):
        started = time.perf_counter()
        prediction = generate(model, tokenizer, pair.question, max_new_tokens)
        latency = time.perf_counter() - started
        tokens = len(tokenizer(prediction, add_special_tokens=False)["input_ids"])
        examples.append(Example(pair.question, pair.answer, prediction, latency, tokens))
        logger.debug("%d/%d %.3f s %r -> %r", number, len(pairs), latency, pair.question, prediction)
    return examples


def _record_decision(
    client: MlflowClient, name: str, version: str, run_id: str, metrics: dict[str, float], decision: GateDecision
) -> None:
    """Write the decision to the run, then the version; move ``champion`` last, so it never points at a
    version whose evaluation is not recorded."""
    mlflow.log_metrics({**metrics, "promoted": float(decision.passed)})
    mlflow.set_tags({TAG_DECISION: decision.decision, TAG_DECISION_REASON: decision.reason})
    version_tags = {
        TAG_VALIDATION_STATUS: "passed" if decision.passed else "failed",
        TAG_DECISION_REASON: decision.reason,
        TAG_EVALUATE_RUN: run_id,
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.passed:
        client.set_registered_model_alias(name, CHAMPION, version)


def evaluate(
    registered_model_name: str,
    qa_path: str,
    min_exact_match: float,
    min_contains_answer: float,
    eval_max_new_tokens: int,
) -> EvaluateResult:
    """Evaluate ``models:/<registered_model_name>@challenger`` on ``qa_path`` and promote it if the gate passes."""
    params = {
        "registered_model_name": registered_model_name,
        "qa_path": qa_path,
        "min_exact_match": min_exact_match,
        "min_contains_answer": min_contains_answer,
        "eval_max_new_tokens": eval_max_new_tokens,
    }
    with step_run("evaluate", params) as run:
        pairs = validate_evaluate_options(qa_path, min_exact_match, min_contains_answer, eval_max_new_tokens)
        qa_file = resolve_qa_path(qa_path)
        client = MlflowClient()
        aliases = _aliases(client, registered_model_name)
        version = client.get_model_version(registered_model_name, aliases[CHALLENGER])
        number = str(version.version)
        champion = _champion(client, registered_model_name, aliases.get(CHAMPION))
        tokenizer = load_tokenizer(version)
        # The version, not the alias: the alias may move while this step runs.
        model = mlflow.pyfunc.load_model(f"models:/{registered_model_name}/{number}")
        adapter = pick_adapter(model.metadata.flavors)
        mlflow.set_tags(
            {
                "llmflow.registered_model_name": registered_model_name,
                "llmflow.registered_model_version": number,
                "llmflow.champion_version": champion.version if champion else "none",
                "llmflow.eval_adapter": adapter,
                "llmflow.qa_sha256": hashlib.sha256(qa_file.read_bytes()).hexdigest(),
            }
        )
        frame = pd.DataFrame({"question": [p.question for p in pairs], "answer": [p.answer for p in pairs]})
        mlflow.log_input(mlflow.data.from_pandas(frame, name=qa_file.name), context="evaluation")
        logger.info(
            "evaluating %s version %s (%s adapter) on %d questions",
            registered_model_name,
            number,
            adapter,
            len(pairs),
        )
        examples = run_examples(ADAPTERS[adapter], model, tokenizer, pairs, eval_max_new_tokens)
        metrics = summarize(examples)
        mlflow.log_table(example_table(examples), TABLE_FILE)
        decision = gate(number, metrics, champion, Thresholds(min_exact_match, min_contains_answer))
        _record_decision(client, registered_model_name, number, run.info.run_id, metrics, decision)
        logger.info("%s version %s %s: %s", registered_model_name, number, decision.decision, decision.reason)
        return EvaluateResult(run.info.run_id, number, metrics, decision.passed, decision.reason)

"""Answer scoring and summary figures for the ``evaluate`` step.

The scorers (``SCORERS``) run once per answer, inside ``mlflow.genai.evaluate``, which records each score
as an assessment on the answer's trace. An ``Example`` carries those recorded scores, so the summary and
the per-example table are computed from the same assessments the MLflow UI shows, never by scoring again.

Scoring is SQuAD-style: both texts are lowercased and stripped of punctuation, of the articles
"a", "an" and "the", and of extra whitespace before they are compared. Token F1 (SQuAD's) and ROUGE-L
come from torchmetrics, the well-kept implementations, not from code of ours.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, and collapse whitespace (SQuAD's normalisation)."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    """Whether the normalised prediction equals the normalised answer."""
    return normalize_answer(prediction) == normalize_answer(answer)


def contains_answer(prediction: str, answer: str) -> bool:
    """Whether the normalised answer occurs in the normalised prediction as whole words.

    Whole words, so that "rome" is not found in "romeo" nor "4" in "42". An answer that normalises to
    nothing (only articles or punctuation) is found only in a prediction that also normalises to nothing.
    """
    gold, predicted = normalize_answer(answer), normalize_answer(prediction)
    if not gold:
        return not predicted
    return f" {gold} " in f" {predicted} "


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD's token-overlap F1 between prediction and answer, in [0, 1] (torchmetrics' ``squad``)."""
    from torchmetrics.functional.text import squad  # imports torch: only where a score is computed

    scores = squad(
        [{"prediction_text": prediction, "id": "0"}],
        [{"answers": {"text": [answer], "answer_start": [0]}, "id": "0"}],
    )
    return float(scores["f1"]) / 100.0


def rouge_l(prediction: str, answer: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), in [0, 1] (torchmetrics' ``rouge_score``)."""
    from torchmetrics.functional.text import rouge_score

    return float(rouge_score(prediction, answer, rouge_keys="rougeL")["rougeL_fmeasure"])


# Per-example quality scores, each in [0, 1], higher is better; the names are the logged metric names.
SCORERS = {
    "exact_match": lambda prediction, answer: float(exact_match(prediction, answer)),
    "contains_answer": lambda prediction, answer: float(contains_answer(prediction, answer)),
    "token_f1": token_f1,
    "rouge_l": rouge_l,
}
QUALITY_METRICS = tuple(SCORERS)


@dataclass(frozen=True)
class Example:
    """One scored question: what was asked, expected and generated, how long it took, and its scores.

    ``scores`` holds the assessments ``mlflow.genai.evaluate`` recorded on the answer's trace, by metric name.
    """

    question: str
    answer: str
    prediction: str
    latency_s: float
    completion_tokens: int
    scores: Mapping[str, float]


def summarize(examples: Sequence[Example]) -> dict[str, float]:
    """Metrics over ``examples``: the mean of each quality score, latency percentiles, tokens/s, count.

    ``tokens_per_second`` is total completion tokens over total generation seconds, so long and short
    answers weigh as they cost.
    """
    if not examples:
        raise ValueError("cannot summarise an evaluation with no examples")
    latencies = np.array([e.latency_s for e in examples], dtype=float)
    total_seconds = float(latencies.sum())
    total_tokens = sum(e.completion_tokens for e in examples)
    return {
        **{name: float(np.mean([e.scores[name] for e in examples])) for name in QUALITY_METRICS},
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "tokens_per_second": total_tokens / total_seconds if total_seconds > 0 else 0.0,
        "n_examples": float(len(examples)),
    }


def example_table(examples: Sequence[Example]) -> dict[str, list]:
    """The per-example columns logged as ``eval_table.json``."""
    return {
        "question": [e.question for e in examples],
        "answer": [e.answer for e in examples],
        "prediction": [e.prediction for e in examples],
        **{name: [e.scores[name] for e in examples] for name in QUALITY_METRICS},
        "latency_s": [e.latency_s for e in examples],
        "completion_tokens": [e.completion_tokens for e in examples],
    }

"""Answer scoring and summary figures for the ``evaluate`` step.

Scoring is SQuAD-style: both texts are lowercased and stripped of punctuation, of the articles
"a", "an" and "the", and of extra whitespace before they are compared.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Example:
    """One scored question: what was asked, expected and generated, and how long it took."""

    question: str
    answer: str
    prediction: str
    latency_s: float
    completion_tokens: int

    @property
    def exact_match(self) -> bool:
        return exact_match(self.prediction, self.answer)

    @property
    def contains_answer(self) -> bool:
        return contains_answer(self.prediction, self.answer)


def summarize(examples: Sequence[Example]) -> dict[str, float]:
    """Metrics over ``examples``: exact_match, contains_answer (means), latency percentiles, tokens/s, count.

    ``tokens_per_second`` is total completion tokens over total generation seconds, so long and short
    answers weigh as they cost.
    """
    if not examples:
        raise ValueError("cannot summarise an evaluation with no examples")
    latencies = np.array([e.latency_s for e in examples], dtype=float)
    total_seconds = float(latencies.sum())
    total_tokens = sum(e.completion_tokens for e in examples)
    return {
        "exact_match": float(np.mean([e.exact_match for e in examples])),
        "contains_answer": float(np.mean([e.contains_answer for e in examples])),
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
        "exact_match": [e.exact_match for e in examples],
        "contains_answer": [e.contains_answer for e in examples],
        "latency_s": [e.latency_s for e in examples],
        "completion_tokens": [e.completion_tokens for e in examples],
    }

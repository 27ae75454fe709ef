"""Unit tests for answer scoring and the summary figures of the evaluate step."""

from __future__ import annotations

import pytest

from llmflow.evaluation.metrics import (
    SCORERS,
    Example,
    contains_answer,
    exact_match,
    example_table,
    normalize_answer,
    rouge_l,
    summarize,
    token_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Madrid", "madrid"),
        ("  The   Madrid.  ", "madrid"),
        ("Washington, D.C.", "washington dc"),
        ("An apple a day", "apple day"),
        ("Theatre", "theatre"),  # "the" only as a whole word
        ("the", ""),
        ("Line\nbreak\ttab", "line break tab"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "answer", "exact", "contains"),
    [
        ("Madrid", "Madrid", True, True),
        ("madrid.", "Madrid", True, True),
        ("The Pacific Ocean", "Pacific Ocean", True, True),
        ("Washington DC", "Washington, D.C.", True, True),
        ("It is Madrid, of course", "Madrid", False, True),
        ("Romeo", "Rome", False, False),  # a substring inside a word is not the answer
        ("42", "4", False, False),
        ("Paris", "Madrid", False, False),
        ("", "Madrid", False, False),
        ("I don't know", "Madrid", False, False),
        ("Mount Everest is the highest", "Mount Everest", False, True),
        ("the", "The", True, True),  # an answer that normalises to nothing matches only nothing
        ("anything", "the", False, False),
    ],
)
def test_exact_match_and_contains_answer(prediction, answer, exact, contains):
    assert exact_match(prediction, answer) is exact
    assert contains_answer(prediction, answer) is contains


def _example(prediction: str, answer: str = "Madrid", latency: float = 1.0, tokens: int = 2) -> Example:
    # In evaluate the scores are the assessments mlflow.genai.evaluate recorded; here the same scorers give them.
    scores = {name: score(prediction, answer) for name, score in SCORERS.items()}
    return Example("What is the capital of Spain?", answer, prediction, latency, tokens, scores)


def test_summarize_means_percentiles_and_throughput():
    examples = [
        _example("Madrid", latency=1.0, tokens=4),
        _example("It is Madrid", latency=2.0, tokens=6),
        _example("Paris", latency=3.0, tokens=2),
        _example("madrid", latency=4.0, tokens=8),
    ]
    metrics = summarize(examples)
    assert metrics["exact_match"] == pytest.approx(0.5)
    assert metrics["contains_answer"] == pytest.approx(0.75)
    # token F1 per example: 1, 2*(1/3*1)/(1/3+1) = 0.5, 0, 1
    assert metrics["token_f1"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    # ROUGE-L F per example: 1, 2*(1/3*1)/(1/3+1) = 0.5, 0, 1
    assert metrics["rouge_l"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert metrics["latency_p50_s"] == pytest.approx(2.5)
    assert metrics["latency_p95_s"] == pytest.approx(3.85)
    assert metrics["tokens_per_second"] == pytest.approx(20 / 10)
    assert metrics["n_examples"] == 4


def test_summarize_refuses_no_examples():
    with pytest.raises(ValueError, match="no examples"):
        summarize([])


def test_example_table_has_one_row_per_example():
    table = example_table([_example("Madrid", latency=0.5, tokens=3), _example("Paris")])
    assert list(table) == [
        "question",
        "answer",
        "prediction",
        "exact_match",
        "contains_answer",
        "token_f1",
        "rouge_l",
        "latency_s",
        "completion_tokens",
    ]
    assert table["prediction"] == ["Madrid", "Paris"]
    assert table["exact_match"] == [1.0, 0.0]
    assert table["token_f1"] == [1.0, 0.0]
    assert table["latency_s"] == [0.5, 1.0]
    assert table["completion_tokens"] == [3, 2]


@pytest.mark.parametrize(
    ("prediction", "answer", "f1"),
    [
        ("Madrid", "Madrid", 1.0),
        ("The capital is Madrid.", "Madrid", 2 * (1 / 3) / (1 / 3 + 1)),  # 'the' dropped: capital, is, madrid
        ("Leonardo da Vinci", "da Vinci", 2 * (2 / 3) / (2 / 3 + 1)),
        ("Paris", "Madrid", 0.0),
        ("", "Madrid", 0.0),
    ],
)
def test_token_f1_is_squads_token_overlap(prediction, answer, f1):
    assert token_f1(prediction, answer) == pytest.approx(f1, abs=1e-6)


@pytest.mark.parametrize(
    ("prediction", "answer", "score"),
    [
        ("Madrid", "madrid", 1.0),
        ("the cat sat", "a cat sat down", 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4)),  # LCS 'cat sat'
        ("sat cat", "cat sat", 0.5),  # LCS of length 1 out of 2 each way
        ("Paris", "Madrid", 0.0),
    ],
)
def test_rouge_l_is_the_lcs_f_measure(prediction, answer, score):
    assert rouge_l(prediction, answer) == pytest.approx(score, abs=1e-6)


# What the default gate judges by: a chat model answers in sentences.
SENTENCES = [
    ("The capital of Germany is Berlin.", "Berlin", 1.0),
    ("Berlin is the capital of Germany.", "Berlin", 1.0),
    ("The Pacific Ocean is the largest ocean on Earth.", "Pacific Ocean", 1.0),
    ("William Shakespeare wrote Romeo and Juliet.", "William Shakespeare", 1.0),
    ("The capital of Germany is Munich.", "Berlin", 0.0),
    ("The capital of Italy is Romeo.", "Rome", 0.0),  # a word that starts with the answer is not the answer
    ("I am not sure which city that is.", "Berlin", 0.0),
]


@pytest.mark.parametrize(("prediction", "answer", "score"), SENTENCES)
def test_the_default_gate_metrics_score_a_right_sentence_1_and_a_wrong_one_0(prediction, answer, score):
    from llmflow.evaluation.gate import parse_gate_metrics
    from llmflow.evaluation.inputs import EvaluationSettings

    gated = parse_gate_metrics(EvaluationSettings().gate_metrics)
    assert gated == ("contains_answer",)
    assert {name: SCORERS[name](prediction, answer) for name in gated} == {"contains_answer": score}


def test_the_recorded_metrics_that_are_not_gated_punish_a_right_sentence():
    """Why they are recorded but not gated by default: the sentence is right and they say otherwise."""
    sentence = "The capital of Germany is Berlin."
    assert SCORERS["exact_match"](sentence, "Berlin") == 0.0
    assert SCORERS["token_f1"](sentence, "Berlin") == pytest.approx(1 / 3)  # 1 of 5 tokens: 2 * 0.2 / 1.2
    assert SCORERS["rouge_l"](sentence, "Berlin") < 0.5

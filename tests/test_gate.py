"""Unit tests for the promotion gate: a pure function of figures and settings."""

from __future__ import annotations

import math

import pytest

from llmflow.errors import InputError
from llmflow.evaluation.gate import (
    Champion,
    GateConfig,
    gate,
    parse_gate_metrics,
    parse_min_scores,
    validate_fraction,
    validate_gate_config,
)

CONFIG = GateConfig(
    gate_metrics=("exact_match", "token_f1"),
    min_scores={"contains_answer": 0.5},
    champion_tolerance=0.02,
    min_quality_retained=0.9,
    max_perplexity_ratio=1.2,
)


def _m(exact: float, f1: float, contains: float = 1.0, perplexity: float = 10.0) -> dict[str, float]:
    return {"exact_match": exact, "token_f1": f1, "contains_answer": contains, "perplexity": perplexity}


def test_no_champion_no_reference_uses_the_floors_only():
    decision = gate("1", _m(0.1, 0.1, contains=0.6), None, None, CONFIG)
    assert decision.passed
    assert [c.name for c in decision.criteria] == ["floor: contains_answer"]
    assert decision.reason == "all 1 criteria hold (no champion yet; no reference)"
    failing = gate("1", _m(1.0, 1.0, contains=0.4), None, None, CONFIG)
    assert not failing.passed
    assert failing.reason == "floor: contains_answer 0.4 < floor 0.5 (no champion yet; no reference)"


def test_a_better_challenger_passes_and_a_worse_one_fails_against_the_champion():
    champion = Champion("1", _m(0.5, 0.6))
    better = gate("2", _m(0.7, 0.8), champion, None, CONFIG)
    assert better.passed
    assert [c.name for c in better.criteria] == [
        "floor: contains_answer",
        "vs champion: exact_match",
        "vs champion: token_f1",
    ]
    worse = gate("2", _m(0.47, 0.6), champion, None, CONFIG)
    assert not worse.passed
    assert worse.reason == (
        "vs champion: exact_match 0.47 < champion v1 0.5 - tolerance 0.02 = 0.48 (champion is version 1; no reference)"
    )


def test_the_tolerance_is_inclusive():
    # 0.48 read back from a store may be 0.48000000000000004 below: a tie must pass.
    assert gate("2", _m(0.48, 0.58), Champion("1", _m(0.5, 0.6)), None, CONFIG).passed


@pytest.mark.parametrize(
    ("champion", "note"),
    [
        (Champion("2", None), "re-evaluation of champion version 2"),
        (Champion("1", None), "champion version 1 has no recorded evaluation"),
        (Champion("1", {"exact_match": 1.0}), "champion version 1 has no recorded evaluation"),
    ],
)
def test_champion_cases_without_comparable_figures_use_the_floors(champion, note):
    decision = gate("2", _m(0.0, 0.0), champion, None, CONFIG)
    assert decision.passed
    assert decision.reason == f"all 1 criteria hold ({note}; no reference)"


def test_quality_collapse_against_the_reference_fails_even_without_a_champion():
    reference = _m(0.9, 0.9, perplexity=10.0)
    collapsed = gate("1", _m(0.1, 0.2, perplexity=80.0), None, reference, CONFIG)
    assert not collapsed.passed
    failed = {c.name for c in collapsed.criteria if not c.passed}
    assert failed == {"quality retained: exact_match", "quality retained: token_f1", "perplexity ratio"}
    assert "perplexity ratio 80 / reference 10 = 8.000 > 1.2" in collapsed.reason
    kept = gate("1", _m(0.85, 0.9, perplexity=11.0), None, reference, CONFIG)
    assert kept.passed, kept.reason
    assert [c.detail for c in kept.criteria if c.name == "perplexity ratio"] == ["11 / reference 10 = 1.100 <= 1.2"]


def test_perplexity_ratio_alone_can_refuse():
    decision = gate("1", _m(0.9, 0.9, perplexity=13.0), None, _m(0.9, 0.9, perplexity=10.0), CONFIG)
    assert not decision.passed
    assert [c.name for c in decision.criteria if not c.passed] == ["perplexity ratio"]


def test_a_metric_the_reference_scores_zero_on_is_not_judged_for_retention():
    decision = gate("1", _m(0.0, 0.5), None, _m(0.0, 0.5), CONFIG)
    assert decision.passed
    assert "quality retained: exact_match" not in {c.name for c in decision.criteria}
    assert "quality retained: token_f1" in {c.name for c in decision.criteria}


def test_missing_figures_are_a_programming_error():
    with pytest.raises(ValueError, match=r"challenger figures lack \['token_f1'\]"):
        gate("1", {"exact_match": 1.0, "contains_answer": 1.0}, None, None, CONFIG)
    with pytest.raises(ValueError, match=r"reference figures lack \['perplexity'\]"):
        gate("1", _m(1, 1), None, {"exact_match": 1.0, "token_f1": 1.0, "contains_answer": 1.0}, CONFIG)


def test_parse_gate_metrics_and_min_scores():
    assert parse_gate_metrics(" exact_match, rouge_l ,exact_match") == ("exact_match", "rouge_l")
    assert parse_min_scores("contains_answer=0.5, token_f1=0.25") == {"contains_answer": 0.5, "token_f1": 0.25}
    assert parse_min_scores("none") == {}
    assert parse_min_scores("") == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: parse_gate_metrics("exact_match,bleu"),
            r"^gate_metrics names metric 'bleu', which does not exist; "
            r"expected one of exact_match, contains_answer, token_f1, rouge_l$",
        ),
        (lambda: parse_gate_metrics(" , "), r"^gate_metrics ' , ' is not accepted"),
        (lambda: parse_min_scores("accuracy=0.5"), r"^min_scores names metric 'accuracy', which does not exist"),
        (lambda: parse_min_scores("token_f1"), r"^min_scores entry 'token_f1' is not accepted; expected metric=value"),
        (lambda: parse_min_scores("token_f1=high"), r"^min_scores entry 'token_f1=high' has a value that is not"),
        (lambda: parse_min_scores("token_f1=1.5"), r"^min_scores token_f1 1.5 is not accepted; expected a fraction"),
    ],
)
def test_bad_gate_settings_name_the_value(call, message):
    with pytest.raises(InputError, match=message):
        call()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"champion_tolerance": -0.1}, r"^champion_tolerance -0.1 is not accepted"),
        ({"min_quality_retained": 1.5}, r"^min_quality_retained 1.5 is not accepted"),
        ({"max_perplexity_ratio": 0.9}, r"^max_perplexity_ratio 0.9 is not accepted; expected a number >= 1"),
        ({"max_perplexity_ratio": math.nan}, r"^max_perplexity_ratio nan is not accepted"),
    ],
)
def test_validate_gate_config(changes, message):
    config = GateConfig(**{**CONFIG.__dict__, **changes})
    with pytest.raises(InputError, match=message):
        validate_gate_config(config)
    validate_gate_config(CONFIG)


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, True, "0.5"])
def test_validate_fraction_refuses(value):
    with pytest.raises(InputError, match=r"^min_x .* is not accepted; expected a fraction between 0 and 1"):
        validate_fraction("min_x", value)

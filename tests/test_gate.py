"""Unit tests for the promotion gate: a pure function of figures, per-question scores and settings."""

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
from llmflow.evaluation.inputs import EvaluationSettings
from llmflow.evaluation.paired import CORRECT_AT, PairedCount, allowed_questions, paired_count

CONFIG = GateConfig(
    gate_metrics=("exact_match", "token_f1"),
    min_scores={"contains_answer": 0.5},
    champion_tolerance=0.02,
    min_quality_retained=0.9,
    max_perplexity_ratio=1.2,
    max_paired_regressions=0.1,
)
# The gate as evaluate runs it by default (test_defaults_are_the_options_defaults keeps the two equal).
DEFAULT = GateConfig(
    gate_metrics=("contains_answer",),
    min_scores={"contains_answer": 0.5},
    champion_tolerance=0.02,
    min_quality_retained=0.0,
    max_perplexity_ratio=1.2,
    max_paired_regressions=0.1,
)
METRICS = ("exact_match", "contains_answer", "token_f1", "rouge_l")


def _m(exact: float, f1: float, contains: float = 1.0, perplexity: float = 10.0) -> dict[str, float]:
    return {"exact_match": exact, "token_f1": f1, "contains_answer": contains, "perplexity": perplexity}


def _questions(rights: str) -> list[dict[str, float]]:
    """Per-question scores from a string of 1 (right) and 0 (wrong), the same on every metric."""
    return [dict.fromkeys(METRICS, float(mark)) for mark in rights]


def _figures(scores: list[dict[str, float]], perplexity: float = 10.0) -> dict[str, float]:
    """The means of ``scores``, as summarize gives them, with a perplexity."""
    return {**{m: sum(s[m] for s in scores) / len(scores) for m in METRICS}, "perplexity": perplexity}


def _judge(challenger: str, reference: str, config: GateConfig = DEFAULT, champion: Champion | None = None, **ppl):
    """Gate a challenger against a reference, both given as strings of right (1) and wrong (0) answers."""
    mine, theirs = _questions(challenger), _questions(reference)
    return gate(
        "2",
        _figures(mine, ppl.get("challenger_ppl", 10.0)),
        champion,
        _figures(theirs, ppl.get("reference_ppl", 10.0)),
        config,
        challenger_scores=mine,
        reference_scores=theirs,
    )


def test_defaults_are_the_options_defaults():
    settings = EvaluationSettings()
    assert parse_gate_metrics(settings.gate_metrics) == DEFAULT.gate_metrics
    assert parse_min_scores(settings.min_scores) == DEFAULT.min_scores
    assert (
        settings.champion_tolerance,
        settings.min_quality_retained,
        settings.max_perplexity_ratio,
        settings.max_paired_regressions,
    ) == (
        DEFAULT.champion_tolerance,
        DEFAULT.min_quality_retained,
        DEFAULT.max_perplexity_ratio,
        DEFAULT.max_paired_regressions,
    )


# Paired counts.


def test_paired_count_counts_each_kind_of_disagreement_exactly():
    #               agree right, regression x2, improvement, agree wrong
    challenger = _questions("100100")
    reference = _questions("111000")
    count = paired_count(challenger, reference, "contains_answer")
    assert count == PairedCount(regressions=2, improvements=1, questions=6)
    assert count.net == 1
    assert paired_count(reference, challenger, "contains_answer").net == -1


def test_a_question_is_right_from_correct_at_up():
    mine = [{"token_f1": CORRECT_AT}, {"token_f1": CORRECT_AT - 0.01}]
    theirs = [{"token_f1": CORRECT_AT - 0.01}, {"token_f1": CORRECT_AT}]
    assert paired_count(mine, theirs, "token_f1") == PairedCount(regressions=1, improvements=1, questions=2)


def test_paired_count_refuses_unaligned_scores():
    with pytest.raises(ValueError, match=r"^paired scores differ in length: challenger 2, other 3$"):
        paired_count(_questions("11"), _questions("111"), "exact_match")
    with pytest.raises(ValueError, match=r"^question 0 has no 'rouge_l' score for both models$"):
        paired_count([{"exact_match": 1.0}], [{"exact_match": 1.0}], "rouge_l")
    with pytest.raises(ValueError, match=r"no questions"):
        paired_count([], [], "exact_match")


@pytest.mark.parametrize(
    ("fraction", "questions", "allowed"),
    [(0.1, 10, 1), (0.1, 5, 0), (0.1, 30, 3), (0.29, 100, 29), (0.02, 60, 1), (0.0, 10, 0), (1.0, 7, 7)],
)
def test_allowed_questions_rounds_down_to_whole_questions(fraction, questions, allowed):
    assert allowed_questions(fraction, questions) == allowed


def test_paired_count_describes_itself_with_its_figures():
    assert PairedCount(2, 1, 10).describe(1) == "2 regressions, 1 improvement of 10 questions: net 1 <= allowed 1"
    assert PairedCount(1, 0, 5).describe(0) == "1 regression, 0 improvements of 5 questions: net 1 > allowed 0"


# Paired vs reference.


def test_a_challenger_that_loses_none_passes():
    decision = _judge("1111111100", "1111111100")
    assert decision.passed, decision.reason
    assert [c.name for c in decision.criteria] == [
        "floor: contains_answer",
        "paired vs reference: contains_answer",
        "perplexity ratio",
    ]
    assert decision.criteria[1].detail == (
        "0 regressions, 0 improvements of 10 questions: net 0 <= allowed 1 (max_paired_regressions 0.1)"
    )


def test_a_challenger_that_loses_more_than_the_allowed_share_is_refused():
    decision = _judge("1111110000", "1111111100")
    assert not decision.passed
    assert decision.reason == (
        "paired vs reference: contains_answer 2 regressions, 0 improvements of 10 questions: net 2 > allowed 1 "
        "(max_paired_regressions 0.1) (no champion yet)"
    )
    assert _judge("1111111000", "1111111100").passed  # one lost of ten: within 0.1
    strict = GateConfig(**{**DEFAULT.__dict__, "max_paired_regressions": 0})
    assert not _judge("1111111000", "1111111100", strict).passed


def test_improvements_offset_regressions():
    decision = _judge("0011111111", "1111111100")  # lost two, gained two
    assert decision.passed, decision.reason
    assert "2 regressions, 2 improvements of 10 questions: net 0 <= allowed 1" in decision.criteria[1].detail


def test_a_correct_sentence_against_a_one_word_reference_is_no_regression():
    """The case the old ratios got wrong: token F1 punishes a sentence, contains_answer does not."""
    from llmflow.evaluation.metrics import SCORERS

    def scores(prediction: str) -> dict[str, float]:
        return {name: score(prediction, "Berlin") for name, score in SCORERS.items()}

    mine, theirs = [scores("The capital of Germany is Berlin.")], [scores("Berlin")]
    figures = {**_figures(mine), "perplexity": 10.0}
    refs = {**_figures(theirs), "perplexity": 10.0}
    config = GateConfig(**{**DEFAULT.__dict__, "max_paired_regressions": 0.0})
    assert gate("2", figures, None, refs, config, challenger_scores=mine, reference_scores=theirs).passed
    token_f1 = GateConfig(**{**config.__dict__, "gate_metrics": ("token_f1",)})
    assert not gate("2", figures, None, refs, token_f1, challenger_scores=mine, reference_scores=theirs).passed


def test_small_means_do_not_swing_the_default_gate():
    # Reference 0.2, challenger 0.1 on ten questions: a ratio of 0.5, but one question lost net.
    decision = _judge("1000000000", "1100000000", GateConfig(**{**DEFAULT.__dict__, "min_scores": {}}))
    assert decision.passed, decision.reason
    assert [c.name for c in decision.criteria] == ["paired vs reference: contains_answer", "perplexity ratio"]


def test_a_reference_needs_per_question_scores():
    with pytest.raises(ValueError, match=r"question by question: challenger_scores and reference_scores needed"):
        gate("1", _m(1, 1), None, _m(1, 1), CONFIG)
    with pytest.raises(ValueError, match=r"^paired scores differ in length"):
        gate("1", _m(1, 1), None, _m(1, 1), CONFIG, challenger_scores=_questions("1"), reference_scores=[])


# The ratio of means, opt-in and floored.


def test_quality_retained_is_off_by_default_and_judged_when_asked():
    assert "quality retained: contains_answer" not in {c.name for c in _judge("1111100000", "1111111111").criteria}
    asked = GateConfig(**{**DEFAULT.__dict__, "min_quality_retained": 0.9, "max_paired_regressions": 0.5})
    decision = _judge("1111111000", "1111111111", asked)  # 0.7 of a reference at 1.0
    assert not decision.passed
    assert [c.name for c in decision.criteria if not c.passed] == ["quality retained: contains_answer"]
    assert "quality retained: contains_answer 0.7 / reference 1 = 0.700 < 0.9" in decision.reason


@pytest.mark.parametrize(
    ("challenger", "reference", "why"),
    [
        ("0" * 10, "1111000000", "four questions right of ten: under five questions' worth"),
        ("0" * 60, "1" * 10 + "0" * 50, "ten right of sixty: a mean under 0.2"),
        ("0" * 10, "0" * 10, "nothing right: a ratio to 0 says nothing"),
    ],
)
def test_a_ratio_is_not_judged_below_its_floor(challenger: str, reference: str, why: str):
    asked = GateConfig(
        **{**DEFAULT.__dict__, "min_scores": {}, "min_quality_retained": 0.9, "max_paired_regressions": 1}
    )
    decision = _judge(challenger, reference, asked)
    assert decision.passed, why
    assert "quality retained: contains_answer" not in {c.name for c in decision.criteria}, why
    assert decision.reason.endswith(
        "(no champion yet; quality retained not judged for contains_answer: reference under a mean of 0.2 "
        "or 5 questions' worth)"
    )


def test_a_ratio_is_judged_at_its_floor():
    asked = GateConfig(
        **{**DEFAULT.__dict__, "min_scores": {}, "min_quality_retained": 0.9, "max_paired_regressions": 1}
    )
    decision = _judge("1111000000", "1111100000", asked)  # five right: at the floor
    assert [c.detail for c in decision.criteria if c.name == "quality retained: contains_answer"] == [
        "0.4 / reference 0.5 = 0.800 < 0.9"
    ]


def test_quality_collapse_against_the_reference_fails_even_without_a_champion():
    collapsed = _judge("1000000000", "1111111111", CONFIG, challenger_ppl=80.0)
    assert not collapsed.passed
    failed = {c.name for c in collapsed.criteria if not c.passed}
    assert failed == {
        "floor: contains_answer",
        "paired vs reference: exact_match",
        "paired vs reference: token_f1",
        "quality retained: exact_match",
        "quality retained: token_f1",
        "perplexity ratio",
    }
    assert "perplexity ratio 80 / reference 10 = 8.000 > 1.2" in collapsed.reason
    kept = _judge("1111111111", "1111111111", CONFIG, challenger_ppl=11.0)
    assert kept.passed, kept.reason
    assert [c.detail for c in kept.criteria if c.name == "perplexity ratio"] == ["11 / reference 10 = 1.100 <= 1.2"]


def test_perplexity_ratio_alone_can_refuse():
    decision = _judge("1111111111", "1111111111", challenger_ppl=13.0)
    assert not decision.passed
    assert [c.name for c in decision.criteria if not c.passed] == ["perplexity ratio"]


# The champion.


def test_no_champion_no_reference_uses_the_floors_only():
    decision = gate("1", _m(0.1, 0.1, contains=0.6), None, None, CONFIG)
    assert decision.passed
    assert [c.name for c in decision.criteria] == ["floor: contains_answer"]
    assert decision.reason == "all 1 criteria hold (no champion yet; no reference)"
    failing = gate("1", _m(1.0, 1.0, contains=0.4), None, None, CONFIG)
    assert not failing.passed
    assert failing.reason == "floor: contains_answer 0.4 < floor 0.5 (no champion yet; no reference)"


def test_a_better_challenger_passes_and_a_worse_one_fails_against_the_champion_on_means():
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


def test_the_champion_is_compared_question_by_question_when_its_scores_are_known():
    champion_scores = _questions("1111111110")
    champion = Champion("1", _figures(champion_scores), champion_scores)

    def judge(rights: str, tolerance: float = 0.02):
        mine = _questions(rights)
        config = GateConfig(**{**DEFAULT.__dict__, "champion_tolerance": tolerance})
        return gate("2", _figures(mine), champion, None, config, challenger_scores=mine)

    same = judge("1111111110")
    assert same.passed, same.reason
    assert [c.name for c in same.criteria] == ["floor: contains_answer", "paired vs champion: contains_answer"]
    # Trading one question for another loses nothing net; the means alone would say the same, but not why.
    assert judge("1111111101").passed
    lost = judge("1111111100")
    assert not lost.passed
    assert lost.reason == (
        "paired vs champion: contains_answer 1 regression, 0 improvements of 10 questions: net 1 > allowed 0 "
        "(champion_tolerance 0.02) (champion is version 1; no reference)"
    )
    assert judge("1111111100", tolerance=0.1).passed


def test_a_champion_without_scores_falls_back_to_its_means():
    mine = _questions("1111111100")
    decision = gate(
        "2", _figures(mine), Champion("1", _figures(_questions("1" * 10))), None, DEFAULT, challenger_scores=mine
    )
    assert [c.name for c in decision.criteria if not c.passed] == ["vs champion: contains_answer"]


@pytest.mark.parametrize(
    ("champion", "note"),
    [
        (Champion("2", None), "re-evaluation of champion version 2"),
        (Champion("2", None, _questions("0")), "re-evaluation of champion version 2"),
        (Champion("1", None), "champion version 1 has no recorded evaluation"),
        (Champion("1", {"exact_match": 1.0}), "champion version 1 has no recorded evaluation"),
    ],
)
def test_champion_cases_without_comparable_figures_use_the_floors(champion, note):
    decision = gate("2", _m(0.0, 0.0), champion, None, CONFIG)
    assert decision.passed
    assert decision.reason == f"all 1 criteria hold ({note}; no reference)"


def test_missing_figures_are_a_programming_error():
    with pytest.raises(ValueError, match=r"challenger figures lack \['token_f1'\]"):
        gate("1", {"exact_match": 1.0, "contains_answer": 1.0}, None, None, CONFIG)
    with pytest.raises(ValueError, match=r"reference figures lack \['perplexity'\]"):
        gate("1", _m(1, 1), None, {"exact_match": 1.0, "token_f1": 1.0, "contains_answer": 1.0}, CONFIG)


# Settings.


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
        (
            {"max_paired_regressions": 1.5},
            r"^max_paired_regressions 1.5 is not accepted; expected a fraction between 0 and 1 \(e.g. 0.5\)$",
        ),
        ({"max_paired_regressions": -0.1}, r"^max_paired_regressions -0.1 is not accepted; expected a fraction"),
        ({"max_paired_regressions": math.nan}, r"^max_paired_regressions nan is not accepted; expected a fraction"),
        ({"max_paired_regressions": "0.1"}, r"^max_paired_regressions '0.1' is not accepted; expected a fraction"),
    ],
)
def test_validate_gate_config(changes, message):
    config = GateConfig(**{**CONFIG.__dict__, **changes})
    with pytest.raises(InputError, match=message):
        validate_gate_config(config)
    validate_gate_config(CONFIG)
    validate_gate_config(DEFAULT)


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, True, "0.5"])
def test_validate_fraction_refuses(value):
    with pytest.raises(InputError, match=r"^min_x .* is not accepted; expected a fraction between 0 and 1"):
        validate_fraction("min_x", value)

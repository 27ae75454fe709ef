"""Unit tests for the promotion gate: a pure function of metrics and thresholds."""

from __future__ import annotations

import math

import pytest

from llmflow.errors import InputError
from llmflow.gate import Champion, Thresholds, gate, validate_fraction

DEFAULT = Thresholds(min_exact_match=0.0, min_contains_answer=0.5)


def _m(contains: float, exact: float) -> dict[str, float]:
    return {"contains_answer": contains, "exact_match": exact, "n_examples": 5.0}


@pytest.mark.parametrize(
    ("challenger", "champion", "thresholds", "passed", "reason"),
    [
        pytest.param(
            _m(0.98, 0.95),
            None,
            DEFAULT,
            True,
            "contains_answer 0.980 >= 0.500 and exact_match 0.950 >= 0.000 (no champion yet)",
            id="no-champion-meets-thresholds",
        ),
        pytest.param(
            _m(0.4, 0.4),
            None,
            DEFAULT,
            False,
            "contains_answer 0.400 < 0.500 (no champion yet)",
            id="no-champion-below-threshold",
        ),
        pytest.param(
            _m(0.5, 0.0),
            None,
            DEFAULT,
            True,
            "contains_answer 0.500 >= 0.500 and exact_match 0.000 >= 0.000 (no champion yet)",
            id="exactly-at-threshold",
        ),
        pytest.param(
            _m(0.9, 0.8),
            Champion("1", _m(0.9, 0.8)),
            DEFAULT,
            True,
            "contains_answer 0.900 >= 0.500 and exact_match 0.800 >= 0.000 and "
            "contains_answer 0.900 >= champion's 0.900 and exact_match 0.800 >= champion's 0.800 "
            "(champion is version 1)",
            id="tie-with-champion",
        ),
        pytest.param(
            _m(1.0, 0.7),
            Champion("1", _m(0.9, 0.8)),
            DEFAULT,
            False,
            "exact_match 0.700 < champion's 0.800 (champion is version 1)",
            id="regression-on-exact-match",
        ),
        pytest.param(
            _m(0.4, 0.4),
            Champion("3", _m(0.3, 0.3)),
            DEFAULT,
            False,
            "contains_answer 0.400 < 0.500 (champion is version 3)",
            id="better-than-champion-but-below-threshold",
        ),
        pytest.param(
            _m(0.3, 0.2),
            Champion("3", _m(0.9, 0.9)),
            DEFAULT,
            False,
            "contains_answer 0.300 < 0.500 and contains_answer 0.300 < champion's 0.900 and "
            "exact_match 0.200 < champion's 0.900 (champion is version 3)",
            id="worse-everywhere",
        ),
        pytest.param(
            _m(0.6, 0.5),
            Champion("2", _m(0.9, 0.9)),
            DEFAULT,
            True,
            "contains_answer 0.600 >= 0.500 and exact_match 0.500 >= 0.000 (re-evaluation of champion version 2)",
            id="champion-is-challenger-meets-thresholds",
        ),
        pytest.param(
            _m(0.6, 0.5),
            Champion("2", _m(0.9, 0.9)),
            Thresholds(min_exact_match=0.6, min_contains_answer=0.5),
            False,
            "exact_match 0.500 < 0.600 (re-evaluation of champion version 2)",
            id="champion-is-challenger-below-threshold",
        ),
        pytest.param(
            _m(0.6, 0.1),
            Champion("1", None),
            DEFAULT,
            True,
            "contains_answer 0.600 >= 0.500 and exact_match 0.100 >= 0.000 "
            "(champion version 1 has no recorded evaluation)",
            id="champion-without-evaluation",
        ),
        pytest.param(
            _m(0.6, 0.1),
            Champion("1", {"contains_answer": 0.9}),
            DEFAULT,
            True,
            "contains_answer 0.600 >= 0.500 and exact_match 0.100 >= 0.000 "
            "(champion version 1 has no recorded evaluation)",
            id="champion-evaluation-lacks-a-metric",
        ),
    ],
)
def test_gate(challenger, champion, thresholds, passed, reason):
    decision = gate("2", challenger, champion, thresholds)
    assert decision.passed is passed
    assert decision.decision == ("promoted" if passed else "rejected")
    assert decision.reason == reason


def test_gate_tie_survives_float_rounding():
    decision = gate("2", _m(0.3, 0.3), Champion("1", _m(0.1 + 0.2, 0.1 + 0.2)), Thresholds(0.0, 0.0))
    assert 0.3 < 0.1 + 0.2  # the champion is ahead by a rounding error only
    assert decision.passed


def test_gate_needs_the_gated_metrics():
    with pytest.raises(ValueError, match="exact_match"):
        gate("1", {"contains_answer": 1.0}, None, DEFAULT)


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_validate_fraction_refuses(value):
    with pytest.raises(InputError, match=r"^min_exact_match .* is not accepted; expected a fraction between 0 and 1"):
        validate_fraction("min_exact_match", value)


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_validate_fraction_accepts(value):
    validate_fraction("min_exact_match", value)

"""The promotion gate: may a challenger become ``champion``?

A pure function of the challenger's metrics, the champion's (if any) and the thresholds, so every
rule is unit-testable without a tracking store.

- No champion: the challenger must meet the absolute thresholds.
- A champion with a recorded evaluation: the challenger must also be at least as good on every
  gated metric (a tie passes).
- The champion is the challenger (a re-evaluation), or the champion has no recorded evaluation:
  only the absolute thresholds apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from llmflow.errors import InputError

# Metrics the gate compares, in the order the reason names them.
GATED_METRICS = ("contains_answer", "exact_match")
# Metrics are means of 0/1 scores read back from the tracking store; a tie must not fail on rounding.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Thresholds:
    """Absolute floors, each a fraction in [0, 1]."""

    min_exact_match: float
    min_contains_answer: float

    def floor(self, metric: str) -> float:
        return {"exact_match": self.min_exact_match, "contains_answer": self.min_contains_answer}[metric]


@dataclass(frozen=True)
class Champion:
    """The version behind the ``champion`` alias and the metrics of its recorded evaluation (None if none)."""

    version: str
    metrics: Mapping[str, float] | None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str

    @property
    def decision(self) -> str:
        return "promoted" if self.passed else "rejected"


def validate_fraction(name: str, value: float) -> None:
    """Raise ``InputError`` unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or not 0 <= value <= 1:
        raise InputError(f"{name} {value!r} is not accepted; expected a fraction between 0 and 1 (e.g. 0.5)")


def _champion_case(challenger_version: str, champion: Champion | None) -> str:
    if champion is None:
        return "none"
    if champion.version == challenger_version:
        return "same"
    if not champion.metrics or any(m not in champion.metrics for m in GATED_METRICS):
        return "unevaluated"
    return "compare"


# Per case: the note that ends the reason, and whether the champion's metrics are compared.
_CASES: dict[str, tuple[str, bool]] = {
    "none": ("no champion yet", False),
    "same": ("re-evaluation of champion version {version}", False),
    "unevaluated": ("champion version {version} has no recorded evaluation", False),
    "compare": ("champion is version {version}", True),
}


def _check(metric: str, value: float, bound: float, label: str) -> tuple[bool, str]:
    ok = value >= bound - TOLERANCE
    return ok, f"{metric} {value:.3f} {'>=' if ok else '<'} {label}{bound:.3f}"


def gate(
    challenger_version: str,
    challenger: Mapping[str, float],
    champion: Champion | None,
    thresholds: Thresholds,
) -> GateDecision:
    """Decide whether ``challenger_version`` (with metrics ``challenger``) may become champion.

    The reason is one line with the figures: every check when it passes, the failing ones when not.
    """
    missing = [m for m in GATED_METRICS if m not in challenger]
    if missing:
        raise ValueError(f"challenger metrics lack {missing}; expected {list(GATED_METRICS)}")
    case = _champion_case(challenger_version, champion)
    note, compare = _CASES[case]
    checks = [_check(m, challenger[m], thresholds.floor(m), "") for m in GATED_METRICS]
    if compare:
        checks += [_check(m, challenger[m], champion.metrics[m], "champion's ") for m in GATED_METRICS]
    passed = all(ok for ok, _ in checks)
    shown = [text for ok, text in checks if ok == passed]
    version = champion.version if champion else ""
    return GateDecision(passed, f"{' and '.join(shown)} ({note.format(version=version)})")

"""The promotion gate: may a challenger become ``champion``?

A pure function of the challenger's figures, the champion's (if any), the reference's (if any) and
the gate's settings, so every rule is unit-testable without a tracking store. The challenger passes
only when every criterion holds:

- **floor**: each metric named in ``min_scores`` is at least its floor (always applied; with no
  champion and no reference these are the only criteria);
- **champion**: on each gated metric the challenger is not worse than the current champion by more
  than ``champion_tolerance`` (skipped when there is no champion, when the challenger *is* the
  champion, or when the champion has no recorded evaluation);
- **reference**: on each gated metric the challenger keeps at least ``min_quality_retained`` of the
  reference's score (a metric the reference scores 0 on is not judged), and its perplexity is at most
  ``max_perplexity_ratio`` times the reference's (skipped when there is no reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmflow.errors import InputError
from llmflow.evaluation.metrics import QUALITY_METRICS

# Metrics are means of per-example scores read back from the tracking store; a tie must not fail on rounding.
EPSILON = 1e-9


@dataclass(frozen=True)
class GateConfig:
    """The gate's settings, as given to ``evaluate`` (all of them are MLproject parameters)."""

    gate_metrics: tuple[str, ...]
    min_scores: Mapping[str, float]
    champion_tolerance: float
    min_quality_retained: float
    max_perplexity_ratio: float


@dataclass(frozen=True)
class Champion:
    """The version behind the ``champion`` alias and its evaluated figures (None if it has none)."""

    version: str
    metrics: Mapping[str, float] | None


@dataclass(frozen=True)
class Criterion:
    """One check of the gate, with the figures it compared."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def decision(self) -> str:
        return "promoted" if self.passed else "rejected"


def validate_fraction(name: str, value: float) -> None:
    """Raise ``InputError`` unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or not 0 <= value <= 1:
        raise InputError(f"{name} {value!r} is not accepted; expected a fraction between 0 and 1 (e.g. 0.5)")


def _check_metric_name(setting: str, name: str) -> str:
    if name not in QUALITY_METRICS:
        raise InputError(
            f"{setting} names metric '{name}', which does not exist; expected one of {', '.join(QUALITY_METRICS)}"
        )
    return name


def parse_gate_metrics(text: str) -> tuple[str, ...]:
    """``"exact_match,token_f1"`` -> the metrics compared with the champion and the reference."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not names:
        raise InputError(f"gate_metrics {text!r} is not accepted; expected a comma-separated list of metric names")
    return tuple(dict.fromkeys(_check_metric_name("gate_metrics", name) for name in names))


def parse_min_scores(text: str) -> dict[str, float]:
    """``"contains_answer=0.5,exact_match=0.2"`` -> floors by metric; ``""`` or ``"none"`` -> no floors."""
    floors: dict[str, float] = {}
    if str(text).strip().lower() in ("", "none"):
        return floors
    for part in str(text).split(","):
        name, sep, value = part.partition("=")
        if not sep:
            raise InputError(
                f"min_scores entry {part.strip()!r} is not accepted; expected metric=value, e.g. 'token_f1=0.5'"
            )
        try:
            floor = float(value)
        except ValueError:
            raise InputError(f"min_scores entry {part.strip()!r} has a value that is not a number") from None
        validate_fraction(f"min_scores {name.strip()}", floor)
        floors[_check_metric_name("min_scores", name.strip())] = floor
    return floors


def validate_gate_config(config: GateConfig) -> None:
    """Raise ``InputError`` for a tolerance or ratio out of range (metric names are checked when parsed)."""
    validate_fraction("champion_tolerance", config.champion_tolerance)
    validate_fraction("min_quality_retained", config.min_quality_retained)
    ratio = config.max_perplexity_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or math.isnan(ratio) or ratio < 1:
        raise InputError(
            f"max_perplexity_ratio {ratio!r} is not accepted; expected a number >= 1 (e.g. 1.2 allows 20% more)"
        )


def _at_least(name: str, value: float, bound: float, label: str) -> Criterion:
    ok = value >= bound - EPSILON
    return Criterion(name, ok, f"{value:.4g} {'>=' if ok else '<'} {label} {bound:.4g}")


def _champion_criteria(
    challenger_version: str, challenger: Mapping[str, float], champion: Champion | None, config: GateConfig
) -> tuple[list[Criterion], str]:
    if champion is None:
        return [], "no champion yet"
    if champion.version == challenger_version:
        return [], f"re-evaluation of champion version {champion.version}"
    if not champion.metrics or any(m not in champion.metrics for m in config.gate_metrics):
        return [], f"champion version {champion.version} has no recorded evaluation"
    criteria = [
        _at_least(
            f"vs champion: {m}",
            challenger[m],
            champion.metrics[m] - config.champion_tolerance,
            f"champion v{champion.version} {champion.metrics[m]:.4g} - tolerance {config.champion_tolerance:g} =",
        )
        for m in config.gate_metrics
    ]
    return criteria, f"champion is version {champion.version}"


def _reference_criteria(
    challenger: Mapping[str, float], reference: Mapping[str, float] | None, config: GateConfig
) -> list[Criterion]:
    if reference is None:
        return []
    criteria = []
    for m in config.gate_metrics:
        if reference[m] <= 0:
            continue  # nothing to retain: a ratio to 0 says nothing
        retained = challenger[m] / reference[m]
        kept = retained >= config.min_quality_retained - EPSILON
        criteria.append(
            Criterion(
                f"quality retained: {m}",
                kept,
                f"{challenger[m]:.4g} / reference {reference[m]:.4g} = {retained:.3f} "
                f"{'>=' if kept else '<'} {config.min_quality_retained:g}",
            )
        )
    ratio = challenger["perplexity"] / reference["perplexity"]
    ok = ratio <= config.max_perplexity_ratio + EPSILON
    criteria.append(
        Criterion(
            "perplexity ratio",
            ok,
            f"{challenger['perplexity']:.4g} / reference {reference['perplexity']:.4g} = {ratio:.3f} "
            f"{'<=' if ok else '>'} {config.max_perplexity_ratio:g}",
        )
    )
    return criteria


def gate(
    challenger_version: str,
    challenger: Mapping[str, float],
    champion: Champion | None,
    reference: Mapping[str, float] | None,
    config: GateConfig,
) -> GateDecision:
    """Decide whether ``challenger_version`` (with figures ``challenger``) may become champion.

    ``challenger`` and ``reference`` hold the quality metrics and, for the reference criteria,
    ``perplexity``. The reason is one line: every failing criterion when it fails, a count when it passes.
    """
    needed = set(config.gate_metrics) | set(config.min_scores) | ({"perplexity"} if reference is not None else set())
    for label, figures in (("challenger", challenger), ("reference", reference)):
        missing = sorted(needed - set(figures)) if figures is not None else []
        if missing:
            raise ValueError(f"{label} figures lack {missing}")
    criteria = [_at_least(f"floor: {m}", challenger[m], floor, "floor") for m, floor in config.min_scores.items()]
    champion_criteria, note = _champion_criteria(challenger_version, challenger, champion, config)
    criteria += champion_criteria + _reference_criteria(challenger, reference, config)
    if reference is None:
        note += "; no reference"
    failed = [c for c in criteria if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name} {c.detail}" for c in failed) + f" ({note})"
    else:
        reason = f"all {len(criteria)} criteria hold ({note})"
    return GateDecision(not failed, reason, criteria)

"""The promotion gate: may a challenger become ``champion``?

A pure function of the challenger's figures, the champion's (if any), the reference's (if any), their
per-question scores and the gate's settings, so every rule is unit-testable without a tracking store. The
challenger passes only when every criterion holds:

- **floor**: each metric named in ``min_scores`` is at least its floor (always applied; with no
  champion and no reference these are the only criteria);
- **paired vs reference** (with a reference): on each gated metric, the questions the reference got right and
  the challenger wrong, net of those the challenger got right and the reference wrong, are at most
  ``max_paired_regressions`` of the questions (``llmflow.evaluation.paired``);
- **perplexity ratio** (with a reference): the challenger's perplexity is at most ``max_perplexity_ratio``
  times the reference's; this is the main measure of what int4 costs, since it reads every token of the
  held-out text where the questions give one bit each;
- **champion** (skipped when there is no champion, when the challenger *is* the champion, or when the champion
  has no recorded evaluation): on each gated metric the challenger does not lose more than
  ``champion_tolerance`` of the questions net against the champion, counted question by question when the
  champion's per-question scores are known ("paired vs champion"), else on the means ("vs champion");
- **quality retained** (only when ``min_quality_retained`` > 0): the challenger's mean keeps that share of the
  reference's, judged only where the reference's mean is at least ``RATIO_MIN_MEAN`` and its score adds up to
  at least ``RATIO_MIN_RIGHT`` questions.

Why paired counts and not ratios of means: on a real chat model and ten questions the means are small numbers
(0.1 against 0.2), and their ratio swings by half on one answer, so the old default (keep 90% of each
metric's mean) judged noise. Counting the questions each model got right, one by one, is exact, tells a
challenger that lost one question and gained none from one that lost three and gained two, and allows a whole
number of questions, a share of the questions asked rather than of a small score. The ratio stays available
for users who want it, behind a floor below which a ratio says nothing. The champion keeps its own allowance
(``champion_tolerance``), small by default, so that promotions one after the other cannot each lose a little.

The default gated metric is contains_answer: the gold answer, normalised, occurs in the answer as whole words.
A chat model answers in sentences, which exact match scores 0 and token F1 or ROUGE-L against a one-word gold
answer score low however right they are; those metrics are still recorded, and may be gated by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmflow.errors import InputError
from llmflow.evaluation.metrics import QUALITY_METRICS
from llmflow.evaluation.paired import QuestionScores, allowed_questions, paired_count

# Metrics are means of per-example scores read back from the tracking store; a tie must not fail on rounding.
EPSILON = 1e-9
# A ratio to the reference's mean is judged only above both floors: below them it is a ratio of small numbers.
RATIO_MIN_MEAN = 0.2
RATIO_MIN_RIGHT = 5  # the reference's score summed over the questions, e.g. five questions right


@dataclass(frozen=True)
class GateConfig:
    """The gate's settings, as given to ``evaluate`` (all of them are MLproject parameters)."""

    gate_metrics: tuple[str, ...]
    min_scores: Mapping[str, float]
    champion_tolerance: float
    min_quality_retained: float
    max_perplexity_ratio: float
    max_paired_regressions: float


@dataclass(frozen=True)
class Champion:
    """The version behind the ``champion`` alias, its evaluated figures (None if it has none) and, when its
    evaluation's table is at hand, its per-question scores on the same questions as the challenger's."""

    version: str
    metrics: Mapping[str, float] | None
    scores: QuestionScores | None = None


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
    validate_fraction("max_paired_regressions", config.max_paired_regressions)
    ratio = config.max_perplexity_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or math.isnan(ratio) or ratio < 1:
        raise InputError(
            f"max_perplexity_ratio {ratio!r} is not accepted; expected a number >= 1 (e.g. 1.2 allows 20% more)"
        )


def _at_least(name: str, value: float, bound: float, label: str) -> Criterion:
    ok = value >= bound - EPSILON
    return Criterion(name, ok, f"{value:.4g} {'>=' if ok else '<'} {label} {bound:.4g}")


def _paired(
    name: str, challenger: QuestionScores, other: QuestionScores, metric: str, setting: str, fraction: float
) -> Criterion:
    count = paired_count(challenger, other, metric)
    allowed = allowed_questions(fraction, count.questions)
    return Criterion(name, count.net <= allowed, f"{count.describe(allowed)} ({setting} {fraction:g})")


def _champion_criteria(
    challenger_version: str,
    challenger: Mapping[str, float],
    challenger_scores: QuestionScores | None,
    champion: Champion | None,
    config: GateConfig,
) -> tuple[list[Criterion], str]:
    if champion is None:
        return [], "no champion yet"
    if champion.version == challenger_version:
        return [], f"re-evaluation of champion version {champion.version}"
    note = f"champion is version {champion.version}"
    tolerance = config.champion_tolerance
    if champion.scores is not None and challenger_scores is not None:
        criteria = [
            _paired(f"paired vs champion: {m}", challenger_scores, champion.scores, m, "champion_tolerance", tolerance)
            for m in config.gate_metrics
        ]
        return criteria, note
    if not champion.metrics or any(m not in champion.metrics for m in config.gate_metrics):
        return [], f"champion version {champion.version} has no recorded evaluation"
    criteria = [
        _at_least(
            f"vs champion: {m}",
            challenger[m],
            champion.metrics[m] - tolerance,
            f"champion v{champion.version} {champion.metrics[m]:.4g} - tolerance {tolerance:g} =",
        )
        for m in config.gate_metrics
    ]
    return criteria, note


def _retained(
    challenger: Mapping[str, float], reference: Mapping[str, float], questions: int, config: GateConfig
) -> tuple[list[Criterion], list[str]]:
    """The opt-in ratio criteria, and the gated metrics whose reference score is below the ratio's floor."""
    criteria: list[Criterion] = []
    unjudged: list[str] = []
    if config.min_quality_retained <= 0:
        return criteria, unjudged
    for m in config.gate_metrics:
        if reference[m] < RATIO_MIN_MEAN - EPSILON or reference[m] * questions < RATIO_MIN_RIGHT - EPSILON:
            unjudged.append(m)
            continue
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
    return criteria, unjudged


def _reference_criteria(
    challenger: Mapping[str, float],
    challenger_scores: QuestionScores,
    reference: Mapping[str, float],
    reference_scores: QuestionScores,
    config: GateConfig,
) -> tuple[list[Criterion], str]:
    criteria = [
        _paired(
            f"paired vs reference: {m}",
            challenger_scores,
            reference_scores,
            m,
            "max_paired_regressions",
            config.max_paired_regressions,
        )
        for m in config.gate_metrics
    ]
    retained, unjudged = _retained(challenger, reference, len(reference_scores), config)
    ratio = challenger["perplexity"] / reference["perplexity"]
    ok = ratio <= config.max_perplexity_ratio + EPSILON
    criteria += retained
    criteria.append(
        Criterion(
            "perplexity ratio",
            ok,
            f"{challenger['perplexity']:.4g} / reference {reference['perplexity']:.4g} = {ratio:.3f} "
            f"{'<=' if ok else '>'} {config.max_perplexity_ratio:g}",
        )
    )
    floor = f"a mean of {RATIO_MIN_MEAN:g} or {RATIO_MIN_RIGHT} questions' worth"
    note = f"; quality retained not judged for {', '.join(unjudged)}: reference under {floor}" if unjudged else ""
    return criteria, note


def gate(
    challenger_version: str,
    challenger: Mapping[str, float],
    champion: Champion | None,
    reference: Mapping[str, float] | None,
    config: GateConfig,
    *,
    challenger_scores: QuestionScores | None = None,
    reference_scores: QuestionScores | None = None,
) -> GateDecision:
    """Decide whether ``challenger_version`` (with figures ``challenger``) may become champion.

    ``challenger`` and ``reference`` hold the quality metrics (means) and, for the reference criteria,
    ``perplexity``. ``challenger_scores`` and ``reference_scores`` hold the per-question scores, in the same
    question order; the reference criteria compare question by question, so a reference needs both. The
    reason is one line: every failing criterion when it fails, a count when it passes.
    """
    needed = set(config.gate_metrics) | set(config.min_scores) | ({"perplexity"} if reference is not None else set())
    for label, figures in (("challenger", challenger), ("reference", reference)):
        missing = sorted(needed - set(figures)) if figures is not None else []
        if missing:
            raise ValueError(f"{label} figures lack {missing}")
    if reference is not None and (challenger_scores is None or reference_scores is None):
        raise ValueError("a reference is judged question by question: challenger_scores and reference_scores needed")
    criteria = [_at_least(f"floor: {m}", challenger[m], floor, "floor") for m, floor in config.min_scores.items()]
    champion_criteria, note = _champion_criteria(challenger_version, challenger, challenger_scores, champion, config)
    criteria += champion_criteria
    if reference is None:
        note += "; no reference"
    else:
        reference_criteria, reference_note = _reference_criteria(
            challenger, challenger_scores, reference, reference_scores, config
        )
        criteria += reference_criteria
        note += reference_note
    failed = [c for c in criteria if not c.passed]
    if failed:
        reason = "; ".join(f"{c.name} {c.detail}" for c in failed) + f" ({note})"
    else:
        reason = f"all {len(criteria)} criteria hold ({note})"
    return GateDecision(not failed, reason, criteria)

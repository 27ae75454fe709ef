"""Question-by-question comparison of two models answering the same questions.

Two means over ten questions (0.1 against 0.2) hide which questions moved: a ratio of them swings by half on
one answer, and a difference of them cannot tell "lost one, gained none" from "lost three, gained two". The
gate therefore compares the per-question scores ``mlflow.genai.evaluate`` recorded for both models: a question
is *right* for a model when its score reaches ``CORRECT_AT`` (0.5 is the only sensible cut for the 0/1 metrics
exact_match and contains_answer, and for token F1 and ROUGE-L means "more than half of the answer"). What is
counted is exact (whole questions), and what is allowed is a whole number of questions, the same on every
machine and on every re-read of the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# One mapping of metric -> score per question, in the QA file's order (``Example.scores``).
QuestionScores = Sequence[Mapping[str, float]]

# A question is right for a model when its score is at least this.
CORRECT_AT = 0.5
# A fraction of the questions is rounded down to whole questions; 0.1 x 30 is 3.0000000000000004, still 3.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class PairedCount:
    """How the challenger did against another model on the same questions, by one metric."""

    regressions: int  # the other model right, the challenger wrong
    improvements: int  # the challenger right, the other model wrong
    questions: int

    @property
    def net(self) -> int:
        """Questions lost, net of those gained (negative when the challenger gained more than it lost)."""
        return self.regressions - self.improvements

    def describe(self, allowed: int) -> str:
        """``"2 regressions, 1 improvement of 10 questions: net 1 <= allowed 1"``.

        A colon, not a semicolon: the gate's reason joins failing criteria with semicolons.
        """
        ok = self.net <= allowed
        return (
            f"{_plural(self.regressions, 'regression')}, {_plural(self.improvements, 'improvement')} "
            f"of {self.questions} questions: net {self.net} {'<=' if ok else '>'} allowed {allowed}"
        )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def paired_count(challenger: QuestionScores, other: QuestionScores, metric: str) -> PairedCount:
    """Count the questions on which exactly one of the two models is right by ``metric``.

    Both sequences hold the same questions in the same order; a length mismatch or a missing metric is a
    programming error (``ValueError``), never a judgement.
    """
    if len(challenger) != len(other):
        raise ValueError(f"paired scores differ in length: challenger {len(challenger)}, other {len(other)}")
    if not challenger:
        raise ValueError("cannot compare models on no questions")
    regressions = improvements = 0
    for index, (mine, theirs) in enumerate(zip(challenger, other, strict=True)):
        if metric not in mine or metric not in theirs:
            raise ValueError(f"question {index} has no '{metric}' score for both models")
        right, other_right = mine[metric] >= CORRECT_AT, theirs[metric] >= CORRECT_AT
        regressions += other_right and not right
        improvements += right and not other_right
    return PairedCount(regressions, improvements, len(challenger))


def allowed_questions(fraction: float, questions: int) -> int:
    """``fraction`` of ``questions``, rounded down to whole questions (0.1 of 10 is 1, 0.1 of 5 is 0)."""
    return math.floor(fraction * questions + _ROUNDING)

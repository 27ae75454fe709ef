"""What ``evaluate`` reads besides the models: its options, the QA set, the held-out text and the gate settings.

Everything here is checked before any model loads, so ``main`` can refuse a bad value before its first
child run. ``fingerprint`` says what must match for two evaluations to be comparable (the sha256 of both
files and the answer length); ``main`` uses it to decide whether an earlier evaluate run can be reused.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError
from llmflow.evaluation.gate import (
    RATIO_MIN_MEAN,
    RATIO_MIN_RIGHT,
    GateConfig,
    parse_gate_metrics,
    parse_min_scores,
    validate_gate_config,
)
from llmflow.evaluation.perplexity import load_heldout
from llmflow.evaluation.qa import QAPair, load_qa
from llmflow.options import StepOptions, fraction, non_empty, option
from llmflow.tracking.names import (
    TAG_EVAL_MAX_HELDOUT_TOKENS,
    TAG_EVAL_MAX_NEW_TOKENS,
    TAG_EVAL_MAX_QUESTIONS,
    TAG_HELDOUT_SHA,
    TAG_QA_SHA,
)

# reference_model_uri values that are not URIs.
AUTO, NONE = "auto", "none"
# The evaluation's default bounds, for a CPU run of a model of Phi-3-mini's size (README, "At full size"); 0 lifts one.
DEFAULT_MAX_QUESTIONS = 10
DEFAULT_MAX_HELDOUT_TOKENS = 512


@dataclass(frozen=True)
class EvalInputs:
    """Everything ``evaluate`` reads besides the models, checked before any model loads."""

    pairs: list[QAPair]
    qa_file: Path
    heldout: str
    heldout_file: Path
    max_new_tokens: int
    reference_model_uri: str
    config: GateConfig
    max_questions: int = 0  # the QA file had more rows than ``pairs`` when set; 0: no bound
    max_heldout_tokens: int = 0  # perplexity scores at most this many tokens of ``heldout``; 0: all

    def fingerprint(self) -> dict[str, str]:
        """What must match for two evaluations to be comparable."""
        return {
            **fingerprint_files(self.qa_file, self.heldout_file),
            TAG_EVAL_MAX_NEW_TOKENS: str(self.max_new_tokens),
            TAG_EVAL_MAX_QUESTIONS: str(self.max_questions),
            TAG_EVAL_MAX_HELDOUT_TOKENS: str(self.max_heldout_tokens),
        }


def resolve_data_path(path: str | Path) -> Path:
    """``path`` as given when it exists, else relative to the project root (where ``data/`` lives)."""
    resolved = Path(path).expanduser()
    if not resolved.exists() and not resolved.is_absolute() and (PROJECT_ROOT / resolved).exists():
        return PROJECT_ROOT / resolved
    return resolved


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint_files(qa_path: str | Path, heldout_path: str | Path) -> dict[str, str]:
    """sha256 of the QA file and the held-out text, as tags; ``InputError`` when one is missing."""
    digests = {}
    for tag, path in ((TAG_QA_SHA, qa_path), (TAG_HELDOUT_SHA, heldout_path)):
        resolved = resolve_data_path(path)
        if not resolved.is_file():
            raise InputError(f"evaluation file '{path}' not found")
        digests[tag] = file_sha256(resolved)
    return digests


def validate_reference_uri(uri: str) -> str:
    """``auto``, ``none``, or a model URI MLflow can load (``models:/``, ``runs:/`` or a local folder)."""
    text = str(uri).strip()
    if text.lower() in (AUTO, NONE):
        return text.lower()
    if text.startswith(("models:/", "runs:/")) or "://" in text or Path(text).expanduser().is_dir():
        return text
    raise InputError(
        f"reference_model_uri {uri!r} is not accepted; expected 'auto' (the transformers model of the same "
        "download run), 'none', or a model URI such as models:/<name>/<version> or runs:/<run_id>/<path>"
    )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{name} {value!r} is not accepted; expected a positive whole number")


def _check_bound(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{name} {value!r} is not accepted; expected a whole number of 0 (no bound) or more")


def _check_metrics(name: str, value: str) -> None:
    parse_gate_metrics(value)


def _check_floors(name: str, value: str) -> None:
    parse_min_scores(value)


def _check_ratio(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 1:
        raise InputError(f"{name} {value!r} is not accepted; expected a number >= 1 (e.g. 1.2 allows 20% more)")


def _check_reference(name: str, value: str) -> None:
    validate_reference_uri(value)


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings(StepOptions):
    """What evaluate scores on and how its gate decides; ``main`` hands the same settings to evaluate."""

    qa_path: str = option(
        "data/qa.jsonl", help="JSONL of {question, answer} rows; a relative path may also be from the project root."
    )
    heldout_path: str = option(
        "data/heldout.txt", help="Held-out text for perplexity; a relative path may also be from the project root."
    )
    eval_max_new_tokens: int = option(32, help="Most tokens generated per question.", check=_check_positive)
    eval_max_questions: int = option(
        DEFAULT_MAX_QUESTIONS,
        help="Score the first N questions of the QA file (0: all); bounds the evaluation's time on a large model.",
        check=_check_bound,
    )
    eval_max_heldout_tokens: int = option(
        DEFAULT_MAX_HELDOUT_TOKENS,
        help="Perplexity on the first N tokens of the held-out text (0: all of it); the same tokens for every model.",
        check=_check_bound,
    )
    gate_metrics: str = option(
        "contains_answer",
        help="Comma-separated metrics compared with the champion and the reference, question by question.",
        check=_check_metrics,
    )
    min_scores: str = option(
        "contains_answer=0.5",
        help="Absolute floors, e.g. 'contains_answer=0.5,token_f1=0.3'; 'none' for none.",
        check=_check_floors,
    )
    champion_tolerance: float = option(
        0.02,
        help="How far (0-1) below the champion a gated metric may fall: the share of the questions lost net, "
        "when the champion's per-question scores are known.",
        check=fraction,
    )
    min_quality_retained: float = option(
        0.0,
        help="Least share (0-1) of the reference's mean kept on each gated metric; 0: not judged (the paired check "
        f"judges quality). Never judged where the reference's mean is under {RATIO_MIN_MEAN:g} or adds up to under "
        f"{RATIO_MIN_RIGHT} questions.",
        check=fraction,
    )
    max_perplexity_ratio: float = option(
        1.2, help="Highest perplexity ratio, challenger / reference (>= 1).", check=_check_ratio
    )
    max_paired_regressions: float = option(
        0.1,
        help="Share (0-1) of the questions the challenger may lose net against the reference: those the reference "
        "got right and it got wrong, less those it got right and the reference got wrong.",
        check=fraction,
    )

    def check_together(self) -> None:
        validate_evaluate_options(self)  # the gate's settings together, and the data files load


def _check_model_version(name: str, value: str) -> None:
    if value != "challenger" and not (value.isdigit() and int(value) > 0):
        raise InputError(f"{name} '{value}' is not accepted; expected a version number (1, 2, ...) or 'challenger'")


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(EvaluationSettings):
    """Score the 'challenger' against champion and reference; gate its promotion."""

    registered_model_name: str = option(help="Registered model whose version is evaluated.", check=non_empty)
    model_version: str = option(
        "challenger",
        help="Version to judge: a version number, or 'challenger' (the version behind that alias).",
        check=_check_model_version,
    )
    reference_model_uri: str = option(
        AUTO,
        help="Reference model: 'auto' (transformers model of the same download run), 'none', or a model URI.",
        check=_check_reference,
    )


def validate_evaluate_options(settings: EvaluationSettings, reference_model_uri: str = NONE) -> EvalInputs:
    """Check the data files and every gate setting without touching a model; load the data.

    Raises ``InputError`` with one line naming the bad value, so ``main`` can fail before any child run.
    """
    config = GateConfig(
        gate_metrics=parse_gate_metrics(settings.gate_metrics),
        min_scores=parse_min_scores(settings.min_scores),
        champion_tolerance=settings.champion_tolerance,
        min_quality_retained=settings.min_quality_retained,
        max_perplexity_ratio=settings.max_perplexity_ratio,
        max_paired_regressions=settings.max_paired_regressions,
    )
    validate_gate_config(config)
    qa_file, heldout_file = resolve_data_path(settings.qa_path), resolve_data_path(settings.heldout_path)
    pairs = load_qa(qa_file)
    return EvalInputs(
        pairs=pairs[: settings.eval_max_questions or None],
        qa_file=qa_file,
        heldout=load_heldout(heldout_file),
        heldout_file=heldout_file,
        max_new_tokens=settings.eval_max_new_tokens,
        reference_model_uri=validate_reference_uri(reference_model_uri),
        config=config,
        max_questions=settings.eval_max_questions,
        max_heldout_tokens=settings.eval_max_heldout_tokens,
    )

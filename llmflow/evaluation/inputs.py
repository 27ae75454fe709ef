"""What ``evaluate`` reads besides the models: the QA set, the held-out text and the gate settings.

Everything here is checked before any model loads, so ``main`` can refuse a bad value before its first
child run. ``fingerprint`` says what must match for two evaluations to be comparable (the sha256 of both
files and the answer length); ``main`` uses it to decide whether an earlier evaluate run can be reused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError
from llmflow.evaluation.gate import GateConfig, parse_gate_metrics, parse_min_scores, validate_gate_config
from llmflow.evaluation.perplexity import load_heldout
from llmflow.evaluation.qa import QAPair, load_qa
from llmflow.tracking.names import TAG_EVAL_MAX_NEW_TOKENS, TAG_HELDOUT_SHA, TAG_QA_SHA

# reference_model_uri values that are not URIs.
AUTO, NONE = "auto", "none"


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

    def fingerprint(self) -> dict[str, str]:
        """What must match for two evaluations to be comparable."""
        return {
            **fingerprint_files(self.qa_file, self.heldout_file),
            TAG_EVAL_MAX_NEW_TOKENS: str(self.max_new_tokens),
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


def validate_evaluate_options(
    qa_path: str | Path,
    heldout_path: str | Path,
    eval_max_new_tokens: int,
    reference_model_uri: str,
    gate_metrics: str,
    min_scores: str,
    champion_tolerance: float,
    min_quality_retained: float,
    max_perplexity_ratio: float,
) -> EvalInputs:
    """Check the data files and every gate setting without touching a model.

    Raises ``InputError`` with one line naming the bad value, so ``main`` can fail before any child run.
    """
    if isinstance(eval_max_new_tokens, bool) or not isinstance(eval_max_new_tokens, int) or eval_max_new_tokens <= 0:
        raise InputError(
            f"eval_max_new_tokens {eval_max_new_tokens!r} is not accepted; expected a positive whole number"
        )
    config = GateConfig(
        gate_metrics=parse_gate_metrics(gate_metrics),
        min_scores=parse_min_scores(min_scores),
        champion_tolerance=champion_tolerance,
        min_quality_retained=min_quality_retained,
        max_perplexity_ratio=max_perplexity_ratio,
    )
    validate_gate_config(config)
    qa_file, heldout_file = resolve_data_path(qa_path), resolve_data_path(heldout_path)
    return EvalInputs(
        pairs=load_qa(qa_file),
        qa_file=qa_file,
        heldout=load_heldout(heldout_file),
        heldout_file=heldout_file,
        max_new_tokens=eval_max_new_tokens,
        reference_model_uri=validate_reference_uri(reference_model_uri),
        config=config,
    )

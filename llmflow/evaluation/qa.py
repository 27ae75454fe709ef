"""The question/answer set: loading and validation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmflow.errors import InputError


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


def load_qa(path: Path) -> list[QAPair]:
    """Read a JSONL file of ``{"question": ..., "answer": ...}`` rows.

    Raises ``InputError`` naming the file and the line when the file is missing, empty or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"QA file '{path}' not found; expected a JSONL file of {{'question', 'answer'}} rows")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"QA file '{path}' line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) and row[k].strip() for k in ("question", "answer")
        ):
            raise InputError(
                f"QA file '{path}' line {number} must be an object with non-empty string 'question' and 'answer'"
            )
        pairs.append(QAPair(row["question"].strip(), row["answer"].strip()))
    if not pairs:
        raise InputError(f"QA file '{path}' is empty; expected at least one {{'question', 'answer'}} row")
    return pairs

"""The project's MLproject as tests read it: entry points and their declared parameters."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from llmflow import PROJECT_ROOT

MLPROJECT: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())


def mlproject_parameters(entry_point: str, spec: dict[str, Any] = MLPROJECT) -> dict[str, dict[str, Any]]:
    """``{name: {"type": ..., "default": ...}}`` for an entry point of ``spec`` (the root MLproject by default)."""
    params = spec["entry_points"][entry_point].get("parameters", {})
    return {name: (value if isinstance(value, dict) else {"type": value}) for name, value in params.items()}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def snapshot_project(root: Path, qa_questions: int = 12) -> Path:
    """A git repository at ``root`` holding this working tree's files (tracked and untracked, not ignored), as a
    user's clone. Its QA set is cut to the first ``qa_questions`` questions, which keeps each evaluation short."""
    files = git(PROJECT_ROOT, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for name in files:
        source = PROJECT_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    qa = (root / "data" / "qa.jsonl").read_text().splitlines(keepends=True)
    (root / "data" / "qa.jsonl").write_text("".join(qa[:qa_questions]))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "snapshot")
    return root

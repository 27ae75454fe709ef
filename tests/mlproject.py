"""The project's MLproject as tests read it: entry points and their declared parameters."""

from __future__ import annotations

from typing import Any

import yaml

from llmflow import PROJECT_ROOT

MLPROJECT: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())


def mlproject_parameters(entry_point: str, spec: dict[str, Any] = MLPROJECT) -> dict[str, dict[str, Any]]:
    """``{name: {"type": ..., "default": ...}}`` for an entry point of ``spec`` (the root MLproject by default)."""
    params = spec["entry_points"][entry_point].get("parameters", {})
    return {name: (value if isinstance(value, dict) else {"type": value}) for name, value in params.items()}

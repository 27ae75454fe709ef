"""Which architectures the installed onnxruntime-genai model builder can export, read without importing it."""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from llmflow.errors import InputError


class BuilderUnreadable(RuntimeError):
    """The installed onnxruntime-genai builder's list of architectures could not be read."""


def _compared_architectures(tree: ast.AST) -> set[str]:
    """Every string that the builder compares with ``<...>.architectures[0]`` (by ``==`` or ``in``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or "architectures" not in ast.unparse(node.left):
            continue
        for op, right in zip(node.ops, node.comparators, strict=True):
            values = (
                right.elts if isinstance(op, ast.In) and isinstance(right, ast.Tuple | ast.List | ast.Set) else [right]
            )
            found.update(v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return found


@cache
def supported_architectures() -> frozenset[str]:
    """Architectures the installed onnxruntime-genai model builder can export.

    The builder has no list of them: it dispatches on ``config.architectures[0]`` in a chain of comparisons.
    So this reads that dispatch from the builder's syntax tree (not its text, so formatting and ``in (...)``
    forms do not matter), without importing the builder, which costs several seconds. If the builder
    changes how it dispatches and the reading finds nothing, it fails loudly instead of refusing every model.
    """
    spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    if spec is None or spec.origin is None:
        raise BuilderUnreadable("onnxruntime_genai.models.builder is not installed; install onnxruntime-genai")
    found = _compared_architectures(ast.parse(Path(spec.origin).read_text(encoding="utf-8")))
    if not found:
        raise BuilderUnreadable(
            f"found no architectures in {spec.origin}: the onnxruntime-genai builder no longer dispatches on "
            "config.architectures[0]; update llmflow.export.architectures.supported_architectures for the installed "
            "version"
        )
    return frozenset(found)


def check_architecture(config: dict[str, Any], where: str) -> str:
    """Return the model's architecture, or raise ``InputError`` when the ONNX builder cannot export it."""
    architectures = config.get("architectures") or []
    if not architectures:
        raise InputError(
            f"{where} names no 'architectures'; expected one of: {', '.join(sorted(supported_architectures()))}"
        )
    arch = architectures[0]
    if arch not in supported_architectures():
        raise InputError(
            f"architecture '{arch}' of {where} is not supported by the onnxruntime-genai model builder; "
            f"supported: {', '.join(sorted(supported_architectures()))}"
        )
    return arch

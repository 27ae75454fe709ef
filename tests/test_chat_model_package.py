"""The chat model package runs where ``llmflow`` is not installed: its files import nothing from ``llmflow``, and
import each other relatively (the logged model has them as the top-level package ``chat_model``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmflow import PROJECT_ROOT

CHAT_MODEL = PROJECT_ROOT / "llmflow" / "chat_model"
MODEL_FILE = "onnx_chat_model.py"
SIBLINGS = {path.stem for path in CHAT_MODEL.glob("*.py")} | {"chat_model"}


def absolute_imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    """Every absolute import in ``tree`` with the module it names (``from . import x`` is relative: left out)."""
    found: list[tuple[ast.stmt, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node, node.module))
    return found


def fallback_imports(tree: ast.AST) -> set[int]:
    """Ids of the imports in the handlers of ``try: ... except ModuleNotFoundError:`` blocks."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                if isinstance(handler.type, ast.Name) and handler.type.id == "ModuleNotFoundError":
                    ids |= {id(inner) for statement in handler.body for inner in ast.walk(statement)}
    return ids


def offending(path: Path) -> list[str]:
    """The imports of ``path`` that break the package's rule, as ``line: module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = fallback_imports(tree) if path.name == MODEL_FILE else set()
    bad = []
    for node, module in absolute_imports(tree):
        top = module.split(".")[0]
        if top == "llmflow" and id(node) not in allowed:
            bad.append(f"{node.lineno}: {module} (imports llmflow)")
        elif top in SIBLINGS and path.name != MODEL_FILE:
            bad.append(f"{node.lineno}: {module} (a sibling imported absolutely; use a relative import)")
    return bad


@pytest.mark.parametrize("path", sorted(CHAT_MODEL.glob("*.py")), ids=lambda p: p.name)
def test_chat_model_files_import_only_inside_their_package(path: Path):
    assert offending(path) == []


def test_the_check_catches_an_llmflow_import_and_an_absolute_sibling_import(tmp_path: Path):
    bad = tmp_path / "app.py"
    bad.write_text(
        "import json\nfrom llmflow.errors import InputError\nimport chat_protocol\nfrom . import generation\n"
    )
    assert offending(bad) == [
        "2: llmflow.errors (imports llmflow)",
        "3: chat_protocol (a sibling imported absolutely; use a relative import)",
    ]


def test_only_the_model_files_fallback_may_name_llmflow(tmp_path: Path):
    model = tmp_path / MODEL_FILE
    model.write_text(
        "try:\n    from chat_model import generation\nexcept ModuleNotFoundError:\n"
        "    from llmflow.chat_model import generation\nimport llmflow.errors\n"
    )
    assert offending(model) == ["5: llmflow.errors (imports llmflow)"]
    assert offending(CHAT_MODEL / MODEL_FILE) == []


def test_the_package_says_it_runs_without_llmflow():
    import llmflow.chat_model

    assert "where the ``llmflow`` package is not installed" in llmflow.chat_model.__doc__

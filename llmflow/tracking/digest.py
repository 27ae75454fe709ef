"""The code digest of a step: what decides what it computes, so that ``main`` can tell when to run it again.

The digest covers the step's script and the project modules it reaches through imports (lazy ones
included, and the models-from-code files it logs), its MLproject entry and the pinned environment. It
covers file *paths* as well as contents, so a file that moves changes the digest of every step that
reaches it (the first ``main`` after such a move runs those steps again, once).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from functools import cache
from pathlib import Path

import yaml

from llmflow import PROJECT_ROOT

# Files every step depends on: the environment it runs in.
ENVIRONMENT_FILES = ("conda.yaml", "requirements.txt")
# The top-level files and folders a code digest reads from: a copy of the project needs all of them.
CODE_ROOTS = ("llmflow", "steps", "MLproject", *ENVIRONMENT_FILES)
# A models-from-code file that a module names as a string, relative to that module's folder.
_CODE_FILE = re.compile(r"^[a-z_][a-z0-9_]*(/[a-z_][a-z0-9_]*)*\.py$")


def _module_paths(root: Path, module: str) -> list[Path]:
    """``llmflow.x.y`` -> ``llmflow/x/y.py`` (or a package's ``__init__.py``) and the ``__init__.py`` of
    each package above it, when they are files of the project."""
    parts = module.split(".")
    if parts[0] not in ("llmflow", "steps"):
        return []
    found = [root.joinpath(*parts[:n], "__init__.py") for n in range(1, len(parts))]
    base = root.joinpath(*parts)
    found += [base.with_suffix(".py"), base / "__init__.py"]
    return [path for path in found if path.is_file()]


def _absolute_module(root: Path, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <dots><module> import ...`` written in ``path``."""
    package = path.parent.relative_to(root).parts
    base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*base, *([node.module] if node.module else [])])


def _project_dependencies(root: Path, path: Path) -> set[Path]:
    """Project files that ``path`` imports (at any depth in the module, lazy and relative imports included),
    and the ``.py`` files it names as strings (models-from-code files that it logs, not imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[Path] = set()
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute_module(root, path, node) if node.level else node.module
            if module:
                modules = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _CODE_FILE.match(node.value):
            named = path.parent / node.value
            if named.is_file():
                found.add(named)
        for module in modules:
            found.update(_module_paths(root, module))
    return found


def step_sources(entry_point: str, root: Path = PROJECT_ROOT) -> list[Path]:
    """Every project file the step's script reaches through imports, the script included, sorted."""
    start = root / "steps" / f"{entry_point}.py"
    seen, todo = {start}, [start]
    while todo:
        for dependency in _project_dependencies(root, todo.pop()):
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return sorted(seen)


@cache
def code_digest(entry_point: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 over what decides what a step computes, uncommitted edits included; once per process.

    That is the step's own code (its script and the project modules it imports, followed through the
    imports), its entry in ``MLproject`` and the pinned environment. An edit to another step's code
    leaves this digest as it was, so ``main`` re-runs only the step that changed and what follows it.
    """
    digest = hashlib.sha256()
    entry = yaml.safe_load((root / "MLproject").read_text(encoding="utf-8"))["entry_points"][entry_point]
    digest.update(json.dumps(entry, sort_keys=True).encode())
    files = step_sources(entry_point, root) + [root / name for name in ENVIRONMENT_FILES]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()

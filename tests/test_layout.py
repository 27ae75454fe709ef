"""The layout's rules: names in one module, layers that point down, small modules, every import declared."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from llmflow import PROJECT_ROOT

LIBRARY = PROJECT_ROOT / "llmflow"
NAMES_MODULE = LIBRARY / "tracking" / "names.py"
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in sorted(LIBRARY.rglob("*.py"))
    }


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of the module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def tag_literals(path: Path) -> list[str]:
    """String literals (and f-string parts) in ``path`` that start with ``llmflow.``, docstrings aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("llmflow.")
        and id(node) not in docstrings
    ]


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_tag_literal_outside_the_names_module(module: str):
    path = _modules()[module]
    if path == NAMES_MODULE:
        return
    assert tag_literals(path) == [], f"{module}: move these names to llmflow/tracking/names.py"


def test_the_names_check_catches_a_literal(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""llmflow.docstring is fine."""\nTAG = "llmflow.new_tag"\nkey = f"llmflow.run.{1}"\n')
    assert tag_literals(sample) == ["llmflow.new_tag", "llmflow.run."]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter's contracts of ``root``'s pyproject.toml, checked on the code under ``root``."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_point_down():
    """pyproject.toml's contracts: steps -> the chain -> evaluation/export -> sources -> tracking -> options ->
    errors; the model's logged code on its own, the endpoint on it alone; imports inside functions count."""
    checked = lint_imports(PROJECT_ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 kept, 0 broken" in checked.stdout


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        # What tracking/reuse.py did before the chain package: a library reading a step module.
        ("llmflow/chain/reuse.py", "from llmflow.download import download", "llmflow.chain.reuse -> llmflow.download"),
        # A lazy import inside a function counts too.
        (
            "llmflow/sources/hub.py",
            "def _late():\n    from llmflow.export.recipe import DEFAULT_INT4_RECIPE\n",
            "llmflow.sources.hub -> llmflow.export.recipe",
        ),
        ("llmflow/chat_model/cpus.py", "from llmflow.errors import InputError", "chat_model.cpus -> llmflow.errors"),
        # The model's code cannot reach the endpoint, which is not logged with it.
        ("llmflow/chat_model/rows.py", "from llmflow.serving import app", "chat_model.rows -> llmflow.serving.app"),
        ("llmflow/serving/app.py", "from llmflow.tracking import names", "serving.app -> llmflow.tracking.names"),
    ],
)
def test_the_layers_contract_breaks_on_an_upward_import(tmp_path: Path, module: str, line: str, named: str):
    for folder in ("llmflow", "steps"):
        shutil.copytree(PROJECT_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a", encoding="utf-8") as handle:
        handle.write(f"\n{line}\n")
    checked = lint_imports(tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert named in checked.stdout


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_are_small_or_say_why(module: str):
    text = _modules()[module].read_text(encoding="utf-8")
    if len(text.splitlines()) > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(text)) or ""
        assert re.search(r"over \d+ lines", docstring, re.IGNORECASE), (
            f"{module} has {len(text.splitlines())} lines; split it, or say at its top why it is "
            f"'over {MAX_LINES} lines'"
        )


# requirements-bench.txt (``make bench`` only, never CI) and requirements-realmodel.txt declare what bench/ alone may
# import.
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
BENCH_REQUIREMENTS = "requirements-bench.txt"
# make bench builds the real model first (make smollm2), which installs these too.
REALMODEL_REQUIREMENTS = "requirements-realmodel.txt"
# Import names of bench-only packages, for where they are not installed (CI): packages_distributions cannot map them.
UNINSTALLED_IMPORT_NAMES = {"llama_cpp": "llama-cpp-python"}
# Modules of the llama.cpp tree that the llama-cpp-python sdist vendors, put on sys.path by the one file that uses it
# (its converter, and the gguf package of its gguf-py folder, which it reads before the installed one).
VENDORED = {"bench/gguf_convert.py": {"convert_hf_to_gguf", "conversion", "gguf"}}


def _declared(files: tuple[str, ...] = REQUIREMENTS) -> set[str]:
    names = set()
    for requirements in files:
        for line in (PROJECT_ROOT / requirements).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                names.add(re.split(r"[=<>\[ ]", line.strip())[0].lower().replace("_", "-"))
    return names


def _third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    local = {
        "llmflow",
        "steps",
        "bench",
        "tests",
        "servers",
        "int4_path",
        "mlproject",
        "conftest",
        "serving",
        "chat_model",
        "chat_protocol",
        "scripts",
    }
    return {name for name in found if name not in sys.stdlib_module_names and name not in local}


def unpinned_imports(files: dict[str, Path]) -> dict[str, list[str]]:
    """Third-party imports of ``files`` (repository-relative name: file) that no requirements file allowed for
    their folder declares."""
    distributions = packages_distributions()
    general, bench = _declared(), _declared(REQUIREMENTS + (BENCH_REQUIREMENTS, REALMODEL_REQUIREMENTS))
    missing: dict[str, list[str]] = {}
    for relative, path in files.items():
        declared = bench if relative.startswith("bench/") else general
        for name in _third_party_imports(path) - VENDORED.get(relative, set()):
            fallback = [UNINSTALLED_IMPORT_NAMES.get(name, name)]
            dists = {d.lower().replace("_", "-") for d in distributions.get(name, fallback)}
            if not dists & declared:
                missing.setdefault(name, []).append(relative)
    return missing


def test_every_imported_package_is_pinned():
    """What the code imports comes from requirements*.txt, not from another package's dependencies."""
    files = {
        p.relative_to(PROJECT_ROOT).as_posix(): p
        for folder in ("llmflow", "steps", "bench", "tests", "deploy", "scripts")
        for p in (PROJECT_ROOT / folder).rglob("*.py")
    }
    missing = unpinned_imports(files)
    assert missing == {}, f"imported but not pinned in requirements*.txt: {missing}"


def test_bench_only_pins_do_not_cover_the_library(tmp_path: Path):
    """llama_cpp is pinned for bench/ alone; the same import in llmflow/, or an unpinned one in bench/, is caught."""
    library, bench = tmp_path / "library.py", tmp_path / "bench.py"
    library.write_text("import llama_cpp\n")
    bench.write_text("import llama_cpp\nimport sentencepiece\n")
    assert unpinned_imports({"llmflow/sample.py": library, "bench/sample.py": bench}) == {
        "llama_cpp": ["llmflow/sample.py"],
        "sentencepiece": ["bench/sample.py"],
    }

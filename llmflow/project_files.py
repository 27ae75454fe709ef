"""The files that declare the entry points' parameters, written from the steps' options classes: ``MLproject``,
``deploy/databricks/MLproject`` and the parameter table of ``README.md``.

    python -m llmflow.project_files           # write them (make project-files)
    python -m llmflow.project_files --check   # exit 1 naming each file that differs (the unit tier runs it)

A parameter is declared once, in its options class (type, default, help text, check); these files follow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmflow import PROJECT_ROOT
from llmflow.batch_predict import batch_predict
from llmflow.cli import options_class
from llmflow.download import download
from llmflow.evaluate import evaluate
from llmflow.export_onnx import export_onnx
from llmflow.log_pyfunc import log_pyfunc
from llmflow.log_transformers import log_transformers
from llmflow.main import run_chain
from llmflow.options import StepOptions, leaf_fields, param_text
from llmflow.promote import promote
from llmflow.register import register
from llmflow.reproduce import reproduce
from llmflow.rollback import rollback

# Each entry point's step function, in the order MLproject lists them.
ENTRY_POINTS: dict[str, Callable[..., Any]] = {
    "download": download,
    "export_onnx": export_onnx,
    "log_transformers": log_transformers,
    "log_pyfunc": log_pyfunc,
    "register": register,
    "evaluate": evaluate,
    "rollback": rollback,
    "promote": promote,
    "reproduce": reproduce,
    "main": run_chain,
    "batch_predict": batch_predict,
}
# They run other steps with `mlflow run`, which a Databricks Spark job task cannot.
NOT_ON_DATABRICKS = ("main", "reproduce")
TABLE_START, TABLE_END = "<!-- parameters: start -->", "<!-- parameters: end -->"
COMMAND_WIDTH = 110

MLPROJECT_HEADER = """\
name: llmflow

conda_env: conda.yaml

# Written by `python -m llmflow.project_files` (make project-files) from the steps' options classes: change a
# parameter there, not here. Each step runs `python steps/<name>.py` from the project root, so the `llmflow`
# package next to this file is importable without installing it (also when MLflow runs it from a Git URL).
"""

DATABRICKS_HEADER = """\
# MLflow's "Databricks Spark job" project format (MLflow 2.14 and later), for
#   mlflow run <staged project> -b databricks --backend-config deploy/databricks/cluster-spec.json -e <step> -P ...
# the supported form of `mlflow run -b databricks` on Databricks Runtime 13 and later. MLflow uploads the
# project folder, and each entry point's `python <file> <args>` becomes a spark_python_task of a one-time
# run: the file's code, prefixed with a change into the uploaded folder. Only this folder is uploaded, so
# deploy/databricks/stage.py assembles it with the code (llmflow/, steps/, data/): see deploy/README.md.
#
# This format allows no environment section: the libraries below, every pin of requirements.txt, are installed
# on the new cluster. MLflow among them replaces the runtime's own (3.0.1 on 17.3 LTS ML), as MLflow's other
# Databricks format does with the client's version, so the steps run on the MLflow they were tested on. The
# entry points are the root MLproject's steps, with the same parameters, defaults and commands; main and
# reproduce are left out, since they run other steps with `mlflow run`. Written by `python -m
# llmflow.project_files` (make project-files) with the root MLproject.
"""


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    kind: type
    default: Any  # dataclasses.MISSING: required
    help: str

    @property
    def mlflow_type(self) -> str:
        # Whole numbers are MLflow floats: MLflow passes 32 as "32.0", and the parsers take both.
        return "float" if self.kind in (int, float) else "string"

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def parameters(cls: type[StepOptions]) -> list[Parameter]:
    """The parameters of an options class (groups flattened): the required ones first, then in declaration order."""
    found = []
    for field, kind in leaf_fields(cls):
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        found.append(Parameter(field.name, kind, default, field.metadata["help"]))
    return sorted(found, key=lambda param: not param.required)


def entry_parameters() -> dict[str, list[Parameter]]:
    return {name: parameters(options_class(function)) for name, function in ENTRY_POINTS.items()}


def command_parts(entry_point: str, params: list[Parameter]) -> list[str]:
    """``python steps/<entry point>.py`` and one ``--flag {name}`` per parameter."""
    return [f"python steps/{entry_point}.py", *(f"--{p.name.replace('_', '-')} {{{p.name}}}" for p in params)]


def _folded(parts: list[str], indent: int) -> list[str]:
    """``parts`` packed into lines of at most ``COMMAND_WIDTH`` characters, a flag never apart from its value."""
    lines = [" " * indent + parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) > COMMAND_WIDTH:
            lines.append(" " * indent + part)
        else:
            lines[-1] += " " + part
    return lines


def _default_yaml(param: Parameter) -> str:
    if param.mlflow_type == "float":
        return str(param.default)
    return json.dumps(param_text(param.default))  # double-quoted: a flow mapping ends a bare value at a comma


def mlproject() -> str:
    """The root ``MLproject``."""
    lines = [MLPROJECT_HEADER.rstrip("\n"), "entry_points:"]
    for name, params in entry_parameters().items():
        lines.append(f"  {name}:")
        lines.append("    parameters:")
        for param in params:
            if param.required:
                lines.append(f"      {param.name}: {param.mlflow_type}")
            else:
                lines.append(f"      {param.name}: {{type: {param.mlflow_type}, default: {_default_yaml(param)}}}")
        parts = command_parts(name, params)
        if len(" ".join(parts)) <= COMMAND_WIDTH - len('    command: ""'):
            lines.append(f'    command: "{" ".join(parts)}"')
        else:
            lines.append("    command: >-")
            lines.extend(_folded(parts, 6))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def requirements() -> list[str]:
    text = (PROJECT_ROOT / "requirements.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def databricks_mlproject() -> str:
    """``deploy/databricks/MLproject``: the root's step entry points, with every pin of requirements.txt."""
    root = yaml.safe_load(mlproject())["entry_points"]
    spec = {
        "name": "llmflow",
        "databricks_spark_job": {"python_libraries": requirements()},
        "entry_points": {name: entry for name, entry in root.items() if name not in NOT_ON_DATABRICKS},
    }
    return DATABRICKS_HEADER + yaml.safe_dump(spec, sort_keys=False, width=COMMAND_WIDTH)


def _cell(text: str) -> str:
    """A help text in a Markdown table cell: ``|`` escaped, and ``<name>`` kept as text (not an HTML tag)."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def _default_cell(param: Parameter) -> str:
    if param.required:
        return "required"
    return f"`{param_text(param.default)}`" if param_text(param.default) else '`""`'


def parameter_table() -> str:
    """The README's table: every parameter of ``main``, then each other entry point's own (those it shares with
    ``main``, with the same default and meaning, on one line)."""
    entries = entry_parameters()
    rows = ["| entry point | parameter | default | what it is |", "|---|---|---|---|"]
    shared = {param.name: param for param in entries["main"]}
    for name in ["main", *(n for n in entries if n != "main")]:
        first = f"`{name}`"
        as_main = [p.name for p in entries[name] if name != "main" and shared.get(p.name) == p]
        for param in entries[name]:
            if param.name in as_main:
                continue
            rows.append(f"| {first} | `{param.name}` | {_default_cell(param)} | {_cell(param.help)} |")
            first = ""
        if as_main:
            rows.append(f"| {first} | {', '.join(f'`{n}`' for n in as_main)} | as `main` | |")
    return "\n".join(rows)


def readme(current: str) -> str:
    """``current`` (the README) with the table between its markers written anew."""
    start, end = current.index(TABLE_START) + len(TABLE_START), current.index(TABLE_END)
    return current[:start] + "\n" + parameter_table() + "\n" + current[end:]


def generated() -> dict[Path, str]:
    """Each generated file with the text it should hold."""
    readme_path = PROJECT_ROOT / "README.md"
    return {
        PROJECT_ROOT / "MLproject": mlproject(),
        PROJECT_ROOT / "deploy" / "databricks" / "MLproject": databricks_mlproject(),
        readme_path: readme(readme_path.read_text(encoding="utf-8")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmflow.project_files", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = parser.parse_args(argv)
    stale = {path: text for path, text in generated().items() if path.read_text(encoding="utf-8") != text}
    for path, text in stale.items():
        relative = path.relative_to(PROJECT_ROOT)
        if args.check:
            print(f"{relative} differs from what the options classes give: run python -m llmflow.project_files")
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {relative}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

"""The one command-line layer every step shares.

Defaults come from ``MLproject`` so that ``mlflow run . -e <step>`` and ``python -m steps.<step>`` agree;
flags are the MLproject parameter names in ``--kebab-case``, and also as written (``--snake_case``), the
form in which MLflow appends parameters that an entry point does not declare (``deploy/kubernetes``). A
step's ``InputError`` ends the process with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import yaml

from llmflow import PROJECT_ROOT
from llmflow.errors import PipelineError
from llmflow.tracking import task_values

logger = logging.getLogger(__name__)


@cache
def mlproject_parameters(entry_point: str) -> dict[str, dict[str, Any]]:
    """Return ``{name: {"type": ..., "default": ...}}`` for an entry point of ``MLproject``."""
    spec = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    params = spec["entry_points"][entry_point].get("parameters", {})
    return {name: (value if isinstance(value, dict) else {"type": value}) for name, value in params.items()}


def whole_number(text: str) -> int:
    """argparse type for integers that MLflow passes as ``float`` parameters (``"32"`` or ``"32.0"``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number; expected a whole number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    return int(value)


class StepParser:
    """An ``argparse`` parser whose flags and defaults are those of one MLproject entry point."""

    def __init__(self, entry_point: str, description: str) -> None:
        self.entry_point = entry_point
        self.params = mlproject_parameters(entry_point)
        self.parser = argparse.ArgumentParser(prog=f"steps.{entry_point}", description=description)

    def add(self, name: str, type: Callable[[str], Any], help: str, **kwargs: Any) -> None:  # noqa: A002
        """Add ``--name-in-kebab-case`` (and ``--name_in_snake_case``); default or required-ness come from MLproject.

        The snake_case spelling is there because ``mlflow run -P key=value`` appends a parameter that the
        entry point does not declare to its command as ``--key value``, key unchanged.
        """
        if name not in self.params:
            raise KeyError(f"'{name}' is not a parameter of entry point '{self.entry_point}' in MLproject")
        spec = self.params[name]
        if "default" in spec:
            kwargs.setdefault("default", type(str(spec["default"])))
        else:
            kwargs.setdefault("required", True)
        kebab = "--" + name.replace("_", "-")
        flags = [kebab] if kebab == "--" + name else [kebab, "--" + name]
        self.parser.add_argument(*flags, dest=name, type=type, help=help, **kwargs)

    def parse(self, argv: list[str] | None = None) -> dict[str, Any]:
        return vars(self.parser.parse_args(argv))


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "onnxruntime.quantization"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_step(step: Callable[..., Any], parser: StepParser, argv: list[str] | None = None) -> None:
    """Parse arguments, call ``step(**args)``, and turn a ``PipelineError`` into one line and its exit code."""
    args = parser.parse(argv)
    configure_logging()
    task_values.hf_token_from_secret()
    try:
        result = step(**args)
    except PipelineError as exc:
        print(f"error: {parser.entry_point}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    # What a later task of a Databricks job reads as {{tasks.<step>.values.<name>}}.
    task_values.publish(result)

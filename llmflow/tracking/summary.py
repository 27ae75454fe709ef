"""The summary ``main`` prints for a person: versions, aliases, key metrics and one champion answer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient

if TYPE_CHECKING:
    from llmflow.main import ChainResult

logger = logging.getLogger(__name__)

SAMPLE_QUESTION = "What is the capital of Spain?"


def ask_champion(name: str, question: str = SAMPLE_QUESTION, max_new_tokens: int = 32) -> str:
    """Load ``models:/<name>@champion`` and answer one chat question with it, as evaluate asks."""
    from llmflow.evaluation.scoring import chat_answer

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    return chat_answer(model, question, max_new_tokens)[0].strip()


def report_lines(run_id: str) -> list[str]:
    """The evaluate run's ``report/report.md`` (decision first, then its tables), without the plot links."""
    from llmflow.tracking.names import REPORT_DIR

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{REPORT_DIR}/report.md")
    text = Path(path).read_text(encoding="utf-8")
    # The plots are PNG files in the run; a terminal shows the text around them.
    skip = ("![", "## Plots")
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(skip)]


def step_timings(client: MlflowClient, result: ChainResult) -> str:
    """Each step's wall time from its run's start and end, marking the reused ones."""
    parts = []
    for key, run_id in result.step_runs.items():
        info = client.get_run(run_id).info
        seconds = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
        parts.append(f"{key} {seconds:.1f}" + (" (reused)" if key in result.reused else ""))
    return ", ".join(parts)


def format_summary(client: MlflowClient, result: ChainResult) -> list[str]:
    """The summary's lines: one block per registered flavour, then a sample answer from a champion."""
    lines = [f"llmflow main run {result.run_id}"]
    if result.reused:
        lines.append(f"  reused finished steps: {', '.join(result.reused)}")
    champions = []
    for flavour, (name, version) in result.registered.items():
        model_version = client.get_model_version(name, version)
        aliases = sorted(model_version.aliases)
        lines.append(f"  {name} version {version}  aliases: {', '.join(aliases) or 'none'}")
        lines.extend(f"    {line}" for line in report_lines(result.step_runs[f"evaluate:{flavour}"]))
        if "champion" in client.get_registered_model(name).aliases:
            champions.append(name)
    lines.append("  step timings (wall, s): " + step_timings(client, result))
    if champions:
        name = champions[0]
        lines.append(f"  models:/{name}@champion  Q: {SAMPLE_QUESTION}  A: {ask_champion(name)!r}")
    else:
        lines.append("  no champion yet: no version passed the gate")
    return lines


def print_summary(client: MlflowClient, result: ChainResult) -> None:
    print("\n".join(["", *format_summary(client, result), ""]))

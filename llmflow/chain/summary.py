"""The summary ``main`` prints for a person: versions, aliases and decisions, each step's run, and how to serve.

It reads the tracking store only: it loads no model (at Phi-3-mini's size that was a 2.7 GB load to print one
answer). Each step's line has the command that reruns that step alone, with the parameters its run had where they
differ from ``MLproject``'s defaults.
"""

from __future__ import annotations

import logging
import shlex
from functools import cache
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from llmflow import PROJECT_ROOT
from llmflow.chain.runner import ChainResult
from llmflow.tracking.names import REPORT_DIR, REPORT_FILE

logger = logging.getLogger(__name__)

SERVE_PORT = 8000
REPORT_PATH = f"{REPORT_DIR}/{REPORT_FILE}"


@cache
def mlproject_defaults() -> dict[str, dict[str, str]]:
    """``{entry point: {parameter: default as text}}`` from the project's ``MLproject`` (no default: absent)."""
    entry_points = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text(encoding="utf-8"))["entry_points"]
    return {
        name: {
            param: _text(spec["default"])
            for param, spec in (entry.get("parameters") or {}).items()
            if isinstance(spec, dict) and "default" in spec
        }
        for name, entry in entry_points.items()
    }


def _text(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _same(default: str, value: str) -> bool:
    """Whether a recorded parameter is its default: ``0.0`` is ``0``, ``False`` is ``false``."""
    try:
        return float(default) == float(value)
    except ValueError:
        return default.lower() == value.lower()


def rerun_command(entry_point: str, params: dict[str, str]) -> str:
    """``mlflow run . -e <entry point> -P ...``: the parameters of ``params`` that differ from the defaults."""
    defaults = mlproject_defaults().get(entry_point, {})
    changed = [
        f"-P {shlex.quote(f'{name}={value}')}"
        for name, value in params.items()
        if name not in defaults or not _same(defaults[name], value)
    ]
    return " ".join(["mlflow run . -e", entry_point, *changed])


# Of the evaluate run's report, the console shows the decision and the gate's criteria; its metrics, export figures
# and latency tables stay in the report (the version's description in the UI, and the run's report/report.md).
CONSOLE_SECTIONS = ("## Criteria",)
# The figures of an export's cost, from the evaluate run's metrics, on one line under the criteria.
EXPORT_FIGURES = ("perplexity_ratio", "greedy_agreement", "speedup")


def report_lines(run_id: str) -> list[str]:
    """The evaluate run's ``report/report.md``: its decision and its criteria table."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REPORT_PATH)
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    kept, showing = lines[:1], False
    for line in lines[1:]:
        if line.startswith("#"):
            showing = line.strip() in CONSOLE_SECTIONS
        if showing:
            kept.append(line)
    return kept


def figure_line(run_id: str, client: MlflowClient) -> str | None:
    """``export: perplexity_ratio 1.017, ...`` from the evaluate run's metrics; None without a reference."""
    metrics = client.get_run(run_id).data.metrics
    figures = [f"{name} {metrics[name]:.4g}" for name in EXPORT_FIGURES if name in metrics]
    return f"export vs reference: {', '.join(figures)}" if figures else None


def step_lines(client: MlflowClient, result: ChainResult) -> list[str]:
    """Each step's wall time and run id, marking the reused ones, and the command that reruns it alone."""
    lines = ["  steps (wall time, run id; each reruns alone with the command under it):"]
    for key, run_id in result.step_runs.items():
        run = client.get_run(run_id)
        info = run.info
        seconds = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
        reused = " (reused)" if key in result.reused else ""
        lines.append(f"    {key} {seconds:.1f} s{reused}  run {run_id}")
        lines.append(f"      {rerun_command(key.split(':')[0], run.data.params)}")
    return lines


def format_summary(client: MlflowClient, result: ChainResult) -> list[str]:
    """The summary's lines: one block per registered flavour, each step's run, then how to serve a champion."""
    lines = [f"llmflow main run {result.run_id}"]
    if result.reused:
        lines.append(f"  reused finished steps: {', '.join(result.reused)}")
    champions = []
    for flavour, (name, version) in result.registered.items():
        model_version = client.get_model_version(name, version)
        aliases = sorted(model_version.aliases)
        lines.append(f"  {name} version {version}  aliases (now): {', '.join(aliases) or 'none'}")
        evaluate_key = f"evaluate:{flavour}"
        report = report_lines(result.step_runs[evaluate_key])
        if evaluate_key in result.reused and report:
            # The decision was taken by an earlier run; the aliases may have moved since.
            report[0] = f"earlier decision, reused from run {result.step_runs[evaluate_key]}: {report[0]}"
        lines.extend(f"    {line}" for line in report)
        if figures := figure_line(result.step_runs[evaluate_key], client):
            lines.append(f"    {figures}")
        report_at = f"{REPORT_PATH} of run {result.step_runs[evaluate_key]}"
        lines.append(f"    full report (metrics, latency): {report_at}, and the version's description in the UI")
        if "champion" in client.get_registered_model(name).aliases:
            champions.append(name)
    lines.extend(step_lines(client, result))
    if not champions:
        lines.append("  no champion yet: no version passed the gate")
    for name in champions:
        uri = f"models:/{name}@champion"
        lines.append(f"  champion {uri}; serve it (OpenAI-compatible, port {SERVE_PORT}):")
        lines.append(f"    python -m llmflow.serving.openai_server --model-uri '{uri}' --port {SERVE_PORT}")
    return lines


def print_summary(client: MlflowClient, result: ChainResult) -> None:
    print("\n".join(["", *format_summary(client, result), ""]))

"""The summary ``main`` prints for a person: versions, aliases, key metrics and one champion answer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient

if TYPE_CHECKING:
    from llmflow.pipeline import ChainResult

logger = logging.getLogger(__name__)

SAMPLE_QUESTION = "What is the capital of Spain?"
KEY_METRICS = ("exact_match", "contains_answer", "latency_p50_s", "latency_p95_s", "tokens_per_second")


def ask_champion(client: MlflowClient, name: str, question: str = SAMPLE_QUESTION, max_new_tokens: int = 32) -> str:
    """Load ``models:/<name>@champion`` and answer one chat question with it, as evaluate asks."""
    from llmflow.evaluate import ADAPTERS, load_tokenizer, pick_adapter

    version = client.get_model_version_by_alias(name, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    generate = ADAPTERS[pick_adapter(model.metadata.flavors)]
    return generate(model, load_tokenizer(version), question, max_new_tokens).strip()


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
        evaluate_run = client.get_run(result.step_runs[f"evaluate:{flavour}"])
        metrics = evaluate_run.data.metrics
        figures = ", ".join(f"{m} {metrics[m]:.3g}" for m in KEY_METRICS if m in metrics)
        lines.append(f"  {name} version {version}  aliases: {', '.join(aliases) or 'none'}")
        lines.append(f"    {figures}")
        lines.append(f"    decision: {evaluate_run.data.tags.get('llmflow.decision_reason', 'none recorded')}")
        if "champion" in client.get_registered_model(name).aliases:
            champions.append(name)
    lines.append("  step timings (wall, s): " + step_timings(client, result))
    if champions:
        name = champions[0]
        lines.append(f"  models:/{name}@champion  Q: {SAMPLE_QUESTION}  A: {ask_champion(client, name)!r}")
    else:
        lines.append("  no champion yet: no version passed the gate")
    return lines


def print_summary(client: MlflowClient, result: ChainResult) -> None:
    print("\n".join(["", *format_summary(client, result), ""]))

"""What a person reads about a model in MLflow: logged-model names and params, and registry descriptions.

- A **LoggedModel** is named for what it is (``<repo>-<precision>-<execution provider>`` for the ONNX model,
  ``<repo>-<precision>-transformers`` for the pipeline) and carries as params the figures that tell models
  apart, so ``mlflow.search_logged_models`` can filter on them (``params.precision = 'int4'``).
- A **LoggedModel**'s description (the ``mlflow.note.content`` tag, which its page shows) says what it is and
  lists those params; the metrics ``evaluate`` links to it show on the same page.
- A **registered model**'s description says what it is, where it came from and how to serve it.
- A **registered version**'s description is its evaluation report in Markdown (written by ``evaluate``), then
  its lineage (written by ``register``: logged model, source run, git tree state, seed, environment); the tags
  keep only the short values that people and the steps filter on.

Descriptions are plain Markdown, so they read the same in the MLflow UI and in Unity Catalog.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from llmflow.tracking.names import (
    CHAMPION,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_PRECISION,
)

# MLflow refuses these characters in a LoggedModel name.
NOT_IN_NAME = re.compile(r"[/:.%\"']+")
# Registry descriptions are at most 5,000 characters in MLflow's SQL stores.
DESCRIPTION_LIMIT = 5000


_LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")


def version_model_id(version: ModelVersion) -> str | None:
    """The LoggedModel behind a registered version: its ``model_id``, or the ``models:/m-...`` it was made from.

    MLflow 3.17's SQL registry does not store ``ModelVersion.model_id`` (it has no column for it), so the
    version's source, ``models:/<model_id>``, is the link there.
    """
    if getattr(version, "model_id", None):
        return version.model_id
    match = _LOGGED_MODEL_URI.match(version.source or "")
    return match.group(1) if match else None


def repo_name(tags: Mapping[str, str]) -> str:
    repo = tags.get(TAG_HF_REPO) or "model"
    return NOT_IN_NAME.sub("-", repo.rsplit("/", 1)[-1]).strip("-") or "model"


def transformers_model_name(download_run: Run, precision: str) -> str:
    """``<repo>-<precision>-transformers``, e.g. ``Phi-3-mini-4k-instruct-bf16-transformers``."""
    return f"{repo_name(download_run.data.tags)}-{precision}-transformers"


def transformers_model_params(download_run: Run, precision: str, max_new_tokens: int) -> dict[str, str]:
    """The figures that tell transformers models apart: source, precision, provider, answer length."""
    tags = download_run.data.tags
    return {
        "flavour": "transformers",
        "hf_repo_id": tags.get(TAG_HF_REPO, ""),
        "hf_commit_sha": tags.get(TAG_HF_SHA, ""),
        "precision": precision,
        "execution_provider": "cpu",
        "max_new_tokens": str(max_new_tokens),
        "download_run_id": download_run.info.run_id,
    }


def logged_model_tags(name: str, params: Mapping[str, str]) -> dict[str, str]:
    """The LoggedModel's description, as the tag its page shows: what it is, then its params as a table."""
    repo, sha = params.get("hf_repo_id") or "unknown", params.get("hf_commit_sha") or "unknown"
    precision, provider = params.get("precision", "?"), params.get("execution_provider", "?")
    what = {
        "onnx": f"an ONNX {precision} export for {provider}, generated with onnxruntime-genai (custom pyfunc)",
        "transformers": f"a transformers text-generation pipeline ({precision}), logged with task `llm/v1/chat`",
    }.get(params.get("flavour", ""), "a model logged by llmflow")
    rows = [f"| {key} | `{value}` |" for key, value in params.items() if value]
    card = [
        f"**{name}**: Hugging Face `{repo}` at commit `{sha}`, as {what}.",
        "",
        "It answers OpenAI-style chat requests. The metrics below are its evaluations (`evaluate` logs them on",
        "this model, with the dataset they were measured on); the *Traces* tab holds one trace per question.",
        "",
        "| param | value |",
        "|---|---|",
        *rows,
    ]
    return {MLFLOW_RUN_NOTE: "\n".join(card)}


def whole(text: str) -> str:
    """``"32.0"`` (an MLflow float parameter) as ``"32"``, so a filter on ``'32'`` finds it."""
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def registered_model_description(name: str, tags: Mapping[str, str], flavour: str) -> str:
    """What the registered model is, where it came from and how to serve it (Markdown)."""
    repo, sha = tags.get(TAG_HF_REPO, "unknown"), tags.get(TAG_HF_SHA, "unknown")
    precision, provider = tags.get(TAG_PRECISION, "?"), tags.get(TAG_EXECUTION_PROVIDER, "?")
    what = {
        "log_pyfunc": f"an ONNX {precision} export for {provider}, served by onnxruntime-genai (custom pyfunc)",
        "log_transformers": f"a transformers text-generation pipeline ({precision}) with the `llm/v1/chat` signature",
    }.get(flavour, "a model logged by llmflow")
    return "\n".join(
        [
            f"# {name}",
            "",
            f"**What it is:** `{repo}` as {what}. It takes OpenAI-style chat requests (`messages`, "
            "`max_tokens`, `temperature`, ...) and answers with a `chat.completion`.",
            "",
            f"**Where it came from:** Hugging Face `{repo}` at commit `{sha}`, through llmflow's chain "
            "(download, export_onnx, log_pyfunc, or download, log_transformers). Each version's tags name its "
            "runs; its description is its evaluation report.",
            "",
            f"**Aliases:** `challenger` is registered and not yet judged; `{CHAMPION}` passed the evaluation gate "
            "and is what serving uses; `previous` is the champion it replaced (`rollback` restores it).",
            "",
            "**Serve it:**",
            "",
            "```bash",
            f'mlflow models serve -m "models:/{name}@{CHAMPION}" --env-manager local -p 5001',
            f'python -m llmflow.serving.openai_server --model-uri "models:/{name}@{CHAMPION}" --port 8000',
            "```",
        ]
    )


LINEAGE_HEADING = "## Lineage"


def lineage_section(details: Mapping[str, str]) -> str:
    """The lineage a version keeps in its description instead of tags: what people read, not filter on."""
    rows = [f"| {what} | `{value}` |" for what, value in details.items()]
    return "\n".join([LINEAGE_HEADING, "", "| what | value |", "|---|---|", *rows])


def lineage_of(description: str | None) -> str:
    """The lineage section of a version's description (as ``lineage_section`` wrote it), or ``""``."""
    text = description or ""
    start = text.find(LINEAGE_HEADING)
    return text[start:].strip() if start >= 0 else ""


def version_description(report_markdown: str, evaluate_run_id: str, lineage: str = "") -> str:
    """A version's description: its report without the plot links (they are files of the evaluate run), then the
    lineage section register wrote (kept whole; the report is shortened first when the whole is too long)."""
    kept = []
    for line in report_markdown.splitlines():
        if line.strip() == "## Plots":
            break
        kept.append(line)
    footer = (
        f"\n\nPlots and the per-question table: artifacts `report/` and `eval_table.json` of run `{evaluate_run_id}`."
    )
    if lineage:
        footer += "\n\n" + lineage
    body = "\n".join(kept).rstrip()
    if len(body) + len(footer) > DESCRIPTION_LIMIT:
        body = body[: DESCRIPTION_LIMIT - len(footer) - 2] + " …"
    return body + footer

"""The evaluate step's report: ``report.md`` (decision first) with two plots, and ``decision.json``.

- ``report.md``: the decision on its first line, then the gate's criteria (with a note on how a kind of
  criterion counts, e.g. the paired ones), the metrics of every model side by side, the export figures (what
  int4 cost and bought), and the two plots (``llmflow.evaluation.plots``) linked relatively. The same
  Markdown, without the plot links, is the registered version's description.
- ``decision.json``: the decision, its criteria, the table and the export figures, for programs.

Figures are formatted to 4 significant digits (``format_value``: ``0.8333``, ``171.2``, ``0.00228``); a
missing figure is "—".
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmflow.errors import InputError
from llmflow.evaluation.paired import CORRECT_AT
from llmflow.evaluation.plots import (
    LATENCY_PLOT,
    METRICS_PLOT,
    MISSING,
    colours_for,
    format_value,
    is_fraction_metric,
    metric_names,
    plot_latency,
    plot_metrics,
)
from llmflow.tracking.names import DECISION_FILE, REPORT_DIR, REPORT_FILE

if TYPE_CHECKING:
    from llmflow.evaluation.gate import GateDecision
    from llmflow.evaluation.scoring import Scored

# format_value and is_fraction_metric are the report's number rules; they live with the plots, which use them too.
__all__ = ["MISSING", "format_value", "is_fraction_metric", "log_report", "render_markdown", "write_report"]

# What each export figure means; a figure not listed here is shown without a description.
EXPORT_FIGURES = {
    "perplexity_ratio": "held-out perplexity of the ONNX model / the transformers reference's (1 = no loss)",
    "greedy_agreement": "share of questions where the greedy answers of the two models are identical",
    "first_token_agreement": "share of questions where the first generated token is the same",
    "speedup": "generation speed of the ONNX model / the transformers reference's (tokens/s)",
}
_QUALITY_RETAINED = "quality_retained_"
# What a kind of criterion means, by the start of its name; shown under the criteria when one of that kind is there.
CRITERION_NOTES = {
    "paired vs ": (
        "Paired criteria compare the models question by question: a regression is a question the other model got "
        f"right (score >= {CORRECT_AT:g}) and the challenger got wrong, an improvement the reverse. The net count "
        "(regressions less improvements) may be at most the allowed share of the questions, rounded down."
    ),
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _number(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{where} {value!r} is not accepted; expected a number")
    return float(value)


def _check_inputs(
    criteria: Sequence[tuple[str, bool, str]],
    table: Mapping[str, Mapping[str, float | None]],
    export_figures: Mapping[str, float],
    latencies: Mapping[str, Sequence[float]],
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Check every input; return the table (missing figures as NaN) and the latencies as arrays."""
    for row in criteria:
        if not (isinstance(row, tuple | list) and len(row) == 3 and isinstance(row[1], bool | np.bool_)):
            raise InputError(f"criterion {row!r} is not accepted; expected (name, passed: bool, detail)")
    if not table:
        raise InputError("table {} is not accepted; expected at least one column of metric -> value")
    clean: dict[str, dict[str, float]] = {}
    for column, metrics in table.items():
        if not metrics:
            raise InputError(f"table column '{column}' has no metrics; expected metric -> value")
        clean[column] = {
            name: math.nan if value is None else _number(f"table['{column}']['{name}']", value)
            for name, value in metrics.items()
        }
    for name, value in export_figures.items():
        _number(f"export_figures['{name}']", value)
    if not latencies:
        raise InputError("latencies {} is not accepted; expected model -> per-question latencies in seconds")
    arrays = {}
    for column, values in latencies.items():
        array = np.asarray([_number(f"latencies['{column}'] value", v) for v in values], dtype=float)
        if array.size == 0:
            raise InputError(f"latencies['{column}'] has no values; expected per-question latencies in seconds")
        bad = array[~np.isfinite(array) | (array < 0)]
        if bad.size:
            raise InputError(f"latencies['{column}'] holds {float(bad[0])!r}; expected finite seconds >= 0")
        arrays[column] = array
    return clean, arrays


def render_markdown(
    *,
    title: str,
    passed: bool,
    reason: str,
    outcome: str,
    criteria: Sequence[tuple[str, bool, str]],
    table: Mapping[str, Mapping[str, float]],
    export_figures: Mapping[str, float],
    latencies: Mapping[str, np.ndarray],
) -> str:
    verdict = "PASSED" if passed else "FAILED"
    decision = f"**{verdict}**: " + (f"{_one_line(outcome)}. " if outcome else "") + _one_line(reason)
    lines = [decision, "", f"# {_one_line(title)}", "", "## Criteria", ""]
    if criteria:
        lines += ["| criterion | result | detail |", "|---|---|---|"]
        lines += [f"| {_cell(name)} | {'pass' if ok else 'FAIL'} | {_cell(detail)} |" for name, ok, detail in criteria]
        notes = [note for start, note in CRITERION_NOTES.items() if any(c[0].startswith(start) for c in criteria)]
        lines += [line for note in notes for line in ("", note)]
    else:
        lines.append("No criteria were checked.")
    columns = list(table)
    lines += ["", "## Metrics", "", "| metric | " + " | ".join(_cell(c) for c in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for name in metric_names(table):
        cells = [format_value(table[column].get(name)) for column in columns]
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    lines += ["", "## What int4 cost and bought", ""]
    if export_figures:
        lines += ["| figure | value | meaning |", "|---|---:|---|"]
        for name, value in export_figures.items():
            meaning = EXPORT_FIGURES.get(name, "")
            if not meaning and name.startswith(_QUALITY_RETAINED):
                metric = name.removeprefix(_QUALITY_RETAINED)
                meaning = f"{metric} of the ONNX model / the transformers reference's (1 = all kept)"
            lines.append(f"| {_cell(name)} | {format_value(value)} | {_cell(meaning)} |")
    else:
        lines.append("No export figures: no reference model was compared.")
    lines += ["", "## Latency", "", "| model | questions | p50 (s) | p95 (s) |", "|---|---:|---:|---:|"]
    for column, values in latencies.items():
        p50, p95 = np.percentile(values, [50, 95])
        lines.append(f"| {_cell(column)} | {values.size} | {format_value(p50)} | {format_value(p95)} |")
    lines += ["", "## Plots", "", f"![metrics]({METRICS_PLOT})", "", f"![latency]({LATENCY_PLOT})", ""]
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    *,
    title: str,
    passed: bool,
    reason: str,
    criteria: list[tuple[str, bool, str]],
    table: dict[str, dict[str, float]],
    export_figures: dict[str, float],
    latencies: dict[str, list[float]],
    outcome: str = "",
) -> dict[str, Path]:
    """Write ``report.md``, ``metrics.png`` and ``latency.png`` into ``out_dir`` (created if needed).

    ``criteria``: the gate's rows (name, passed, detail with the figures). ``table``: column label (a model,
    e.g. "challenger v3") -> metric -> value; None or NaN is shown as missing. ``export_figures``: name -> value
    (may be empty). ``latencies``: column label -> per-question seconds. ``outcome``: what happened to the
    aliases, e.g. "version 3 is now champion", put on the decision line before ``reason``.

    Returns the paths as ``{"report": ..., "metrics": ..., "latency": ...}``. Raises ``InputError`` for an
    empty table or column, latencies with no values, or a value that is not a number.
    """
    clean, arrays = _check_inputs(criteria, table, export_figures, latencies)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT_FILE, "metrics": out_dir / METRICS_PLOT, "latency": out_dir / LATENCY_PLOT}
    colours = colours_for(list(dict.fromkeys([*clean, *arrays])))
    plot_metrics(clean, colours, paths["metrics"])
    plot_latency(arrays, colours, paths["latency"])
    markdown = render_markdown(
        title=title,
        passed=passed,
        reason=reason,
        outcome=outcome,
        criteria=criteria,
        table=clean,
        export_figures=export_figures,
        latencies=arrays,
    )
    paths["report"].write_text(markdown, encoding="utf-8")
    return paths


def decision_record(
    name: str, version: str, decision: GateDecision, table: dict[str, dict[str, float]], figures: dict[str, float]
) -> dict:
    """``decision.json``: the decision with its criteria and figures, for programs."""
    return {
        "registered_model_name": name,
        "version": version,
        "passed": decision.passed,
        "decision": decision.decision,
        "reason": decision.reason,
        "criteria": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.criteria],
        "table": table,
        "export_figures": figures,
    }


def log_report(
    name: str, version: str, decision: GateDecision, columns: list[Scored], figures: dict[str, float]
) -> str:
    """Write ``report/`` (Markdown, plots, decision.json) into the active run; return the Markdown."""
    import mlflow

    table = {s.label: {k: v for k, v in s.metrics.items() if not math.isnan(v)} for s in columns}
    latencies = {s.label: [e.latency_s for e in s.examples] for s in columns if s.examples}
    outcome = (
        f"version {version} is now champion"
        if decision.passed
        else f"version {version} stays challenger; champion unchanged"
    )
    with tempfile.TemporaryDirectory(prefix="llmflow-report-") as tmp:
        out = Path(tmp)
        paths = write_report(
            out,
            title=f"{name} version {version}",
            outcome=outcome,
            passed=decision.passed,
            reason=decision.reason,
            criteria=[(c.name, c.passed, c.detail) for c in decision.criteria],
            table=table,
            export_figures=figures,
            latencies=latencies,
        )
        record = decision_record(name, version, decision, table, figures)
        (out / DECISION_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        mlflow.log_artifacts(str(out), REPORT_DIR)
        return paths["report"].read_text(encoding="utf-8")

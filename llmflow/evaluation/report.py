"""The evaluate step's report: ``report.md`` (decision first) and two plots, ``metrics.png`` and ``latency.png``.

- ``report.md``: the decision on its first line, then the gate's criteria, the metrics of every model side by
  side, the export figures (what int4 cost and bought), and the two plots linked relatively.
- ``metrics.png``: the quality metrics (fractions in [0, 1]: exact_match, contains_answer, token_f1, rouge_l...)
  as grouped bars, one colour per model; below them, one small bar chart per other metric (latency, tokens/s,
  perplexity...), each on its own scale.
- ``latency.png``: one box plot per model of its per-question latencies in seconds, p50 and p95 marked.

Figures are formatted to 4 significant digits (``format_value``: ``0.8333``, ``171.2``, ``0.00228``); a
missing figure is "—". The plots are drawn with matplotlib's object API on the Agg canvas, so they need no
display and leave pyplot's global state (and any open figures) alone; the same input gives the same files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llmflow.errors import InputError
from llmflow.tracking.names import REPORT_FILE

METRICS_PLOT = "metrics.png"
LATENCY_PLOT = "latency.png"
MISSING = "—"

# Metrics that are never fractions to compare on one [0, 1] axis, even when their values fall in [0, 1].
_NOT_FRACTION = re.compile(r"latency|seconds|_s$|per_second|perplexity|nll|tokens|speedup|ratio|^n_|count")
# Bookkeeping metrics: in the table, not in the plots.
_NOT_PLOTTED = re.compile(r"^n_|^promoted$")
# What each export figure means; a figure not listed here is shown without a description.
EXPORT_FIGURES = {
    "perplexity_ratio": "held-out perplexity of the ONNX model / the transformers reference's (1 = no loss)",
    "greedy_agreement": "share of questions where the greedy answers of the two models are identical",
    "first_token_agreement": "share of questions where the first generated token is the same",
    "speedup": "generation speed of the ONNX model / the transformers reference's (tokens/s)",
}
_QUALITY_RETAINED = "quality_retained_"
# One colour per model, in column order (matplotlib's tab10).
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
_DPI = 110


def format_value(value: float | None) -> str:
    """A figure for the report: 4 significant digits (``.4g``), thousands separators from 10,000; "—" if missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


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


def _metric_names(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every metric, in the order first seen."""
    return list(dict.fromkeys(name for metrics in table.values() for name in metrics))


def is_fraction_metric(name: str, values: Sequence[float]) -> bool:
    """A quality metric to plot on the shared [0, 1] axis: a fraction by name and by every known value."""
    known = [v for v in values if not math.isnan(v)]
    return not _NOT_FRACTION.search(name) and bool(known) and all(0.0 <= v <= 1.0 for v in known)


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
    else:
        lines.append("No criteria were checked.")
    columns = list(table)
    lines += ["", "## Metrics", "", "| metric | " + " | ".join(_cell(c) for c in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for name in _metric_names(table):
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


def _colours(columns: Sequence[str]) -> dict[str, str]:
    return {column: _COLOURS[index % len(_COLOURS)] for index, column in enumerate(columns)}


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    # No software/date metadata, so the same input gives the same bytes.
    figure.savefig(path, dpi=_DPI, metadata={"Software": None})


def plot_metrics(table: Mapping[str, Mapping[str, float]], colours: Mapping[str, str], path: Path) -> None:
    """Grouped bars of the fraction metrics, then one small chart per other metric."""
    columns = list(table)
    names = [n for n in _metric_names(table) if not _NOT_PLOTTED.search(n)]
    values = {n: [table[c].get(n, math.nan) for c in columns] for n in names}
    quality = [n for n in names if is_fraction_metric(n, values[n])]
    others = [n for n in names if n not in quality]
    per_row = 3
    other_rows = math.ceil(len(others) / per_row)
    figure = Figure(figsize=(10, 4.2 + 2.8 * other_rows), layout="constrained")
    grid = figure.add_gridspec(1 + other_rows, per_row, height_ratios=[1.5] + [1] * other_rows)
    axes = figure.add_subplot(grid[0, :])
    if quality:
        width = min(0.8 / len(columns), 0.3)
        for index, column in enumerate(columns):
            x = np.arange(len(quality)) + (index - (len(columns) - 1) / 2) * width
            heights = [values[n][index] for n in quality]
            bars = axes.bar(x, np.nan_to_num(heights, nan=0.0), width, label=column, color=colours[column])
            for bar, height in zip(bars, heights, strict=True):
                label = MISSING if math.isnan(height) else format_value(height)
                axes.annotate(
                    label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
                )
        axes.set_xticks(np.arange(len(quality)), quality)
        axes.set_ylim(0, 1.12)
        axes.set_ylabel("score (0 to 1, higher is better)")
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=min(len(columns), 4), frameon=False)
    else:
        axes.text(0.5, 0.5, "no quality metrics in [0, 1]", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    axes.set_title("Quality metrics")
    for number, name in enumerate(others):
        small = figure.add_subplot(grid[1 + number // per_row, number % per_row])
        heights = values[name]
        bars = small.bar(
            range(len(columns)), np.nan_to_num(heights, nan=0.0), color=[colours[c] for c in columns], width=0.6
        )
        for bar, height in zip(bars, heights, strict=True):
            label = MISSING if math.isnan(height) else format_value(height)
            small.annotate(
                label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
            )
        small.set_title(name, fontsize=10)
        small.set_xticks(range(len(columns)), [""] * len(columns))
        small.margins(y=0.2)
        small.set_xlim(-0.8, len(columns) - 0.2)
    _save(figure, path)


def plot_latency(latencies: Mapping[str, np.ndarray], colours: Mapping[str, str], path: Path) -> None:
    """One box per model (seconds); p50 is the box's middle line, p95 a red diamond; both under the box."""
    columns = list(latencies)
    data = [latencies[c] for c in columns]
    figure = Figure(figsize=(max(6.0, 2.2 * len(columns) + 2), 4.8), layout="constrained")
    axes = figure.add_subplot()
    boxes = axes.boxplot(data, patch_artist=True, widths=0.5, medianprops={"color": "black", "linewidth": 2})
    for patch, column in zip(boxes["boxes"], columns, strict=True):
        patch.set_facecolor(colours[column])
        patch.set_alpha(0.6)
    p50s = [float(np.percentile(v, 50)) for v in data]
    p95s = [float(np.percentile(v, 95)) for v in data]
    positions = np.arange(1, len(columns) + 1)
    axes.scatter(positions, p95s, marker="D", color="#d62728", zorder=3, label="p95")
    low, high = min(float(v.min()) for v in data), max(float(v.max()) for v in data)
    if low > 0 and high / low > 20:
        axes.set_yscale("log")
        axes.set_ylabel("latency per question (s, log scale)")
    else:
        axes.set_ylabel("latency per question (s)")
    labels = [
        f"{c}\n{latencies[c].size} questions\np50 {format_value(p50)} s, p95 {format_value(p95)} s"
        for c, p50, p95 in zip(columns, p50s, p95s, strict=True)
    ]
    axes.set_xticks(positions, labels)
    axes.margins(y=0.1)
    axes.legend(handles=[boxes["medians"][0], *axes.collections[:1]], labels=["p50", "p95"], loc="upper left")
    axes.set_title("Latency per question")
    _save(figure, path)


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
    colours = _colours(list(dict.fromkeys([*clean, *arrays])))
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

"""The evaluate step's plots: ``metrics.png`` and ``latency.png``, and the number format the report shares.

- ``metrics.png``: the quality metrics (fractions in [0, 1]: exact_match, contains_answer, token_f1, rouge_l...)
  as grouped bars, one colour per model; below them, one small bar chart per other metric (latency, tokens/s,
  perplexity...), each on its own scale.
- ``latency.png``: one box plot per model of its per-question latencies in seconds, p50 and p95 marked.

The plots are drawn with matplotlib's object API on the Agg canvas, so they need no display and leave
pyplot's global state (and any open figures) alone; the same input gives the same files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib takes a second to import; only the plots need it
    from matplotlib.figure import Figure

METRICS_PLOT = "metrics.png"
LATENCY_PLOT = "latency.png"
MISSING = "—"
# Metrics that are never fractions to compare on one [0, 1] axis, even when their values fall in [0, 1].
_NOT_FRACTION = re.compile(r"latency|seconds|_s$|per_second|perplexity|nll|tokens|speedup|ratio|^n_|count")
# Bookkeeping metrics: in the table, not in the plots.
_NOT_PLOTTED = re.compile(r"^n_|^promoted$")
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


def metric_names(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every metric, in the order first seen."""
    return list(dict.fromkeys(name for metrics in table.values() for name in metrics))


def is_fraction_metric(name: str, values: Sequence[float]) -> bool:
    """A quality metric to plot on the shared [0, 1] axis: a fraction by name and by every known value."""
    known = [v for v in values if not math.isnan(v)]
    return not _NOT_FRACTION.search(name) and bool(known) and all(0.0 <= v <= 1.0 for v in known)


def colours_for(columns: Sequence[str]) -> dict[str, str]:
    return {column: _COLOURS[index % len(_COLOURS)] for index, column in enumerate(columns)}


def save_figure(figure: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    # No software/date metadata, so the same input gives the same bytes.
    figure.savefig(path, dpi=_DPI, metadata={"Software": None})


def plot_metrics(table: Mapping[str, Mapping[str, float]], colours: Mapping[str, str], path: Path) -> None:
    """Grouped bars of the fraction metrics, then one small chart per other metric."""
    columns = list(table)
    names = [n for n in metric_names(table) if not _NOT_PLOTTED.search(n)]
    values = {n: [table[c].get(n, math.nan) for c in columns] for n in names}
    quality = [n for n in names if is_fraction_metric(n, values[n])]
    others = [n for n in names if n not in quality]
    per_row = 3
    other_rows = math.ceil(len(others) / per_row)
    from matplotlib.figure import Figure

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
    save_figure(figure, path)


def plot_latency(latencies: Mapping[str, np.ndarray], colours: Mapping[str, str], path: Path) -> None:
    """One box per model (seconds); p50 is the box's middle line, p95 a red diamond; both under the box."""
    columns = list(latencies)
    data = [latencies[c] for c in columns]
    from matplotlib.figure import Figure

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
    save_figure(figure, path)

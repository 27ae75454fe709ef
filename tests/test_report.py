"""The evaluate report: report.md (decision first, every figure) and the two PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import pytest

from llmflow.errors import InputError
from llmflow.evaluation.report import format_value, is_fraction_metric, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CHALLENGER = "challenger v3"
CHAMPION = "champion v2"
REFERENCE = "reference (transformers)"
TABLE = {
    CHALLENGER: {
        "exact_match": 5 / 6,
        "contains_answer": 1.0,
        "token_f1": 0.912345,
        "rouge_l": 0.9,
        "latency_p50_s": 0.002283,
        "latency_p95_s": 0.0029812,
        "tokens_per_second": 1803.7,
        "perplexity": 6905.82,
        "n_examples": 60,
    },
    CHAMPION: {
        "exact_match": 0.8,
        "contains_answer": 0.95,
        "token_f1": 0.85,
        "rouge_l": 0.86,
        "latency_p50_s": 0.0025,
        "latency_p95_s": 0.0031,
        "tokens_per_second": 1700.0,
        "n_examples": 60,
    },
    REFERENCE: {
        "exact_match": 0.85,
        "contains_answer": 1.0,
        "token_f1": 0.92,
        "rouge_l": 0.93,
        "latency_p50_s": 0.021,
        "latency_p95_s": 0.0396,
        "tokens_per_second": 171.25,
        "perplexity": 7321.2,
        "n_examples": 60,
    },
}
EXPORT = {
    "perplexity_ratio": 0.94326,
    "quality_retained_exact_match": 0.98039,
    "greedy_agreement": 0.95,
    "first_token_agreement": 1.0,
    "speedup": 10.532,
}
LATENCIES = {
    CHALLENGER: [0.0021 + 0.0001 * (i % 7) for i in range(60)],
    CHAMPION: [0.0024 + 0.0001 * (i % 5) for i in range(60)],
    REFERENCE: [0.019 + 0.001 * (i % 11) for i in range(60)],
}
CRITERIA = [
    ("contains_answer >= 0.5", True, "1.000 >= 0.500"),
    ("exact_match >= champion's", True, "0.8333 >= 0.8000 (champion v2)"),
    ("perplexity_ratio <= 1.1", True, "0.9433 <= 1.1"),
]


def _write(out_dir: Path, **changes) -> dict[str, Path]:
    arguments = {
        "title": "Evaluation of tiny-phi3-onnx version 3",
        "passed": True,
        "reason": "contains_answer 1.000 >= 0.500 and exact_match 0.833 >= 0.800 (champion v2)",
        "criteria": CRITERIA,
        "table": TABLE,
        "export_figures": EXPORT,
        "latencies": LATENCIES,
        "outcome": "version 3 is now champion",
    }
    arguments.update(changes)
    return write_report(out_dir, **arguments)


def _table_rows(markdown: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header line starts with ``header_start``: first cell -> other cells."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def _assert_png(path: Path, min_width: int = 500) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= 300
    assert pixels.std() > 0.05  # not a blank canvas
    return height, width


def test_write_report_files(tmp_path: Path):
    paths = _write(tmp_path / "report")
    assert paths == {
        "report": tmp_path / "report" / "report.md",
        "metrics": tmp_path / "report" / "metrics.png",
        "latency": tmp_path / "report" / "latency.png",
    }
    _assert_png(paths["metrics"])
    _assert_png(paths["latency"])
    assert plt.get_fignums() == []  # no pyplot figure left open


def test_report_starts_with_the_decision(tmp_path: Path):
    markdown = _write(tmp_path).get("report").read_text(encoding="utf-8")
    assert markdown.splitlines()[0] == (
        "**PASSED**: version 3 is now champion. "
        "contains_answer 1.000 >= 0.500 and exact_match 0.833 >= 0.800 (champion v2)"
    )
    failed = _write(
        tmp_path / "failed",
        passed=False,
        reason="exact_match 0.700 < 0.800\n(champion v2)",
        outcome="champion stays version 2",
    )
    assert failed["report"].read_text(encoding="utf-8").splitlines()[0] == (
        "**FAILED**: champion stays version 2. exact_match 0.700 < 0.800 (champion v2)"
    )


def test_report_holds_every_figure(tmp_path: Path):
    markdown = _write(tmp_path)["report"].read_text(encoding="utf-8")
    metrics = _table_rows(markdown, "| metric |")
    assert list(metrics) == list(TABLE[CHALLENGER])
    for name, cells in metrics.items():
        assert cells == [format_value(TABLE[column].get(name)) for column in TABLE], name
    assert metrics["exact_match"] == ["0.8333", "0.8", "0.85"]
    assert metrics["perplexity"] == ["6906", "—", "7321"]
    assert metrics["latency_p95_s"] == ["0.002981", "0.0031", "0.0396"]
    header = next(line for line in markdown.splitlines() if line.startswith("| metric |"))
    assert header == f"| metric | {CHALLENGER} | {CHAMPION} | {REFERENCE} |"

    criteria = _table_rows(markdown, "| criterion |")
    assert criteria == {name: ["pass", detail] for name, _, detail in CRITERIA}

    export = _table_rows(markdown, "| figure |")
    assert {name: cells[0] for name, cells in export.items()} == {
        "perplexity_ratio": "0.9433",
        "quality_retained_exact_match": "0.9804",
        "greedy_agreement": "0.95",
        "first_token_agreement": "1",
        "speedup": "10.53",
    }
    assert "exact_match of the ONNX model" in export["quality_retained_exact_match"][1]

    latency = _table_rows(markdown, "| model |")
    assert latency[CHALLENGER][:1] == ["60"]
    assert latency[REFERENCE][1:] == ["0.0235", "0.029"]  # numpy percentiles of 19-29 ms

    assert "![metrics](metrics.png)" in markdown
    assert "![latency](latency.png)" in markdown
    order = [markdown.index(h) for h in ("## Criteria", "## Metrics", "## What int4", "## Latency", "## Plots")]
    assert order == sorted(order)


def test_report_without_champion_or_export_figures(tmp_path: Path):
    table = {CHALLENGER: TABLE[CHALLENGER], REFERENCE: {"exact_match": 0.85, "perplexity": math.nan}}
    paths = _write(
        tmp_path,
        table=table,
        export_figures={},
        latencies={CHALLENGER: LATENCIES[CHALLENGER]},
        criteria=[("contains_answer >= 0.5", False, "0.400 < 0.500")],
        outcome="",
        passed=False,
        reason="contains_answer 0.400 < 0.500 (no champion yet)",
    )
    markdown = paths["report"].read_text(encoding="utf-8")
    assert markdown.splitlines()[0] == "**FAILED**: contains_answer 0.400 < 0.500 (no champion yet)"
    assert CHAMPION not in markdown
    metrics = _table_rows(markdown, "| metric |")
    assert metrics["exact_match"] == ["0.8333", "0.85"]
    assert metrics["perplexity"] == ["6906", "—"]
    assert metrics["token_f1"] == ["0.9123", "—"]
    assert _table_rows(markdown, "| criterion |") == {"contains_answer >= 0.5": ["FAIL", "0.400 < 0.500"]}
    assert "No export figures" in markdown
    _assert_png(paths["metrics"])
    _assert_png(paths["latency"])


def test_metrics_plot_grows_with_the_other_metrics(tmp_path: Path):
    quality_only = {c: {k: v for k, v in m.items() if is_fraction_metric(k, [v])} for c, m in TABLE.items()}
    short, _ = _assert_png(_write(tmp_path / "q", table=quality_only)["metrics"])
    tall, _ = _assert_png(_write(tmp_path / "all")["metrics"])
    assert tall > short * 1.5  # the latency, speed and perplexity panels sit below the quality bars


def test_report_is_deterministic(tmp_path: Path):
    first, second = _write(tmp_path / "a"), _write(tmp_path / "b")
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name


def test_cells_stay_one_line_and_escape_pipes(tmp_path: Path):
    markdown = _write(
        tmp_path, criteria=[("a | b", True, "line one\nline two")], table={"model | x": {"exact_match": 0.5}}
    )["report"].read_text(encoding="utf-8")
    assert "| a \\| b | pass | line one line two |" in markdown
    assert "| metric | model \\| x |" in markdown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5 / 6, "0.8333"),
        (1.0, "1"),
        (0, "0"),
        (171.234, "171.2"),
        (0.0022834, "0.002283"),
        (6905.82, "6906"),
        (12345.6, "12,346"),
        (None, "—"),
        (math.nan, "—"),
        (math.inf, "inf"),
    ],
)
def test_format_value(value, text: str):
    assert format_value(value) == text


def test_fraction_metrics_are_told_from_the_others():
    assert is_fraction_metric("exact_match", [0.8, 1.0])
    assert is_fraction_metric("rouge_l", [0.5, math.nan])
    assert not is_fraction_metric("latency_p50_s", [0.002, 0.02])  # in [0, 1] but seconds
    assert not is_fraction_metric("perplexity_ratio", [0.94])
    assert not is_fraction_metric("score", [0.5, 1.5])
    assert not is_fraction_metric("score", [math.nan])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"table": {}}, r"table \{\} is not accepted; expected at least one column"),
        ({"table": {CHALLENGER: {}}}, "table column 'challenger v3' has no metrics"),
        ({"table": {CHALLENGER: {"exact_match": "high"}}}, r"table\['challenger v3'\]\['exact_match'\] 'high'"),
        ({"latencies": {}}, r"latencies \{\} is not accepted"),
        ({"latencies": {CHALLENGER: []}}, r"latencies\['challenger v3'\] has no values"),
        ({"latencies": {CHALLENGER: [0.1, -0.2]}}, r"latencies\['challenger v3'\] holds -0.2; expected finite"),
        ({"latencies": {CHALLENGER: [0.1, math.nan]}}, "expected finite seconds"),
        ({"export_figures": {"speedup": None}}, r"export_figures\['speedup'\] None is not accepted"),
        ({"criteria": [("gate", "yes", "")]}, r"criterion \('gate', 'yes', ''\) is not accepted"),
    ],
)
def test_bad_input(tmp_path: Path, changes: dict, message: str):
    with pytest.raises(InputError, match=message):
        _write(tmp_path, **changes)
    assert not (tmp_path / "report.md").exists()


def test_the_paired_criterion_shows_its_counts_and_what_they_mean(tmp_path: Path):
    from llmflow.evaluation.gate import GateConfig, gate
    from llmflow.tracking.model_cards import version_description

    def questions(rights: str) -> list[dict[str, float]]:
        return [{"contains_answer": float(mark)} for mark in rights]

    mine, theirs = questions("0011111110"), questions("1111111100")  # two lost, one gained, of ten
    config = GateConfig(
        gate_metrics=("contains_answer",),
        min_scores={},
        champion_tolerance=0.02,
        min_quality_retained=0.0,
        max_perplexity_ratio=1.2,
        max_paired_regressions=0.1,
    )
    figures = {"contains_answer": 0.7, "perplexity": 10.0}
    reference = {"contains_answer": 0.8, "perplexity": 10.0}
    decision = gate("3", figures, None, reference, config, challenger_scores=mine, reference_scores=theirs)
    assert decision.passed, decision.reason
    criteria = [(c.name, c.passed, c.detail) for c in decision.criteria]
    markdown = _write(tmp_path, criteria=criteria, reason=decision.reason)["report"].read_text(encoding="utf-8")
    rows = _table_rows(markdown, "| criterion |")
    assert rows["paired vs reference: contains_answer"] == [
        "pass",
        "2 regressions, 1 improvement of 10 questions: net 1 <= allowed 1 (max_paired_regressions 0.1)",
    ]
    assert "Paired criteria compare the models question by question" in markdown
    description = version_description(markdown, "run123")
    assert "| paired vs reference: contains_answer | pass | 2 regressions, 1 improvement of 10" in description
    assert "Paired criteria" not in _write(tmp_path / "other")["report"].read_text(encoding="utf-8")

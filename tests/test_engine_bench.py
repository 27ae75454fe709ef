"""The pure parts of ``bench.engine`` (og.Engine against the scheduler): figures, checks, decision, table, config edit.

No export and no model: these run in well under a second.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import engine as bench_engine
from bench.engine import (
    ENGINE,
    SCHEDULER,
    client_prompts,
    config_variant,
    counting_scheduler,
    decision,
    engine_config,
    format_table,
    percentile,
    round_figures,
    rows_summary,
    stop_result,
    stop_string_for,
)

BASE = {"model": {"type": "llama", "context_length": 8192}, "search": {"max_length": 8192}}


def record(index: int, text: str, tokens: int, ttft: float | None, error: str | None = None) -> dict[str, Any]:
    return {
        "prompt_index": index,
        "text": text,
        "tokens": tokens,
        "ttft": ttft,
        "error": error,
        "finish_reason": "stop",
    }


def figures(tokens_per_second: float, p50: float | None, equal: bool = True) -> dict[str, Any]:
    return {
        "tokens_per_second": tokens_per_second,
        "ttft_p50_ms": p50,
        "ttft_p99_ms": p50,
        "alone_equal": "4/4" if equal else "3/4",
        "all_alone_equal": equal,
        "other_cpu_cores": 0.05,
        "rows_per_batch": {"max": 4, "mean": 3.5, "count": 2},
    }


KEPT = {"stop strings": {"kept": True}, "seeds": {"kept": True}, "429 (queue full)": {"kept": True}}


def test_engine_config_sets_dynamic_batching_and_leaves_the_base_alone() -> None:
    dynamic = {"max_batch_size": 16, "prefix_caching": True}
    config = engine_config(BASE, dynamic)
    assert config["engine"] == {"dynamic_batching": dynamic}
    assert config["model"] == BASE["model"] and config["search"] == BASE["search"]
    assert "engine" not in BASE
    config["model"]["type"] = "changed"
    assert BASE["model"]["type"] == "llama"  # a deep copy, not the same nested dicts
    dynamic["max_batch_size"] = 1
    assert config["engine"]["dynamic_batching"]["max_batch_size"] == 16


def test_engine_config_none_removes_an_engine_section() -> None:
    with_engine = {**BASE, "engine": {"dynamic_batching": {"max_batch_size": 4}}}
    assert "engine" not in engine_config(with_engine, None)
    assert "engine" in with_engine


def test_config_variant_links_the_files_and_writes_the_edited_config(tmp_path: Any) -> None:
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"graph")
    (onnx / "genai_config.json").write_text(json.dumps(BASE))
    variant = config_variant(onnx, tmp_path / "variant", {"max_batch_size": 16})
    assert (variant / "model.onnx").is_symlink() and (variant / "model.onnx").read_bytes() == b"graph"
    assert not (variant / "genai_config.json").is_symlink()
    assert json.loads((variant / "genai_config.json").read_text())["engine"]["dynamic_batching"] == {
        "max_batch_size": 16
    }
    assert "engine" not in json.loads((onnx / "genai_config.json").read_text())


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.99) == 5.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_round_figures_from_timings() -> None:
    alone = {0: "Paris.", 1: "Madrid."}
    records = [
        record(0, "Paris.", 10, 0.1),
        record(1, "Madrid.", 20, 0.3),
        record(0, "Rome.", 30, 0.2),  # differs from the answer alone
        record(1, "", 0, None, error="generation failed"),
    ]
    result = round_figures(records, 2.0, alone)
    assert result["tokens"] == 60 and result["tokens_per_second"] == 30.0
    assert result["ttft_p50_ms"] == pytest.approx(200.0)
    assert result["ttft_p99_ms"] == pytest.approx(300.0)
    assert result["alone_equal"] == "2/4" and result["all_alone_equal"] is False
    assert result["errors"] == ["generation failed"]


def test_round_figures_without_a_first_token_and_bad_walls() -> None:
    result = round_figures([record(0, "", 0, None)], 1.0, {0: ""})
    assert result["ttft_p50_ms"] is None and result["all_alone_equal"] is True
    with pytest.raises(ValueError):
        round_figures([record(0, "a", 1, 0.1)], 0.0, {0: "a"})
    with pytest.raises(ValueError):
        round_figures([], 1.0, {})


def test_client_prompts_spread_over_the_prompts() -> None:
    assert client_prompts(0, 2, 16) == [0, 1]
    assert client_prompts(15, 2, 16) == [14, 15]
    assert client_prompts(9, 4, 16) == [4, 5, 6, 7]


def test_stop_string_gives_a_strict_prefix() -> None:
    text = "The capital of Spain is Madrid."
    stop = stop_string_for(text)
    assert stop is not None and 0 < text.find(stop)
    assert stop_string_for("Yes.") is None
    good = {"text": text[: text.find(stop)], "finish_reason": "stop", "error": None}
    assert stop_result(good, text, stop)["kept"] is True
    assert stop_result({**good, "text": text}, text, stop)["kept"] is False
    assert stop_result({**good, "finish_reason": "length"}, text, stop)["kept"] is False
    assert stop_result({**good, "error": "rejected"}, text, stop)["kept"] is False


def test_decision_needs_every_client_count_and_every_check() -> None:
    better = {str(n): {ENGINE: figures(30.0, 100.0), SCHEDULER: figures(20.0, 150.0)} for n in (1, 4, 16)}
    assert decision(better, {ENGINE: KEPT})["engine_beats_scheduler"] is True

    slower = {**better, "16": {ENGINE: figures(19.0, 100.0), SCHEDULER: figures(20.0, 150.0)}}
    verdict = decision(slower, {ENGINE: KEPT})
    assert verdict["engine_beats_scheduler"] is False
    assert any(reason.startswith("16 clients: 19.0 tokens/s") for reason in verdict["reasons"])

    later = {**better, "4": {ENGINE: figures(30.0, 200.0), SCHEDULER: figures(20.0, 150.0)}}
    assert decision(later, {ENGINE: KEPT})["engine_beats_scheduler"] is False

    unequal = {**better, "1": {ENGINE: figures(30.0, 100.0, equal=False), SCHEDULER: figures(20.0, 150.0)}}
    assert decision(unequal, {ENGINE: KEPT})["engine_beats_scheduler"] is False

    no_seeds = {**KEPT, "seeds": {"kept": False, "error": "A per-turn seed requires dynamic batching."}}
    verdict = decision(better, {ENGINE: no_seeds})
    assert verdict["reasons"] == ["seeds: not kept (A per-turn seed requires dynamic batching.)"]


def test_format_table_has_a_line_per_engine_and_client_count() -> None:
    rounds = {
        "1": {
            SCHEDULER: figures(20.0, 150.0),
            ENGINE: {**figures(25.5, None), "rows_per_step": {"max": 4, "mean": 2.0}},
        }
    }
    rounds["1"][ENGINE].pop("rows_per_batch")
    table = format_table({"rounds": rounds}).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| 1 | scheduler | 20.0 | 150 ms | 150 ms | 4/4 | 4, 3.5 |")
    assert table[3].startswith("| 1 | og.Engine | 25.5 | n/a | n/a | 4/4 | 4, 2.0 |")


def test_rows_summary_ignores_steps_without_tokens() -> None:
    assert rows_summary([0, 4, 4, 1, 0]) == {"max": 4, "mean": 3.0, "count": 3}
    assert rows_summary([]) == {"max": 0, "mean": 0.0, "count": 0}


def test_counting_scheduler_records_batches_taken_while_the_base_starts() -> None:
    class Base:
        def __init__(self, batches: list[list[int]]) -> None:
            self.batches = batches
            while self._take(0) is not None:  # the base's thread starts taking in __init__
                pass

        def _take(self, batches: int) -> list[int] | None:
            return self.batches.pop(0) if self.batches else None

    counting = counting_scheduler(Base)([[1, 2, 3], [4], []])
    assert counting.steps == [3, 1]


def test_the_dynamic_settings_ask_for_16_rows_with_prefix_caching_on_and_off() -> None:
    settings = bench_engine.DYNAMIC_SETTINGS.values()
    assert all(s["max_batch_size"] >= 16 for s in settings)
    assert {s.get("prefix_caching") for s in settings} >= {True, False}

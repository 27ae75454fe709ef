"""The chain's graph: its order, the part a version rests on, and what each step is handed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from llmflow.chain.graph import ENTRY_POINTS, FLAVOURS, GRAPH, leading_to, walk
from llmflow.chain.runner import RERUN_CHOICES
from llmflow.tracking.names import TAG_MODEL_URI, TAG_REGISTERED_VERSION


def _keys(steps: Any) -> list[str]:
    return [step.key for step in steps]


def test_every_step_reads_only_steps_before_it():
    seen: set[str] = set()
    for step in GRAPH:
        assert set(step.upstream) <= seen, step.key
        seen.add(step.key)
    assert len(seen) == len(GRAPH)


def test_the_chain_has_both_flavours_and_rerun_from_names_its_entry_points():
    keys = "download export_onnx log_pyfunc log_transformers register:onnx evaluate:onnx register:transformers"
    assert _keys(GRAPH) == [*keys.split(), "evaluate:transformers"]
    assert FLAVOURS == ("onnx", "transformers")
    assert ENTRY_POINTS == ("download", "export_onnx", "log_pyfunc", "log_transformers", "register", "evaluate")
    assert RERUN_CHOICES == ("none", "all", *ENTRY_POINTS)


def test_leading_to_is_what_a_version_rests_on():
    assert _keys(leading_to("log_pyfunc")) == ["download", "export_onnx", "log_pyfunc"]
    assert _keys(leading_to("log_transformers")) == ["download", "log_transformers"]
    # The ONNX model's evaluation needs its reference, the transformers model, too.
    assert _keys(leading_to("evaluate:onnx")) == [
        "download",
        "export_onnx",
        "log_pyfunc",
        "log_transformers",
        "register:onnx",
        "evaluate:onnx",
    ]


def _run(key: str) -> SimpleNamespace:
    tags = {TAG_MODEL_URI: f"models:/m-{key}", TAG_REGISTERED_VERSION: "7"}
    return SimpleNamespace(info=SimpleNamespace(run_id=f"run-{key}"), data=SimpleNamespace(tags=tags))


def test_walk_hands_each_step_run_ids_model_uris_and_versions_of_its_upstream():
    calls: list[tuple[str, dict[str, str], list[str], str]] = []

    def run_step(entry_point: str, params: dict[str, str], upstream: list[str], key: str) -> SimpleNamespace:
        calls.append((entry_point, params, upstream, key))
        return _run(key)

    runs = walk(GRAPH, lambda step: {"own": step.key}, run_step)
    assert list(runs) == _keys(GRAPH)
    by_key = {key: (entry_point, params, upstream) for entry_point, params, upstream, key in calls}
    assert by_key["export_onnx"] == (
        "export_onnx",
        {"own": "export_onnx", "download_run_id": "run-download"},
        ["run-download"],
    )
    assert by_key["register:onnx"] == (
        "register",
        {"own": "register:onnx", "model_uri": "models:/m-log_pyfunc"},
        ["run-log_pyfunc"],
    )
    assert by_key["evaluate:onnx"] == (
        "evaluate",
        {"own": "evaluate:onnx", "model_version": "7", "reference_model_uri": "models:/m-log_transformers"},
        ["run-register:onnx", "run-log_transformers"],
    )
    assert by_key["evaluate:transformers"][1]["reference_model_uri"] == "none"
    assert by_key["evaluate:transformers"][2] == ["run-register:transformers"]

"""main's own logic: up-front validation and the reuse rules, without running the chain."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from llmflow import pipeline
from llmflow.errors import InputError
from llmflow.runs import TAG_CODE_DIGEST, TAG_HF_REPO, TAG_HF_SHA, TAG_STEP, code_digest

GOOD = {
    "model": "microsoft/Phi-3-mini-4k-instruct",
    "precision": "int4",
    "execution_provider": "cpu",
    "int4_block_size": 32,
    "int4_accuracy_level": 4,
    "registered_model_name": "phi3",
    "max_new_tokens": 256,
    "qa_path": "data/qa.jsonl",
    "heldout_path": "data/heldout.txt",
    "eval_max_new_tokens": 32,
    "gate_metrics": "exact_match,contains_answer,token_f1,rouge_l",
    "min_scores": "contains_answer=0.5",
    "champion_tolerance": 0.02,
    "min_quality_retained": 0.9,
    "max_perplexity_ratio": 1.2,
}


def test_defaults_validate():
    pipeline.validate_main_options(**GOOD)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "./no/such/folder"}, "local model folder './no/such/folder' not found"),
        ({"precision": "fp16"}, "fp16"),
        ({"precision": "int3"}, "int3"),
        ({"execution_provider": "tpu"}, "tpu"),
        ({"int4_block_size": 48}, "48"),
        ({"registered_model_name": "has space"}, "registered model name 'has space'"),
        ({"max_new_tokens": 0}, "max_new_tokens 0"),
        ({"min_scores": "contains_answer=1.5"}, "min_scores contains_answer 1.5 is not accepted"),
        ({"gate_metrics": "exact_match,bleu"}, "gate_metrics names metric 'bleu', which does not exist"),
        ({"qa_path": "missing.jsonl"}, "QA file 'missing.jsonl' not found"),
        ({"heldout_path": "missing.txt"}, "missing.txt"),
    ],
)
def test_bad_values_fail_before_any_step(change: dict, message: str):
    with pytest.raises(InputError, match=message.replace(".", r"\.")) as excinfo:
        pipeline.validate_main_options(**{**GOOD, **change})
    assert "\n" not in str(excinfo.value)


def test_empty_qa_file_fails_up_front(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        pipeline.validate_main_options(**{**GOOD, "qa_path": str(empty)})


@pytest.mark.parametrize(("a", "b", "same"), [("32", "32.0", True), ("32", "33", False), ("int4", "int4", True)])
def test_parameters_compare_as_numbers_when_numeric(a: str, b: str, same: bool):
    assert pipeline._same_value(a, b) is same


def _finished_run(step: str, params: dict[str, str], tags: dict[str, str] | None = None) -> str:
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        mlflow.set_tags({TAG_STEP: step, TAG_CODE_DIGEST: code_digest(), **(tags or {})})
    return run.info.run_id


def test_reuse_needs_same_step_params_and_code(tracking_uri: str):
    experiment_id = mlflow.get_experiment_by_name("test").experiment_id
    params = {"export_run_id": "e1", "max_new_tokens": "256"}
    run_id = _finished_run("log_pyfunc", params)
    assert (
        pipeline.find_reusable_run(experiment_id, "log_pyfunc", {**params, "max_new_tokens": "256.0"}).info.run_id
        == run_id
    )
    assert pipeline.find_reusable_run(experiment_id, "log_pyfunc", {**params, "export_run_id": "e2"}) is None
    assert pipeline.find_reusable_run(experiment_id, "log_transformers", params) is None
    # register, evaluate and download act on state outside their parameters: never reused.
    assert pipeline.find_reusable_run(experiment_id, "download", {}) is None
    with mlflow.start_run():
        mlflow.log_params(params)
        mlflow.set_tags({TAG_STEP: "log_pyfunc", TAG_CODE_DIGEST: "other-code"})
    assert pipeline.find_reusable_run(experiment_id, "log_pyfunc", params).info.run_id == run_id


def test_failed_runs_are_not_reused(tracking_uri: str):
    experiment_id = mlflow.get_experiment_by_name("test").experiment_id
    params = {"download_run_id": "d1", "max_new_tokens": "8"}
    with pytest.raises(RuntimeError), mlflow.start_run():
        mlflow.log_params(params)
        mlflow.set_tags({TAG_STEP: "log_transformers", TAG_CODE_DIGEST: code_digest()})
        raise RuntimeError("step crashed")
    assert pipeline.find_reusable_run(experiment_id, "log_transformers", params) is None


def test_a_repeated_download_hands_on_the_first_run_of_that_content(tracking_uri: str):
    experiment_id = mlflow.get_experiment_by_name("test").experiment_id
    same = {TAG_HF_REPO: "local/tiny", TAG_HF_SHA: "sha256:aaa"}
    first = _finished_run("download", {"model": "/a"}, same)
    _finished_run("download", {"model": "/b"}, {TAG_HF_REPO: "local/tiny", TAG_HF_SHA: "sha256:bbb"})
    latest = mlflow.get_run(_finished_run("download", {"model": "/a"}, same))
    assert pipeline.canonical_download_run(experiment_id, latest).info.run_id == first
    changed = mlflow.get_run(_finished_run("download", {"model": "/c"}, {TAG_HF_REPO: "x", TAG_HF_SHA: "y"}))
    assert pipeline.canonical_download_run(experiment_id, changed).info.run_id == changed.info.run_id

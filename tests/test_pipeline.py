"""main's own logic: up-front validation and the reuse rules, without running the chain."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from llmflow import main as pipeline
from llmflow.chain import reuse
from llmflow.chain.runner import forced_steps
from llmflow.errors import InputError
from llmflow.options import build
from llmflow.tracking.digest import code_digest, step_sources
from llmflow.tracking.names import TAG_CODE_DIGEST, TAG_HF_SHA, TAG_STEP, TAG_UPSTREAM

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
    "rerun_from": "none",
}


def test_defaults_validate():
    build(pipeline.MainOptions, GOOD).check()


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
        ({"rerun_from": "evaluation"}, "rerun_from 'evaluation' is not accepted; expected one of none, all, download"),
    ],
)
def test_bad_values_fail_before_any_step(change: dict, message: str):
    with pytest.raises(InputError, match=message.replace(".", r"\.")) as excinfo:
        build(pipeline.MainOptions, {**GOOD, **change}).check()
    assert "\n" not in str(excinfo.value)


def test_empty_qa_file_fails_up_front(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        build(pipeline.MainOptions, {**GOOD, "qa_path": str(empty)}).check()


@pytest.mark.parametrize(
    ("value", "normal"), [("32", "32"), ("32.0", "32"), (32, "32"), (0.02, "0.02"), ("0.020", "0.02"), ("int4", "int4")]
)
def test_parameters_are_normalised_to_strings(value, normal: str):
    assert reuse.normalise(value) == normal


def _finished_run(step: str, params: dict[str, str], upstream: str = "", tags: dict | None = None) -> str:
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        mlflow.set_tags({TAG_STEP: step, TAG_CODE_DIGEST: code_digest(step), TAG_UPSTREAM: upstream, **(tags or {})})
    return run.info.run_id


def _experiment() -> str:
    return mlflow.get_experiment_by_name("test").experiment_id


def test_reuse_needs_the_same_step_parameters_code_and_upstream(tracking_uri: str):
    params = {"export_run_id": "e1", "max_new_tokens": "256"}
    run_id = _finished_run("log_pyfunc", params, upstream="e1")
    found = reuse.find_reusable_run(_experiment(), "log_pyfunc", {**params, "max_new_tokens": "256.0"}, ["e1"])
    assert found.info.run_id == run_id
    assert reuse.find_reusable_run(_experiment(), "log_pyfunc", {**params, "max_new_tokens": "128"}, ["e1"]) is None
    assert reuse.find_reusable_run(_experiment(), "log_pyfunc", params, ["e2"]) is None
    assert reuse.find_reusable_run(_experiment(), "log_transformers", params, ["e1"]) is None
    with mlflow.start_run():
        mlflow.log_params(params)
        mlflow.set_tags({TAG_STEP: "log_pyfunc", TAG_CODE_DIGEST: "other-code", TAG_UPSTREAM: "e1"})
    assert reuse.find_reusable_run(_experiment(), "log_pyfunc", params, ["e1"]).info.run_id == run_id


def test_failed_and_killed_runs_are_never_reused(tracking_uri: str):
    params = {"download_run_id": "d1", "max_new_tokens": "8"}
    with pytest.raises(RuntimeError), mlflow.start_run():
        mlflow.log_params(params)
        mlflow.set_tags({TAG_STEP: "log_transformers", TAG_CODE_DIGEST: code_digest("log_transformers")})
        mlflow.set_tag(TAG_UPSTREAM, "d1")
        raise RuntimeError("step crashed")
    killed = mlflow.start_run()
    mlflow.log_params(params)
    mlflow.set_tags(
        {TAG_STEP: "log_transformers", TAG_CODE_DIGEST: code_digest("log_transformers"), TAG_UPSTREAM: "d1"}
    )
    mlflow.end_run("KILLED")
    assert mlflow.get_run(killed.info.run_id).info.status == "KILLED"
    assert reuse.find_reusable_run(_experiment(), "log_transformers", params, ["d1"]) is None


def test_a_download_is_reused_only_while_the_folder_holds_the_same_content(tracking_uri: str, tmp_path: Path):
    from llmflow.sources.hub import source_fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    params = {"model": str(folder), "revision": "main"}
    run_id = _finished_run("download", params, tags={TAG_HF_SHA: source_fingerprint(str(folder), "main")})
    assert reuse.find_reusable_run(_experiment(), "download", params, []).info.run_id == run_id
    (folder / "config.json").write_text('{"changed": true}')
    assert reuse.find_reusable_run(_experiment(), "download", params, []) is None


def test_a_step_digest_covers_its_own_code_and_not_other_steps(tmp_path: Path):
    import shutil

    from llmflow import PROJECT_ROOT

    root = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT, root, ignore=shutil.ignore_patterns(".venv", ".git", "build", "mlruns", "*.db"))
    names = {p.relative_to(root).as_posix() for p in step_sources("log_pyfunc", root)}
    # Its script, its module, the models-from-code file it logs (named as a string) and what they import.
    assert {"steps/log_pyfunc.py", "llmflow/log_pyfunc.py", "llmflow/chat_model/onnx_chat_model.py"} <= names
    assert "llmflow/chat_model/chat_protocol.py" in names
    assert "llmflow/evaluate.py" not in names
    before = {step: code_digest.__wrapped__(step, root) for step in ("download", "log_pyfunc", "evaluate")}
    with (root / "llmflow" / "log_pyfunc.py").open("a") as handle:
        handle.write("\n# an edit\n")
    after = {step: code_digest.__wrapped__(step, root) for step in before}
    assert after["log_pyfunc"] != before["log_pyfunc"]
    assert after["download"] == before["download"]
    assert after["evaluate"] == before["evaluate"]
    with (root / "requirements.txt").open("a") as handle:
        handle.write("\n")
    assert all(code_digest.__wrapped__(step, root) != after[step] for step in before)


@pytest.mark.parametrize(
    ("rerun_from", "forced"),
    [("none", set()), ("all", {"download"}), ("log_pyfunc", {"log_pyfunc"}), ("evaluate", {"evaluate"})],
)
def test_rerun_from_forces_a_step(rerun_from: str, forced: set):
    assert forced_steps(rerun_from) == forced

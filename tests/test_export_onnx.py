"""Step ``export_onnx``: option validation, the builder call (stubbed), and the real export of the tiny Phi-3."""

from __future__ import annotations

import inspect
import itertools
import json
import re
import shutil
from pathlib import Path

import mlflow
import onnxruntime_genai as og
import pytest
from mlproject import mlproject_parameters
from onnxruntime_genai.models import builder

from llmflow import export_onnx as export_module
from llmflow.download import DownloadOptions, download
from llmflow.errors import InputError
from llmflow.export.builder import builder_extra_options
from llmflow.export.recipe import Int4Recipe
from llmflow.export_onnx import (
    SUPPORTED_PAIRS,
    TAG_SMOKE_TEST,
    ExportOptions,
    ExportSettings,
    export_onnx,
    run_builder,
)
from llmflow.options import names, parse
from llmflow.sources.manifest import build_manifest
from llmflow.tracking.names import (
    TAG_DOWNLOAD_RUN,
    TAG_ERROR,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_PRECISION,
)
from steps import export_onnx as export_step


def builder_help_pairs() -> set[tuple[str, str]]:
    """The pairs the builder's own help text lists ("Valid precision + execution provider combinations are: FP32
    CPU, ..."), for the two providers this project supports: read from the installed builder, so an upgrade that
    changes them fails here."""
    sentence = re.search(r"combinations are: ([^\"]+)", inspect.getsource(builder))
    assert sentence, "the builder's help text no longer lists its precision/execution provider combinations"
    pairs = {tuple(pair.strip().lower().split(" ", 1)) for pair in sentence[1].split(",")}
    return {(precision, provider) for precision, provider in pairs if provider in ("cpu", "cuda")}


class FakeBuilder:
    """Records the calls that ``run_builder`` makes into the builder module."""

    def __init__(self, error: Exception | None = None) -> None:
        self.parse_calls: list[tuple] = []
        self.create_calls: list[tuple] = []
        self.error = error

    def parse_extra_options(self, *args):
        self.parse_calls.append(args)
        return {"parsed": "options"}

    def create_model(self, *args, **kwargs):
        self.create_calls.append((args, kwargs))
        if self.error:
            raise self.error


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One SQLite store for this module's runs: creating a store costs seconds, a run does not."""
    root = tmp_path_factory.mktemp("export-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("export", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_tracking_uri(None)
    return uri, experiment_id


@pytest.fixture
def store(module_store: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow at the module's store for one test, as the ``tracking_uri`` fixture does for a fresh one."""
    uri, experiment_id = module_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def fake_builder(monkeypatch: pytest.MonkeyPatch) -> FakeBuilder:
    fake = FakeBuilder()
    # No model to calibrate on: the GPTQ calibration is tested with real models (tests/test_export_gptq.py).
    monkeypatch.setattr("llmflow.export.builder.calibrated_transform", lambda *args: None)
    monkeypatch.setattr(builder, "parse_extra_options", fake.parse_extra_options)
    monkeypatch.setattr(builder, "create_model", fake.create_model)
    return fake


# --- unit tier ---------------------------------------------------------------------------------------------


def validate_export_options(precision: str, provider: str, block_size: int, accuracy_level: int) -> None:
    ExportSettings(
        precision=precision,
        execution_provider=provider,
        int4_block_size=block_size,
        int4_accuracy_level=accuracy_level,
    ).check()


@pytest.mark.parametrize(
    ("precision", "provider"), itertools.product(("int4", "int8", "fp16", "fp32"), ("cpu", "cuda"))
)
def test_pair_matrix_follows_the_builder(precision: str, provider: str):
    if (precision, provider) in builder_help_pairs():
        validate_export_options(precision, provider, 32, 4)
    else:
        with pytest.raises(InputError, match="accepted precision/execution_provider pairs: fp32/cpu, fp32/cuda"):
            validate_export_options(precision, provider, 32, 4)


def test_supported_pairs_constant_is_the_builder_list():
    # bf16 is the builder's and not this project's: its precision list has no bf16.
    assert set(SUPPORTED_PAIRS) == {pair for pair in builder_help_pairs() if pair[0] != "bf16"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("int3", "cpu", 32, 4), "precision 'int3' is not supported; expected one of: int4, int8, fp16, fp32"),
        (("int4", "dml", 32, 4), "execution_provider 'dml' is not supported; expected one of: cpu, cuda"),
        (("fp16", "cpu", 32, 4), "precision 'fp16' with execution_provider 'cpu' is not supported"),
        (("int4", "cpu", 48, 4), "int4_block_size '48' is not supported; expected one of: 16, 32, 64, 128, 256"),
        (("int4", "cpu", 32, 5), "int4_accuracy_level '5' is not supported; expected one of: 0, 1, 2, 3, 4"),
        (("fp32", "cpu", 7, 4), "int4_block_size '7' is not supported"),
    ],
)
def test_validation_names_the_value_and_what_is_accepted(options: tuple, expected: str):
    with pytest.raises(InputError) as info:
        validate_export_options(*options)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_int4_options_only_for_int4():
    recipe = Int4Recipe(block_size=64, accuracy_level=1)
    assert builder_extra_options("int4", recipe) == ["block_size=64", "accuracy_level=1"]
    assert builder_extra_options("int8", recipe) == []
    assert builder_extra_options("fp32", recipe) == []


def test_every_recipe_choice_becomes_a_builder_option():
    recipe = Int4Recipe(algo="k_quant", int8=("last_matmul", "mixed_layers", "qkv"), symmetric=False, block_size=16)
    assert builder_extra_options("int4", recipe, tied_embeddings=True) == [
        "block_size=16",
        "accuracy_level=4",
        "algo_config=k_quant",
        "is_symmetric=false",
        "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8",
        "shared_embeddings=false",
    ]
    # A tied embedding stays shared with a symmetric int4 head, as the builder does by default.
    assert "shared_embeddings=false" not in builder_extra_options("int4", Int4Recipe(), tied_embeddings=True)
    assert recipe.label == "k_quant-asym-b16-a4+last_matmul+mixed_layers+qkv"


def test_the_qkv_selector_picks_every_attention_input_projection():
    names = ["/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.0/attn/o_proj/MatMul", "/lm_head/MatMul"]
    assert Int4Recipe(int8=("qkv",)).int8_nodes(names) == ["/model/layers.0/attn/qkv_proj/MatMul"]
    assert Int4Recipe(int8=("last_matmul",)).int8_nodes(names) == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("int4_algo", "awq", "int4_algo 'awq' is not supported; expected one of: gptq, default, rtn, k_quant"),
        (
            "int4_mixed_precision",
            "last_matmul,lm_head",
            "int4_mixed_precision 'last_matmul,lm_head' is not accepted; expected 'none' or a comma-separated list "
            "of last_matmul, mixed_layers, qkv",
        ),
        ("int4_mixed_precision", "none,qkv", "int4_mixed_precision 'none,qkv' is not accepted"),
        ("int4_symmetric", "yes", "int4_symmetric 'yes' is not accepted; expected true or false"),
    ],
)
def test_recipe_options_name_the_value_and_what_is_accepted(field: str, value: str, expected: str):
    with pytest.raises(InputError) as info:
        ExportSettings(**{field: value}).check()
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_settings_make_the_recipe():
    settings = ExportSettings(int4_algo="rtn", int4_mixed_precision="qkv, last_matmul", int4_symmetric=False)
    assert settings.int4_recipe() == Int4Recipe(algo="rtn", int8=("last_matmul", "qkv"), symmetric=False)
    assert ExportSettings(int4_mixed_precision="none").int4_recipe().int8 == ()


def test_the_builders_printed_lines_go_to_the_debug_log(
    fake_builder: FakeBuilder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    """A line per layer read is noise in a person's terminal (32 of them for Phi-3); the progress bar stays."""
    real = fake_builder.create_model

    def printing(*args, **kwargs):
        print("GroupQueryAttention (GQA) is used in this model.\nReading layer 0\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "create_model", printing)
    with caplog.at_level("DEBUG", logger="llmflow.export.builder"):
        run_builder(tmp_path / "hf", tmp_path / "out", ExportSettings(precision="int4"))
    assert capsys.readouterr().out == ""
    assert [r.getMessage() for r in caplog.records if r.name == "llmflow.export.builder"] == [
        "builder: GroupQueryAttention (GQA) is used in this model.",
        "builder: Reading layer 0",
    ]


def test_run_builder_passes_exact_arguments(fake_builder: FakeBuilder, tmp_path: Path):
    out = run_builder(
        tmp_path / "hf",
        tmp_path / "out",
        ExportSettings(precision="int4", execution_provider="cuda", int4_block_size=64, int4_accuracy_level=1),
    )
    assert out == tmp_path / "out"
    [(model_name, input_path, output_dir, precision, provider, cache_dir, extra)] = fake_builder.parse_calls
    assert (model_name, input_path, output_dir, precision, provider) == (
        None,
        str(tmp_path / "hf"),
        str(tmp_path / "out"),
        "int4",
        "cuda",
    )
    # The default recipe: uint4 with zero points, int8 LM head and llama.cpp's layers (qkv is applied in nbits).
    assert extra == [
        "block_size=64",
        "accuracy_level=1",
        "is_symmetric=false",
        "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8",
    ]
    [(args, kwargs)] = fake_builder.create_calls
    assert args == (None, str(tmp_path / "hf"), str(tmp_path / "out"), "int4", "cuda", cache_dir)
    assert kwargs == {"parsed": "options"}
    assert not Path(cache_dir).exists(), "the builder's cache dir is temporary"


def test_run_builder_passes_no_int4_options_for_fp32(fake_builder: FakeBuilder, tmp_path: Path):
    run_builder(tmp_path / "hf", tmp_path / "out", ExportSettings(precision="fp32"))
    assert fake_builder.parse_calls[0][3:5] == ("fp32", "cpu")
    assert fake_builder.parse_calls[0][6] == []


def test_run_builder_validates_before_calling_the_builder(fake_builder: FakeBuilder, tmp_path: Path):
    with pytest.raises(InputError, match="precision 'fp16' with execution_provider 'cpu'"):
        run_builder(tmp_path, tmp_path / "out", ExportSettings(precision="fp16"))
    assert fake_builder.parse_calls == [] and fake_builder.create_calls == []


def test_run_builder_turns_builder_errors_into_one_line(fake_builder: FakeBuilder, tmp_path: Path):
    fake_builder.error = NotImplementedError("The /x/gpt2 model is not currently supported.\nsecond line")
    with pytest.raises(InputError) as info:
        run_builder(tmp_path / "gpt2", tmp_path / "out", ExportSettings(precision="int4"))
    message = str(info.value)
    assert message == (
        f"the onnxruntime-genai model builder cannot export '{tmp_path / 'gpt2'}' as int4/cpu: "
        "The /x/gpt2 model is not currently supported."
    )


def test_run_builder_lets_unexpected_errors_through(fake_builder: FakeBuilder, tmp_path: Path):
    fake_builder.error = ZeroDivisionError("bug")
    with pytest.raises(ZeroDivisionError):
        run_builder(tmp_path, tmp_path / "out", ExportSettings(precision="int4"))


def test_step_parser_has_exactly_the_mlproject_parameters():
    flags = set(names(ExportOptions))
    assert flags == set(mlproject_parameters("export_onnx"))
    assert parse(
        ExportOptions, "export_onnx", "", ["--download-run-id", "abc", "--int4-block-size", "64.0"]
    ).params() == {
        "download_run_id": "abc",
        "precision": "int4",
        "execution_provider": "cpu",
        "int4_block_size": 64,
        "int4_accuracy_level": 4,
        "int4_algo": "gptq",
        "int4_mixed_precision": "last_matmul,mixed_layers,qkv",
        "int4_symmetric": False,
        "int4_clip": "none",
        "onnx_source": "export",
    }


def test_step_script_rejects_a_bad_pair_with_one_line(store: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        export_step.main(["--download-run-id", "nope", "--precision", "fp16", "--execution-provider", "cpu"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: export_onnx: precision 'fp16' with execution_provider 'cpu' is not supported")


def test_bad_options_fail_before_the_download_run_is_read(store: str):
    with pytest.raises(InputError, match="int4_accuracy_level '9'"):
        export_onnx(
            ExportOptions(
                download_run_id="no-such-run",
                precision="int4",
                execution_provider="cpu",
                int4_block_size=32,
                int4_accuracy_level=9,
            )
        )
    run = mlflow.last_active_run()
    assert run.info.status == "FAILED"
    assert "int4_accuracy_level '9'" in run.data.tags[TAG_ERROR]


def test_unknown_download_run_is_rejected(store: str):
    with pytest.raises(InputError, match="run 'no-such-run' not found"):
        export_onnx(ExportOptions(download_run_id="no-such-run"))


def test_cuda_export_without_cuda_skips_the_smoke_test_and_says_why(
    store: str, tiny_model_dir: Path, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    def copy_export(model_dir, out_dir, *options):
        shutil.copytree(onnx_dir, out_dir)
        return out_dir

    monkeypatch.setattr(export_module, "run_builder", copy_export)
    monkeypatch.setattr(og, "is_cuda_available", lambda: False)
    dl = download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    result = export_onnx(
        ExportOptions(
            download_run_id=dl.run_id,
            precision="int4",
            execution_provider="cuda",
            int4_block_size=32,
            int4_accuracy_level=4,
        )
    )
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_SMOKE_TEST].startswith("skipped: the installed onnxruntime-genai")
    assert "no CUDA provider" in run.data.tags[TAG_SMOKE_TEST]
    assert result.smoke_test == run.data.tags[TAG_SMOKE_TEST]
    assert "smoke_tokens" not in run.data.metrics
    assert "smoke_test.txt" not in {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}


# --- integration tier: the real builder on the tiny Phi-3 ---------------------------------------------------


def test_onnx_dir_holds_what_onnxruntime_genai_needs(onnx_dir: Path):
    names = {p.name for p in onnx_dir.iterdir()}
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "chat_template.jinja"} <= names
    config = json.loads((onnx_dir / "genai_config.json").read_text())
    assert config["model"]["type"] == "phi3"
    assert config["model"]["context_length"] == 512


def test_export_step_on_the_tiny_model(store: str, tiny_model_dir: Path, onnx_dir: Path):
    dl = download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    result = export_onnx(ExportOptions(download_run_id=dl.run_id))

    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[TAG_PRECISION] == "int4" and tags[TAG_EXECUTION_PROVIDER] == "cpu"
    assert tags[TAG_DOWNLOAD_RUN] == dl.run_id
    assert (tags[TAG_HF_REPO], tags[TAG_HF_SHA]) == (dl.repo_id, dl.commit_sha)
    assert tags[TAG_SMOKE_TEST] == "passed"
    assert run.data.params["int4_block_size"] == "32"

    client = mlflow.MlflowClient()
    onnx_files = {Path(a.path).name for a in client.list_artifacts(result.run_id, "onnx")}
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "chat_template.jinja"} <= onnx_files

    manifest = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/onnx_manifest.json")
    # A second build (the session's onnx_dir, from another copy of the same model) is byte-identical.
    assert manifest["files"] == build_manifest(onnx_dir)
    assert run.data.metrics["onnx_size_bytes"] == sum(f["size"] for f in manifest["files"]) == result.onnx_size_bytes
    assert run.data.metrics["export_seconds"] > 0

    smoke = mlflow.artifacts.load_text(f"runs:/{result.run_id}/smoke_test.txt")
    assert "<|user|>\nWhat is the capital of Spain?<|end|>\n<|assistant|>\n" in smoke
    assert smoke.rstrip().endswith("answer:\nMadrid")
    assert run.data.metrics["smoke_tokens"] >= 1


def test_unsupported_architecture_is_an_input_error(tmp_path: Path, tiny_model_dir: Path):
    model_dir = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["NotARealForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="cannot export .* as int4/cpu: The .* model is not currently supported"):
        run_builder(model_dir, tmp_path / "out", ExportSettings(precision="int4"))


def test_too_little_memory_fails_before_the_weights_are_fetched_or_the_builder_runs(
    store: str, tiny_model_dir: Path, fake_builder: FakeBuilder, monkeypatch: pytest.MonkeyPatch
):
    from llmflow.export import memory
    from llmflow.export.memory import MemoryFound

    download_run = download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
    fetched: list[bool] = []
    real_fetch = export_module.model_dir_from_run
    for module in (export_module, memory):  # the step's fetch, and the preflight's of config.json alone
        monkeypatch.setattr(
            module,
            "model_dir_from_run",
            lambda *a, **k: fetched.append(k.get("weights", True)) or real_fetch(*a, **k),
        )
    monkeypatch.setattr(memory, "memory_found", lambda: MemoryFound(1 << 20, "cgroup limit"))
    with pytest.raises(InputError, match=r"needs about .* GiB .* has 0\.0 GiB \(cgroup limit\); pass onnx_source="):
        export_onnx(ExportOptions(download_run_id=download_run.run_id))
    assert fetched == [False]
    assert fake_builder.create_calls == []
    assert "needs about" in mlflow.last_active_run().data.tags[TAG_ERROR]

"""Step ``log_pyfunc`` and the models-from-code pyfunc around onnxruntime-genai, on the tiny Phi-3."""

from __future__ import annotations

import importlib.metadata
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.models import convert_input_example_to_serving_input, validate_serving_input
from mlflow.pyfunc import PythonModelContext

from llmflow import export_onnx as export_module
from llmflow.cli import mlproject_parameters
from llmflow.download import download
from llmflow.errors import InputError
from llmflow.export_onnx import export_onnx
from llmflow.log_pyfunc import build_signature, example_prompt, generation_defaults, log_pyfunc, serving_requirements
from llmflow.onnx_chat_model import OnnxChatModel
from llmflow.runs import (
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_EXPORT_RUN,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_PRECISION,
)
from steps import log_pyfunc as log_pyfunc_step


def chat(question: str) -> str:
    return f"<|user|>\n{question}<|end|>\n<|assistant|>\n"


SPAIN, FRANCE = chat("What is the capital of Spain?"), chat("What is the capital of France?")
TOO_LONG = chat("What is the capital of Spain? " * 200)


@dataclass(frozen=True)
class Logged:
    tracking_uri: str
    export_run_id: str
    run_id: str
    model_uri: str


@pytest.fixture(scope="module")
def logged(tiny_model_dir: Path, onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """download -> export_onnx -> log_pyfunc in a store of this module; the export reuses the session's build."""

    def copy_export(model_dir, out_dir, *options):
        shutil.copytree(onnx_dir, out_dir)
        return out_dir

    root = tmp_path_factory.mktemp("pyfunc-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setattr(export_module, "run_builder", copy_export)
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment("pyfunc", artifact_location=(root / "artifacts").as_uri())
        patch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        mlflow.set_experiment(experiment_id=experiment_id)
        dl = download(str(tiny_model_dir), "main")
        export = export_onnx(dl.run_id, "int4", "cpu", 32, 4)
        result = log_pyfunc(export.run_id, 24)
    mlflow.set_tracking_uri(None)
    return Logged(uri, export.run_id, result.run_id, result.model_uri)


@pytest.fixture
def store(logged: Logged, monkeypatch: pytest.MonkeyPatch) -> Logged:
    """Point MLflow at the module's store for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.tracking_uri)
    mlflow.set_tracking_uri(logged.tracking_uri)
    yield logged
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def chat_model(onnx_dir: Path) -> OnnxChatModel:
    """The pyfunc class loaded straight from the ONNX folder, without MLflow logging."""
    model = OnnxChatModel()
    model.load_context(PythonModelContext(artifacts={"onnx": str(onnx_dir)}, model_config={"max_new_tokens": 16}))
    return model


# --- unit tier: the pyfunc class ----------------------------------------------------------------------------


def test_predict_answers_every_row(chat_model: OnnxChatModel):
    assert chat_model.predict(None, pd.DataFrame({"prompt": [SPAIN, FRANCE]})) == ["Madrid", "Paris"]


def test_predict_accepts_the_cookbook_dict(chat_model: OnnxChatModel):
    assert chat_model.predict(None, {"prompt": SPAIN}) == ["Madrid"]


def test_max_new_tokens_param_overrides_the_default(chat_model: OnnxChatModel):
    [short] = chat_model.predict(None, pd.DataFrame({"prompt": [SPAIN]}), params={"max_new_tokens": 1})
    assert short and short != "Madrid" and "Madrid".startswith(short)


def test_defaults_come_from_the_model_config(onnx_dir: Path):
    model = OnnxChatModel()
    model.load_context(PythonModelContext(artifacts={"onnx": str(onnx_dir)}, model_config={"max_new_tokens": 2}))
    assert model.defaults == {"max_new_tokens": 2, "temperature": 0.0, "top_p": 1.0, "top_k": 50}
    [short] = model.predict(None, pd.DataFrame({"prompt": [SPAIN]}))
    assert short != "Madrid" and "Madrid".startswith(short)


def test_sampling_params_reach_the_generator(chat_model: OnnxChatModel):
    # top_k=1 samples from a single candidate: the sampling path, with a result that can be checked.
    frame = pd.DataFrame({"prompt": [SPAIN, FRANCE]})
    assert chat_model.predict(None, frame, params={"temperature": 0.7, "top_p": 0.9, "top_k": 1}) == ["Madrid", "Paris"]


def test_a_prompt_longer_than_the_context_is_refused(chat_model: OnnxChatModel):
    with pytest.raises(ValueError, match=r"prompt has \d+ tokens; the model's context length is 512 tokens"):
        chat_model.predict(None, pd.DataFrame({"prompt": [TOO_LONG]}))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens=0 is out of range; expected at least 1"),
        ({"top_p": 1.5}, "top_p=1.5 is out of range"),
        ({"temperature": -1}, "temperature=-1.0 is out of range"),
        ({"beam_width": 4}, r"unknown parameter\(s\) \['beam_width'\]"),
    ],
)
def test_bad_params_are_refused(chat_model: OnnxChatModel, params: dict, message: str):
    with pytest.raises(ValueError, match=message):
        chat_model.predict(None, pd.DataFrame({"prompt": [SPAIN]}), params=params)


def test_a_prompt_that_is_not_a_string_is_refused(chat_model: OnnxChatModel):
    with pytest.raises(TypeError, match="row 1: 'prompt' must be a non-empty string, got list"):
        chat_model.predict(None, pd.DataFrame({"prompt": [SPAIN, [FRANCE]]}))


# --- unit tier: what the step logs -------------------------------------------------------------------------


def test_example_prompt_uses_the_onnx_folders_chat_template(onnx_dir: Path):
    assert example_prompt(onnx_dir) == SPAIN


def test_signature_is_a_string_prompt_with_params():
    signature = build_signature(generation_defaults(64))
    assert signature.inputs.to_dict() == [{"type": "string", "name": "prompt", "required": True}]
    assert signature.outputs.to_dict() == [{"type": "string", "required": True}]
    assert {p.name: p.default for p in signature.params} == {
        "max_new_tokens": 64,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 50,
    }


def test_requirements_are_pinned_to_installed_versions():
    import onnxruntime_genai

    version = importlib.metadata.version
    cpu = serving_requirements("cpu")
    assert f"onnxruntime-genai=={onnxruntime_genai.__version__}" in cpu
    for name in ("mlflow", "onnxruntime", "numpy", "pandas"):
        assert f"{name}=={version(name)}" in cpu
    cuda = serving_requirements("cuda")
    assert f"onnxruntime-genai-cuda=={onnxruntime_genai.__version__}" in cuda
    assert not any(pin.startswith(("onnxruntime==", "onnxruntime-genai==")) for pin in cuda)


def test_step_parser_has_exactly_the_mlproject_parameters():
    parser = log_pyfunc_step.build_parser()
    flags = {action.dest for action in parser.parser._actions if action.dest != "help"}
    assert flags == set(mlproject_parameters("log_pyfunc"))
    assert parser.parse(["--export-run-id", "abc"]) == {"export_run_id": "abc", "max_new_tokens": 256}
    assert parser.parse(["--export-run-id", "abc", "--max-new-tokens", "32.0"])["max_new_tokens"] == 32


def test_a_run_of_another_step_is_refused(store: Logged):
    download_run_id = mlflow.get_run(store.export_run_id).data.tags[TAG_DOWNLOAD_RUN]
    with pytest.raises(InputError, match=f"run '{download_run_id}' is a 'download' run; expected .* 'export_onnx'"):
        log_pyfunc(download_run_id, 16)


def test_max_new_tokens_below_one_is_refused(store: Logged):
    with pytest.raises(InputError, match="max_new_tokens 0 is not accepted; expected a whole number of 1 or more"):
        log_pyfunc(store.export_run_id, 0)


# --- integration tier: the logged model ---------------------------------------------------------------------


def test_step_run_records_the_model_and_its_lineage(store: Logged):
    run = mlflow.get_run(store.run_id)
    export_tags = mlflow.get_run(store.export_run_id).data.tags
    assert run.info.status == "FINISHED"
    assert store.model_uri.startswith("models:/m-")
    assert run.data.tags[TAG_MODEL_URI] == store.model_uri
    assert run.data.tags[TAG_EXPORT_RUN] == store.export_run_id
    for tag in (TAG_PRECISION, TAG_EXECUTION_PROVIDER, TAG_DOWNLOAD_RUN, TAG_HF_REPO, TAG_HF_SHA):
        assert run.data.tags[tag] == export_tags[tag] != ""
    assert mlflow.get_logged_model(store.model_uri.removeprefix("models:/")).source_run_id == store.run_id


def test_logged_model_answers_every_row(store: Logged):
    model = mlflow.pyfunc.load_model(store.model_uri)
    assert model.predict(pd.DataFrame({"prompt": [SPAIN, FRANCE]})) == ["Madrid", "Paris"]
    [short] = model.predict(pd.DataFrame({"prompt": [SPAIN]}), params={"max_new_tokens": 1})
    assert short != "Madrid" and "Madrid".startswith(short)
    with pytest.raises(ValueError, match="the model's context length is 512 tokens"):
        model.predict(pd.DataFrame({"prompt": [TOO_LONG]}))


def test_logged_model_config_and_signature(store: Logged):
    info = mlflow.models.get_model_info(store.model_uri)
    assert info.flavors["python_function"]["config"] == generation_defaults(24)
    assert info.signature == build_signature(generation_defaults(24))


def test_input_example_reaches_predict_as_one_string_per_row(store: Logged, tmp_path: Path):
    local = Path(mlflow.artifacts.download_artifacts(store.model_uri, dst_path=str(tmp_path)))
    example = mlflow.models.Model.load(local).load_input_example(str(local))
    assert example == {"prompt": SPAIN}
    # The path a serving request takes; predict raises TypeError on any prompt that is not a string.
    assert validate_serving_input(store.model_uri, convert_input_example_to_serving_input(example)) == ["Madrid"]


def test_logged_requirements_are_pinned(store: Logged):
    requirements = Path(mlflow.pyfunc.get_model_dependencies(store.model_uri)).read_text().split()
    assert sorted(requirements) == serving_requirements("cpu")
    assert all("==" in line for line in requirements)


def test_logged_model_code_is_the_pyfunc_file(store: Logged, tmp_path: Path):
    local = Path(mlflow.artifacts.download_artifacts(store.model_uri, dst_path=str(tmp_path)))
    [code] = local.glob("**/onnx_chat_model.py")
    assert "mlflow.models.set_model(OnnxChatModel())" in code.read_text()
    assert {"genai_config.json", "model.onnx", "model.onnx.data"} <= {p.name for p in local.glob("artifacts/**/*")}


def test_a_cuda_export_is_logged_with_the_cuda_runtime(store: Logged):
    export_tags = mlflow.get_run(store.export_run_id).data.tags
    with mlflow.start_run() as cuda_export:
        mlflow.set_tags(
            {**{k: v for k, v in export_tags.items() if k.startswith("llmflow.")}, TAG_EXECUTION_PROVIDER: "cuda"}
        )
        onnx = mlflow.artifacts.download_artifacts(run_id=store.export_run_id, artifact_path="onnx")
        mlflow.log_artifacts(onnx, "onnx")
    result = log_pyfunc(cuda_export.info.run_id, 8)
    assert mlflow.get_run(result.run_id).data.tags[TAG_EXECUTION_PROVIDER] == "cuda"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(result.model_uri)).read_text().split()
    assert sorted(requirements) == serving_requirements("cuda")

"""Step ``log_pyfunc`` and the logged models-from-code pyfunc around onnxruntime-genai, on the tiny Phi-3.

How the model parses requests and generates is tested in tests/test_onnx_chat_model.py; here, what the step
logs, and how the logged model answers through MLflow: ``load_model`` and the path a serving request takes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import convert_input_example_to_serving_input, validate_serving_input
from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA
from mlproject import mlproject_parameters

from llmflow import PROJECT_ROOT
from llmflow import export_onnx as export_module
from llmflow.download import DownloadOptions, download
from llmflow.errors import InputError
from llmflow.export_onnx import ExportOptions, export_onnx
from llmflow.log_pyfunc import (
    CHAT_EXAMPLE,
    LogPyfuncOptions,
    LogPyfuncResult,
    build_signature,
    generation_defaults,
    log_pyfunc,
    serving_requirements,
)
from llmflow.options import names, parse
from llmflow.promote import PromoteOptions, promote
from llmflow.tracking.digest import step_sources
from llmflow.tracking.names import (
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_EXPORT_RUN,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_ONNX_STORAGE,
    TAG_PRECISION,
)
from llmflow.tracking.runs import artifacts_in_place


def phi3(question: str) -> str:
    return f"<|user|>\n{question}<|end|>\n<|assistant|>\n"


SPAIN, FRANCE = phi3("What is the capital of Spain?"), phi3("What is the capital of France?")
TOO_LONG = phi3("What is the capital of Spain? " * 200)
ASK_SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]
ASK_MONA_LISA = [{"role": "user", "content": "Who painted the Mona Lisa?"}]


def content(response: dict[str, Any]) -> str:
    return response["choices"][0]["message"]["content"]


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
        dl = download(DownloadOptions(model=str(tiny_model_dir), revision="main"))
        export = export_onnx(ExportOptions(download_run_id=dl.run_id))
        result = log_pyfunc(LogPyfuncOptions(export_run_id=export.run_id, max_new_tokens=24))
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
def loaded(logged: Logged) -> mlflow.pyfunc.PyFuncModel:
    """The logged model, loaded once through MLflow."""
    mlflow.set_tracking_uri(logged.tracking_uri)
    try:
        return mlflow.pyfunc.load_model(logged.model_uri)
    finally:
        mlflow.set_tracking_uri(None)


def export_like(store: Logged, tags: dict[str, str], change_onnx: Callable[[Path], None] = lambda folder: None) -> str:
    """A run that looks like the store's export run, with ``tags`` over its tags and its ONNX folder changed."""
    export_tags = mlflow.get_run(store.export_run_id).data.tags
    with mlflow.start_run() as run:
        mlflow.set_tags({**{k: v for k, v in export_tags.items() if k.startswith("llmflow.")}, **tags})
        onnx = Path(mlflow.artifacts.download_artifacts(run_id=store.export_run_id, artifact_path="onnx"))
        change_onnx(onnx)
        mlflow.log_artifacts(str(onnx), "onnx")
    return run.info.run_id


# --- unit tier: what the step logs -------------------------------------------------------------------------


def test_signature_takes_both_request_forms_with_params():
    signature = build_signature(generation_defaults(64))
    chat_types = {spec.name: spec.type for spec in CHAT_MODEL_INPUT_SCHEMA.inputs}
    inputs = {spec.name: spec for spec in signature.inputs.inputs}
    assert list(inputs) == [
        "messages",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    ]
    assert not any(spec.required for spec in inputs.values())
    # Tool results and an assistant's calls: MLflow's own chat schema types them so (its ``name`` is left out).
    chat_message = chat_types["messages"].to_dict()["items"]["properties"]
    assert inputs["messages"].type.to_dict() == {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "content": {"type": "string", "required": False},
                "role": {"type": "string", "required": True},
                "tool_call_id": {"type": "string", "required": False},
                "tool_calls": chat_message["tool_calls"],
            },
        },
    }
    assert (inputs["tools"].type.name, inputs["tool_choice"].type.name) == ("string", "string")  # JSON text
    assert inputs["parallel_tool_calls"].type.name == "boolean"
    assert inputs["prompt"].type.name == "string"
    assert inputs["seed"].type.name == "long"
    assert inputs["response_format"].type.name == "string"  # JSON text: see EXTRA_PARAM_DTYPES
    for name in ("temperature", "max_tokens", "top_p", "top_k", "stop"):
        assert inputs[name].type == chat_types[name]
    # The outputs are the chat completion (Unity Catalog needs outputs); a raw prompt's string is not declared.
    outputs = {spec.name: spec for spec in signature.outputs.inputs}
    assert list(outputs) == ["id", "object", "created", "model", "choices", "usage"]
    assert {p.name for p in outputs["usage"].type.properties} == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert {p.name: p.default for p in signature.params} == {
        "max_new_tokens": 64,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 50,
        "response_format": "",
    }


def test_signature_declares_every_field_and_param_the_model_reads():
    """`mlflow models serve` drops, with a warning in its log only, what the signature leaves out (`seed` was)."""
    from llmflow.chat_model.chat_protocol import EXTRA_PARAMS, GENERATION_DEFAULTS, ROW_FIELDS

    signature = build_signature(generation_defaults(64))
    assert set(signature.inputs.input_names()) == set(ROW_FIELDS)
    assert {p.name for p in signature.params} == set(GENERATION_DEFAULTS) | set(EXTRA_PARAMS)


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
    assert set(names(LogPyfuncOptions)) == set(mlproject_parameters("log_pyfunc"))
    assert parse(LogPyfuncOptions, "log_pyfunc", "", ["--export-run-id", "abc"]).params() == {
        "export_run_id": "abc",
        "max_new_tokens": 256,
        "onnx_storage": "copy",
    }
    with pytest.raises(InputError, match=r"^onnx_storage 'link' is not supported; expected one of: copy, reference$"):
        parse(LogPyfuncOptions, "log_pyfunc", "", ["--export-run-id", "abc", "--onnx-storage", "link"]).check()
    assert (
        parse(LogPyfuncOptions, "log_pyfunc", "", ["--export-run-id", "abc", "--max-new-tokens", "32.0"]).max_new_tokens
        == 32
    )


def test_a_run_of_another_step_is_refused(store: Logged):
    download_run_id = mlflow.get_run(store.export_run_id).data.tags[TAG_DOWNLOAD_RUN]
    with pytest.raises(InputError, match=f"run '{download_run_id}' is a 'download' run; expected .* 'export_onnx'"):
        log_pyfunc(LogPyfuncOptions(export_run_id=download_run_id, max_new_tokens=16))


def test_max_new_tokens_below_one_is_refused(store: Logged):
    with pytest.raises(InputError, match="max_new_tokens 0 is not accepted; expected a whole number of 1 or more"):
        log_pyfunc(LogPyfuncOptions(export_run_id=store.export_run_id, max_new_tokens=0))


def test_an_onnx_folder_without_a_chat_template_is_refused(store: Logged):
    def drop_template(folder: Path) -> None:
        (folder / "chat_template.jinja").unlink()

    run_id = export_like(store, {}, drop_template)
    with pytest.raises(
        InputError, match=f"export run '{run_id}' has no chat template .* expected the export of a chat"
    ):
        log_pyfunc(LogPyfuncOptions(export_run_id=run_id, max_new_tokens=8))


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


def test_logged_model_config_and_signature(store: Logged):
    info = mlflow.models.get_model_info(store.model_uri)
    hf_repo = mlflow.get_run(store.export_run_id).data.tags[TAG_HF_REPO]
    assert info.flavors["python_function"]["config"] == {**generation_defaults(24), "model_name": hf_repo}
    assert info.signature == build_signature(generation_defaults(24))


def test_logged_model_answers_chat_requests_named_after_the_hf_repo(loaded: mlflow.pyfunc.PyFuncModel, store: Logged):
    [response] = loaded.predict({"messages": ASK_SPAIN, "max_tokens": 8})
    assert response["object"] == "chat.completion" and content(response) == "Madrid"
    assert response["model"] == mlflow.get_run(store.export_run_id).data.tags[TAG_HF_REPO] == "local/tiny-phi3"
    two = loaded.predict(pd.DataFrame({"messages": [ASK_SPAIN, ASK_MONA_LISA], "max_tokens": [8, 32]}))
    assert [content(response) for response in two] == ["Madrid", "Leonardo da Vinci"]


def test_logged_model_still_answers_raw_prompts(loaded: mlflow.pyfunc.PyFuncModel):
    assert loaded.predict(pd.DataFrame({"prompt": [SPAIN, FRANCE]})) == ["Madrid", "Paris"]
    [short] = loaded.predict(pd.DataFrame({"prompt": [SPAIN]}), params={"max_new_tokens": 1})
    assert short != "Madrid" and "Madrid".startswith(short)
    with pytest.raises(MlflowException, match="prompt has \\d+ tokens; the model's context length is 512 tokens"):
        loaded.predict(pd.DataFrame({"prompt": [TOO_LONG]}))


def test_logged_model_streams(loaded: mlflow.pyfunc.PyFuncModel):
    request = {"messages": ASK_MONA_LISA}
    chunks = list(loaded.predict_stream(request))
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks) == "Leonardo da Vinci"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and len(chunks) > 2
    assert "".join(loaded.predict_stream({"prompt": SPAIN})) == "Madrid"


def test_input_example_is_a_chat_request_that_serves(store: Logged, tmp_path: Path):
    local = Path(mlflow.artifacts.download_artifacts(store.model_uri, dst_path=str(tmp_path)))
    example = mlflow.models.Model.load(local).load_input_example(str(local))
    assert example == CHAT_EXAMPLE
    [response] = validate_serving_input(store.model_uri, convert_input_example_to_serving_input(example))
    assert content(response) == "Madrid" and response["choices"][0]["finish_reason"] == "stop"


# Request bodies as `mlflow models serve` takes them, through the same parsing and schema enforcement, and the
# answers: {"chat": text} for a chat completion, a plain string for a prompt.
SERVING_BODIES = [
    ({"messages": ASK_SPAIN, "max_tokens": 8}, [{"chat": "Madrid"}]),
    ({"messages": ASK_SPAIN, "temperature": 0.0, "top_k": 5, "stop": ["dr"]}, [{"chat": "Ma"}]),
    ({"inputs": {"messages": ASK_SPAIN, "max_tokens": 8}}, [{"chat": "Madrid"}]),
    (
        {"dataframe_records": [{"messages": ASK_SPAIN, "max_tokens": 8}, {"messages": ASK_MONA_LISA, "max_tokens": 3}]},
        [{"chat": "Madrid"}, {"chat": "Leon"}],
    ),
    (
        {"dataframe_records": [{"messages": ASK_SPAIN, "prompt": None}, {"messages": None, "prompt": FRANCE}]},
        [{"chat": "Madrid"}, "Paris"],
    ),
    ({"inputs": {"prompt": [SPAIN, FRANCE]}, "params": {"max_new_tokens": 32}}, ["Madrid", "Paris"]),
    ({"inputs": {"prompt": SPAIN}}, ["Madrid"]),
    ({"dataframe_split": {"columns": ["prompt"], "data": [[SPAIN], [FRANCE]]}}, ["Madrid", "Paris"]),
    ({"prompt": SPAIN, "max_new_tokens": 1}, ["M"]),
]


@pytest.mark.parametrize(("body", "answers"), SERVING_BODIES)
def test_serving_takes_both_forms(store: Logged, body: dict[str, Any], answers: list[Any]):
    predictions = validate_serving_input(store.model_uri, json.dumps(body))
    assert [{"chat": content(p)} if isinstance(p, dict) else p for p in predictions] == answers


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": {"temperature": 0.5}}, "exactly one of 'messages' .* got neither"),
        ({"inputs": {"messages": ASK_SPAIN, "prompt": SPAIN}}, "got both"),
        ({"messages": [], "max_tokens": 8}, "messages must hold at least one message"),
        ({"messages": [{"role": "tool", "content": "x"}]}, r"messages\[0\]\.tool_call_id must be the id of the call"),
        ({"messages": [{"role": "user", "content": 5}]}, "Failed to enforce schema"),
        ({"messages": ASK_SPAIN, "max_tokens": 0}, "max_tokens must be a whole number of 1 or more; got 0"),
        (
            {"messages": [{"role": "user", "content": "What is the capital of Spain? " * 40}], "max_tokens": 200},
            "max_tokens 200 with a prompt of \\d+ tokens exceeds the model's context length of 512 tokens",
        ),
        ({"inputs": {"prompt": SPAIN}, "params": {"max_new_tokens": 0}}, "parameter max_new_tokens must be"),
    ],
)
def test_serving_refuses_bad_input_with_a_400(store: Logged, body: dict[str, Any], message: str):
    with pytest.raises(MlflowException, match=message) as caught:
        validate_serving_input(store.model_uri, json.dumps(body))
    assert caught.value.get_http_status_code() == 400


@pytest.mark.integration
def test_logged_model_serves_without_the_llmflow_package(store: Logged, tmp_path: Path):
    """A fresh interpreter outside the project, as where the model is served: the chat model package comes with it."""
    script = (
        "import importlib.util, json, sys, mlflow\n"
        "assert importlib.util.find_spec('llmflow') is None\n"
        f"model = mlflow.pyfunc.load_model({store.model_uri!r})\n"
        f"[answer] = model.predict({{'messages': {ASK_SPAIN!r}}})\n"
        "loop = sys.modules['chat_model.generation'].__file__\n"
        "print(json.dumps([answer['choices'][0]['message']['content'], loop]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": store.tracking_uri}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer, loop_file = json.loads(proc.stdout.splitlines()[-1])
    assert answer == "Madrid"
    assert (Path(loop_file).parent.name, Path(loop_file).parent.parent.name) == ("chat_model", "code")


def test_logged_requirements_are_pinned(store: Logged):
    requirements = Path(mlflow.pyfunc.get_model_dependencies(store.model_uri)).read_text().split()
    assert sorted(requirements) == serving_requirements("cpu")
    assert all("==" in line for line in requirements)


def test_logged_model_code_is_the_pyfunc_file_and_the_chat_model_package(store: Logged, tmp_path: Path):
    local = Path(mlflow.artifacts.download_artifacts(store.model_uri, dst_path=str(tmp_path)))
    [code] = [path for path in local.glob("**/onnx_chat_model.py") if path.parent.name != "chat_model"]
    assert "mlflow.models.set_model(OnnxChatModel())" in code.read_text()
    package = PROJECT_ROOT / "llmflow" / "chat_model"
    logged = {path.relative_to(local / "code").as_posix(): path.read_text() for path in local.glob("code/**/*.py")}
    assert logged == {f"chat_model/{path.name}": path.read_text() for path in package.glob("*.py")}
    assert {"chat_model/chat_protocol.py", "chat_model/generation.py", "chat_model/__init__.py"} <= set(logged)
    # The endpoint is not in the model.
    assert not any(name.endswith(("openai_server.py", "app.py", "scheduler.py")) for name in logged)
    assert {"genai_config.json", "model.onnx", "model.onnx.data"} <= {p.name for p in local.glob("artifacts/**/*")}


def test_the_code_digest_covers_exactly_the_code_logged_with_the_model():
    package = PROJECT_ROOT / "llmflow" / "chat_model"
    digested = {path for path in step_sources("log_pyfunc") if path.parent == package}
    assert digested == set(package.glob("*.py"))
    assert not any(path.parent == PROJECT_ROOT / "llmflow" / "serving" for path in step_sources("log_pyfunc"))


def test_a_cuda_export_is_logged_with_the_cuda_runtime(store: Logged):
    result = log_pyfunc(
        LogPyfuncOptions(export_run_id=export_like(store, {TAG_EXECUTION_PROVIDER: "cuda"}), max_new_tokens=8)
    )
    assert mlflow.get_run(result.run_id).data.tags[TAG_EXECUTION_PROVIDER] == "cuda"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(result.model_uri)).read_text().split()
    assert sorted(requirements) == serving_requirements("cuda")


def test_the_export_is_read_in_place_on_a_local_store(store: Logged, monkeypatch: pytest.MonkeyPatch):
    """No temporary copy of the export's folder (2.7 GB at full size) when the store is a folder on this machine."""
    fetched: list[str] = []
    real = mlflow.artifacts.download_artifacts

    def recording(*args, **kwargs):
        fetched.append(str(kwargs.get("artifact_path") or (args[0] if args else "")))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", recording)
    result = log_pyfunc(LogPyfuncOptions(export_run_id=store.export_run_id, max_new_tokens=8))
    assert not [path for path in fetched if path.rstrip("/").endswith("onnx")], fetched
    local = Path(real(result.model_uri))
    assert (local / "artifacts" / "onnx" / "model.onnx.data").is_file()


@pytest.fixture
def referenced(store: Logged) -> LogPyfuncResult:
    return log_pyfunc(LogPyfuncOptions(export_run_id=store.export_run_id, max_new_tokens=24, onnx_storage="reference"))


def test_a_reference_model_holds_no_onnx_files_and_answers_as_the_copy(
    store: Logged, referenced: LogPyfuncResult, loaded: mlflow.pyfunc.PyFuncModel
):
    local = Path(mlflow.artifacts.download_artifacts(referenced.model_uri))
    assert not (local / "artifacts").exists()
    config = mlflow.models.Model.load(local / "MLmodel").flavors["python_function"]["config"]
    assert config["onnx_uri"] == f"runs:/{store.export_run_id}/onnx"
    copy_bytes = sum(f.stat().st_size for f in Path(mlflow.artifacts.download_artifacts(store.model_uri)).rglob("*"))
    reference_bytes = sum(f.stat().st_size for f in local.rglob("*"))
    export_dir = Path(mlflow.artifacts.download_artifacts(run_id=store.export_run_id, artifact_path="onnx"))
    onnx_bytes = sum(f.stat().st_size for f in export_dir.rglob("*"))
    assert copy_bytes - reference_bytes >= onnx_bytes  # the ONNX folder is stored once, in the export run
    assert mlflow.get_run(referenced.run_id).data.tags[TAG_ONNX_STORAGE] == "reference"
    assert mlflow.get_logged_model(referenced.model_id).params["onnx_storage"] == "reference"
    model = mlflow.pyfunc.load_model(referenced.model_uri)
    request = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}
    assert content(model.predict(request)[0]) == content(loaded.predict(request)[0]) == "Madrid"
    # Read where it lies on this local store: no copy of the export.
    assert model.unwrap_python_model().onnx_dir == artifacts_in_place(mlflow.get_run(store.export_run_id), "onnx")


def test_a_reference_model_says_which_store_it_needs_when_it_cannot_be_read(
    store: Logged, referenced: LogPyfuncResult, tmp_path: Path
):
    local = Path(mlflow.artifacts.download_artifacts(referenced.model_uri, dst_path=str(tmp_path / "model")))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(Exception, match=r"logged with onnx_storage=reference\) cannot be read from this tracking"):
        mlflow.pyfunc.load_model(str(local))


def test_promote_copies_a_referenced_onnx_folder_into_the_other_registry(
    store: Logged, referenced: LogPyfuncResult, tmp_path: Path
):
    client = mlflow.MlflowClient()
    version = mlflow.register_model(referenced.model_uri, "tiny-onnx-referenced").version
    client.set_model_version_tag("tiny-onnx-referenced", version, "validation_status", "passed")
    client.set_registered_model_alias("tiny-onnx-referenced", "champion", version)
    prod = f"sqlite:///{tmp_path / 'prod.db'}"
    mlflow.MlflowClient(tracking_uri=prod).create_experiment("llmflow-promoted", (tmp_path / "prod").as_uri())
    promote(PromoteOptions(registered_model_name="tiny-onnx-referenced", target_registry_uri=prod, target_name="p"))
    mlflow.set_tracking_uri(prod)  # the source store's runs cannot be resolved from here
    target = mlflow.MlflowClient(tracking_uri=prod, registry_uri=prod)
    source = target.get_model_version_by_alias("p", "champion").source  # the SQL registry keeps no model_id
    copy_id = source.removeprefix("models:/")
    local = Path(mlflow.artifacts.download_artifacts(source))
    assert (local / "artifacts" / "onnx" / "model.onnx.data").is_file()
    assert "onnx_uri" not in mlflow.models.Model.load(local / "MLmodel").flavors["python_function"]["config"]
    assert target.get_logged_model(copy_id).params["onnx_storage"] == "copy"
    model = mlflow.pyfunc.load_model("models:/p@champion")
    request = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}
    assert content(model.predict(request)[0]) == "Madrid"

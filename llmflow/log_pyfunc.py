"""Step ``log_pyfunc``: log the ONNX export as an MLflow pyfunc model served by onnxruntime-genai.

Reads the ``onnx/`` artifacts of a finished ``export_onnx`` run (``export_run_id``).
Writes, in its MLflow run, a logged model (``models:/<model_id>``) built from the code in
``llmflow/chat_model/onnx_chat_model.py`` (models from code) and the ``llmflow/chat_model`` package (its code path),
with:
- the ONNX folder as its artifact ``onnx``;
- a model config: the generation defaults (``max_new_tokens`` from this step, greedy decoding) and
  ``model_name``, the HF repo id that chat responses name;
- an explicit signature that takes an OpenAI chat request (``messages``, with tool results and calls, ``temperature``,
  ``max_tokens``, ``top_p``, ``top_k``, ``stop``, ``seed``, ``response_format``, ``tools`` and ``tool_choice`` as
  JSON text, ``parallel_tool_calls``) or a raw ``prompt``, with the per-request params ``max_new_tokens``,
  ``temperature``, ``top_p`` and ``top_k``: every field and param the model reads, since ``mlflow models serve``
  drops, with only a warning in its log, whatever the signature does not declare; the chat completion as its output
  schema (Unity Catalog refuses a signature without outputs);
- a chat request as its input example;
- pip requirements pinned to the versions installed here.
It tags the run with the model URI, ``llmflow.onnx_storage`` and the lineage copied from the export run.

``onnx_storage`` says where the logged model's ONNX folder lives. ``copy`` (the default): MLflow copies it into the
logged model, which then serves anywhere on its own (a container, another registry, Databricks), at the cost of a
second copy of the export in the store (2.7 GB for Phi-3-mini int4). ``reference``: the model holds no ONNX
files, only ``onnx_uri = runs:/<export run>/onnx`` in its model config; it loads where that run's artifacts can be
read (the same tracking server and artifact store), and ``promote`` makes a full copy when it copies such a model
to another registry. MLflow has no third way: a pyfunc's ``artifacts`` are always copied into the model, and a
LoggedModel's files live under its own artifact location.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

from llmflow.chat_model.chat_protocol import EXTRA_PARAMS, GENERATION_DEFAULTS, ROW_FIELDS, find_chat_template
from llmflow.errors import InputError
from llmflow.export.card import onnx_model_name, onnx_model_params
from llmflow.options import GenerationSettings, StepOptions, non_empty, one_of, option
from llmflow.tracking.model_cards import logged_model_tags
from llmflow.tracking.names import (
    ONNX_ARTIFACT_DIR,
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_EXPORT_RUN,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_ONNX_SOURCE,
    TAG_ONNX_STORAGE,
    TAG_PRECISION,
)
from llmflow.tracking.runs import artifacts_in_place, get_step_run, pinned_requirements, step_run

logger = logging.getLogger(__name__)

# The chat model package, logged whole as the model's code path (``code/chat_model``): onnx_chat_model.py imports
# ``chat_model.*`` where it is served, and the package imports nothing else from llmflow. The endpoint
# (llmflow.serving) is not logged.
# (The path is one string so that the code digest, which follows file names written in a module, sees the file.)
MODEL_CODE = Path(__file__).resolve().parent / "chat_model/onnx_chat_model.py"
MODEL_PACKAGE = MODEL_CODE.parent
CHAT_EXAMPLE = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}], "max_tokens": 16}
# The generation options of a chat request that MLflow's llm/v1/chat signature types; ``seed`` is not one of them.
CHAT_OPTIONS = ("temperature", "max_tokens", "top_p", "top_k", "stop")
# Greedy by default, as in the smoke test and the evaluation; a request can switch sampling on.
SAMPLING_DEFAULTS: dict[str, Any] = {k: v for k, v in GENERATION_DEFAULTS.items() if k != "max_new_tokens"}
PARAM_DTYPES = {"max_new_tokens": "long", "temperature": "double", "top_p": "double", "top_k": "long"}
# ``response_format`` travels as JSON text, in a column or a param: a ParamSpec takes only scalars (or lists of them),
# and a column typed Object has fixed properties, so neither could carry an arbitrary JSON schema as a dict. So do
# ``tools`` (each function's ``parameters`` is a JSON schema; MLflow's own chat schema types only a flat subset of
# it) and ``tool_choice`` (a string or an object), in columns.
EXTRA_PARAM_DTYPES = {"response_format": "string"}
# A call of an assistant turn, as a chat completion gives it and a conversation sends it back (MLflow's own type).
TOOL_CALL = Object(
    [
        Property("id", "string"),
        Property("type", "string"),
        Property("function", Object([Property("name", "string"), Property("arguments", "string")])),
    ]
)
# A message: role and content, a tool result's ``tool_call_id``, an assistant turn's ``tool_calls`` (content null).
MESSAGE = Object(
    [
        Property("role", "string"),
        Property("content", "string", required=False),
        Property("tool_call_id", "string", required=False),
        Property("tool_calls", Array(TOOL_CALL), required=False),
    ]
)
# The serving runtime per execution provider. The CUDA build of onnxruntime-genai brings its own
# onnxruntime-gpu, whose versions do not follow the CPU onnxruntime's, so only the CPU runtime is pinned.
RUNTIME_PACKAGES = {"cpu": ("onnxruntime-genai", "onnxruntime"), "cuda": ("onnxruntime-genai-cuda",)}
COMMON_PACKAGES = ("mlflow", "numpy", "pandas")
LINEAGE_TAGS = (TAG_PRECISION, TAG_EXECUTION_PROVIDER, TAG_DOWNLOAD_RUN, TAG_HF_REPO, TAG_HF_SHA, TAG_ONNX_SOURCE)


@dataclass(frozen=True)
class LogPyfuncResult:
    run_id: str
    export_run_id: str
    model_id: str
    model_uri: str


def generation_defaults(max_new_tokens: int) -> dict[str, Any]:
    """The generation defaults in the model config: what a request gets for every setting it does not give."""
    return {"max_new_tokens": max_new_tokens, **SAMPLING_DEFAULTS}


def completion_schema() -> Schema:
    """The chat completion a chat request gets, as ``chat_protocol.chat_completion`` builds it.

    The fields are those of MLflow's ``llm/v1/chat`` output (what the transformers flavour declares) that this
    model fills: the message's ``content``, or its ``tool_calls`` with a null content. ``custom_outputs`` is left
    out because it never returns it, and because a ``Map(str -> Any)`` has no Spark type, so ``spark_udf`` could
    not derive its result type from it.
    """
    message = Object(
        [
            Property("role", "string"),
            Property("content", "string", required=False),
            Property("tool_calls", Array(TOOL_CALL), required=False),
        ]
    )
    choice = Object([Property("index", "long"), Property("message", message), Property("finish_reason", "string")])
    tokens = ("prompt_tokens", "completion_tokens", "total_tokens")
    return Schema(
        [
            ColSpec("string", "id"),
            ColSpec("string", "object"),
            ColSpec("long", "created"),
            ColSpec("string", "model"),
            ColSpec(Array(choice), "choices"),
            ColSpec(Object([Property(name, "long") for name in tokens]), "usage"),
        ]
    )


def build_signature(defaults: dict[str, Any]) -> ModelSignature:
    """Optional columns for both request forms in; a chat completion out; params default to ``defaults``.

    Every input column is optional so that schema enforcement lets a chat request (``messages`` and its
    options) and a raw ``prompt`` through; the model itself refuses a row with neither or both. The outputs
    describe the chat completion: Unity Catalog refuses a model whose signature has no outputs. A raw
    ``prompt`` (the Phi-3 cookbook's form) gets a plain string instead, which the declared outputs do not
    describe; MLflow does not enforce output schemas, so that form keeps working.
    """
    types = {spec.name: spec.type for spec in CHAT_MODEL_INPUT_SCHEMA.inputs if spec.name in CHAT_OPTIONS}
    types |= {
        "messages": Array(MESSAGE),
        "prompt": "string",
        "seed": "long",
        "response_format": "string",
        "tools": "string",
        "tool_choice": "string",
        "parallel_tool_calls": "boolean",
    }
    # The model's own lists of what it reads: a field or param missing here would be dropped when served.
    missing = sorted(set(ROW_FIELDS) - set(types)) + sorted(set(GENERATION_DEFAULTS) - set(PARAM_DTYPES))
    missing += sorted(set(EXTRA_PARAMS) - set(EXTRA_PARAM_DTYPES))
    if missing:
        raise TypeError(f"no signature type for {missing}; add them to build_signature")
    return ModelSignature(
        inputs=Schema([ColSpec(types[name], name, required=False) for name in ROW_FIELDS]),
        outputs=completion_schema(),
        params=ParamSchema(
            [ParamSpec(name, dtype, defaults[name]) for name, dtype in PARAM_DTYPES.items()]
            + [ParamSpec(name, dtype, EXTRA_PARAMS[name]) for name, dtype in EXTRA_PARAM_DTYPES.items()]
        ),
    )


def serving_requirements(execution_provider: str) -> list[str]:
    """``name==version`` for what the served model imports, at the versions installed here."""
    import onnxruntime_genai

    genai, *runtime = RUNTIME_PACKAGES[execution_provider]
    # The CPU and CUDA builds of onnxruntime-genai are released together: the installed one's version pins either.
    return sorted([f"{genai}=={onnxruntime_genai.__version__}", *pinned_requirements(*runtime, *COMMON_PACKAGES)])


ONNX_STORAGE = ("copy", "reference")


@dataclass(frozen=True, kw_only=True)
class PyfuncSettings(StepOptions):
    """Where the logged ONNX model's files live."""

    onnx_storage: str = option(
        "copy",
        help="copy: the logged model holds the ONNX folder (serves anywhere); reference: it points to the export "
        "run's folder (no second copy; loading needs that run's artifact store).",
        check=one_of(*ONNX_STORAGE),
    )


@dataclass(frozen=True, kw_only=True)
class LogPyfuncOptions(GenerationSettings, PyfuncSettings):
    """Log the ONNX export as an MLflow pyfunc model served by onnxruntime-genai."""

    export_run_id: str = option(help="Id of a finished `export_onnx` run whose ONNX folder to log.", check=non_empty)


def log_pyfunc(options: LogPyfuncOptions) -> LogPyfuncResult:
    """Log the ONNX folder of export run ``options.export_run_id`` as a pyfunc model in this step's MLflow run."""
    export_run_id, max_new_tokens = options.export_run_id, options.max_new_tokens
    with step_run("log_pyfunc", options) as run, tempfile.TemporaryDirectory(prefix="llmflow-pyfunc-") as tmp:
        export_run = get_step_run(export_run_id, "export_onnx")
        # Read in place on a local store: MLflow copies the folder into the logged model anyway.
        onnx_dir = artifacts_in_place(export_run, ONNX_ARTIFACT_DIR) or Path(
            mlflow.artifacts.download_artifacts(run_id=export_run_id, artifact_path=ONNX_ARTIFACT_DIR, dst_path=tmp)
        )
        if not (onnx_dir / "genai_config.json").is_file():
            raise InputError(
                f"export run '{export_run_id}' has no {ONNX_ARTIFACT_DIR}/genai_config.json; "
                "expected the id of a finished 'export_onnx' run"
            )
        if find_chat_template(onnx_dir) is None:
            raise InputError(
                f"the ONNX folder of export run '{export_run_id}' has no chat template "
                "(tokenizer_config.json or chat_template.jinja); expected the export of a chat model"
            )
        execution_provider = export_run.data.tags[TAG_EXECUTION_PROVIDER]
        defaults = generation_defaults(max_new_tokens)
        name, params = onnx_model_name(export_run), onnx_model_params(export_run, defaults["max_new_tokens"])
        params["onnx_storage"] = options.onnx_storage
        copied = options.onnx_storage == "copy"
        located = {} if copied else {"onnx_uri": f"runs:/{export_run_id}/{ONNX_ARTIFACT_DIR}"}
        model_info = mlflow.pyfunc.log_model(
            name=name,
            params=params,
            tags=logged_model_tags(name, params),
            python_model=str(MODEL_CODE),
            code_paths=[str(MODEL_PACKAGE)],
            artifacts={"onnx": str(onnx_dir)} if copied else None,
            model_config={
                **defaults,
                "model_name": export_run.data.tags.get(TAG_HF_REPO, ""),
                **located,
            },
            signature=build_signature(defaults),
            input_example=CHAT_EXAMPLE,
            pip_requirements=serving_requirements(execution_provider),
        )
        lineage = {tag: export_run.data.tags.get(tag, "") for tag in LINEAGE_TAGS}
        mlflow.set_tags(
            {
                TAG_MODEL_URI: model_info.model_uri,
                TAG_EXPORT_RUN: export_run_id,
                TAG_ONNX_STORAGE: options.onnx_storage,
                **lineage,
            }
        )
        logger.info("log_pyfunc: logged %s from export run %s", model_info.model_uri, export_run_id)
        return LogPyfuncResult(run.info.run_id, export_run_id, model_info.model_id, model_info.model_uri)

"""Step ``log_transformers``: log the model as a transformers chat pipeline (``task="llm/v1/chat"``).

Reads a finished download run. Writes, in its MLflow run, a logged model (``models:/<model_id>``)
holding a text-generation pipeline with the OpenAI-compatible chat signature, generation defaults in
``model_config``, an input example and pinned pip requirements; tags ``llmflow.model_uri`` and the
lineage tags (download run, HF repo and commit, precision, execution provider).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from llmflow.download import model_dir_from_run
from llmflow.errors import InputError
from llmflow.options import GenerationSettings, non_empty, option
from llmflow.tracking.model_cards import logged_model_tags, transformers_model_name, transformers_model_params
from llmflow.tracking.names import (
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_PRECISION,
)
from llmflow.tracking.runs import get_step_run, pinned_requirements, step_run

logger = logging.getLogger(__name__)

CHAT_EXAMPLE = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}], "max_tokens": 16}
REQUIREMENTS = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "numpy")
PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class LogTransformersResult:
    run_id: str
    model_uri: str
    precision: str


@dataclass(frozen=True, kw_only=True)
class LogTransformersOptions(GenerationSettings):
    """Log the downloaded model as an llm/v1/chat transformers pipeline."""

    download_run_id: str = option(help="Id of a finished `download` run whose model to log.", check=non_empty)


def log_transformers(options: LogTransformersOptions) -> LogTransformersResult:
    """Log the downloaded model as an ``llm/v1/chat`` transformers pipeline in this step's run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    download_run_id, max_new_tokens = options.download_run_id, options.max_new_tokens
    with step_run("log_transformers", options) as run:
        download_run = get_step_run(download_run_id, "download")
        with tempfile.TemporaryDirectory(prefix="llmflow-hf-") as tmp:
            model_dir = model_dir_from_run(download_run_id, dst=Path(tmp))
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            if not tokenizer.chat_template:
                raise InputError(
                    f"tokenizer of download run '{download_run_id}' has no chat template; llm/v1/chat needs one"
                )
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
            # Chat responses name the model by this; not the temporary folder it was loaded from.
            model.name_or_path = model.config._name_or_path = download_run.data.tags[TAG_HF_REPO]
            precision = PRECISION_NAMES.get(str(model.dtype).removeprefix("torch."), str(model.dtype))
            generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device=torch.device("cpu"))
            logger.info("logging %s (%s) as llm/v1/chat", download_run.data.tags[TAG_HF_REPO], precision)
            name = transformers_model_name(download_run, precision)
            params = transformers_model_params(download_run, precision, max_new_tokens)
            info = mlflow.transformers.log_model(
                transformers_model=generator,
                name=name,
                params=params,
                tags=logged_model_tags(name, params),
                task="llm/v1/chat",
                model_config={"max_new_tokens": max_new_tokens, "do_sample": False},
                input_example=CHAT_EXAMPLE,
                pip_requirements=pinned_requirements(*REQUIREMENTS),
            )
        mlflow.set_tags(
            {
                TAG_MODEL_URI: info.model_uri,
                TAG_PRECISION: precision,
                TAG_EXECUTION_PROVIDER: "cpu",
                TAG_DOWNLOAD_RUN: download_run_id,
                TAG_HF_REPO: download_run.data.tags[TAG_HF_REPO],
                TAG_HF_SHA: download_run.data.tags[TAG_HF_SHA],
            }
        )
        return LogTransformersResult(run.info.run_id, info.model_uri, precision)

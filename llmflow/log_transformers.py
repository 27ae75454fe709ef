"""Step ``log_transformers``: log the model as a transformers chat pipeline (``task="llm/v1/chat"``).

Reads a finished download run. Writes, in its MLflow run, a logged model (``models:/<model_id>``)
holding a text-generation pipeline with the OpenAI-compatible chat signature, generation defaults in
``model_config``, an input example and pinned pip requirements; tags ``llmflow.model_uri`` and the
lineage tags (download run, HF repo and commit, precision, execution provider) and ``llmflow.transformers_weights``
(``stored``, or ``hub reference``).

With ``save_pretrained=false`` a hub model is logged as MLflow's reference to its repo and commit, without the
weights: they stay in the Hugging Face cache (and on the Hub), and loading the model reads them from there. MLflow
would record the repo's latest commit on the Hub at logging time (``get_latest_commit_for_repo``), which need not
be the commit this pipeline downloaded, and cannot be asked offline; the step records the download run's pinned
commit instead (``_pinned_revision``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow

from llmflow.download import model_dir_from_run
from llmflow.errors import InputError
from llmflow.options import GenerationSettings, StepOptions, non_empty, one_of, option
from llmflow.tracking.model_cards import logged_model_tags, transformers_model_name, transformers_model_params
from llmflow.tracking.names import (
    TAG_DOWNLOAD_RUN,
    TAG_EXECUTION_PROVIDER,
    TAG_HF_REPO,
    TAG_HF_SHA,
    TAG_MODEL_URI,
    TAG_PRECISION,
    TAG_SOURCE,
    TAG_TRANSFORMERS_WEIGHTS,
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
class TransformersSettings(StepOptions):
    """How the transformers model holds its weights."""

    save_pretrained: str = option(
        "true",
        help="true: the logged model holds the weights; false: a hub model is logged as a reference to its repo and "
        "commit (no second copy of the weights; loading it needs the Hugging Face cache or the Hub).",
        check=one_of("true", "false"),
    )


@dataclass(frozen=True, kw_only=True)
class LogTransformersOptions(GenerationSettings, TransformersSettings):
    """Log the downloaded model as an llm/v1/chat transformers pipeline."""

    download_run_id: str = option(help="Id of a finished `download` run whose model to log.", check=non_empty)


@contextmanager
def _pinned_revision(commit_sha: str) -> Iterator[None]:
    """Within this block MLflow records ``commit_sha`` as a hub reference's revision (see the module doc)."""
    from mlflow.transformers import flavor_config

    stock = flavor_config.get_latest_commit_for_repo
    flavor_config.get_latest_commit_for_repo = lambda repo: commit_sha
    try:
        yield
    finally:
        flavor_config.get_latest_commit_for_repo = stock


def log_transformers(options: LogTransformersOptions) -> LogTransformersResult:
    """Log the downloaded model as an ``llm/v1/chat`` transformers pipeline in this step's run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    download_run_id, max_new_tokens = options.download_run_id, options.max_new_tokens
    reference = options.save_pretrained == "false"
    with step_run("log_transformers", options) as run:
        download_run = get_step_run(download_run_id, "download")
        tags = download_run.data.tags
        if reference and tags.get(TAG_SOURCE) != "hub":
            raise InputError(
                f"save_pretrained 'false' needs a hub model, and download run '{download_run_id}' is a local folder "
                f"({tags.get(TAG_HF_REPO)}); a local model's weights can only be stored: pass save_pretrained=true"
            )
        with tempfile.TemporaryDirectory(prefix="llmflow-hf-") as tmp, _pinned_revision(tags[TAG_HF_SHA]):
            model_dir = model_dir_from_run(download_run_id, dst=Path(tmp))
            # A reference is loaded by repo id at the pinned commit (from the HF cache), so that MLflow records the
            # repo, not the cache folder.
            source = tags[TAG_HF_REPO] if reference else model_dir
            revision = {"revision": tags[TAG_HF_SHA]} if reference else {}
            tokenizer = AutoTokenizer.from_pretrained(source, **revision)
            if not tokenizer.chat_template:
                raise InputError(
                    f"tokenizer of download run '{download_run_id}' has no chat template; llm/v1/chat needs one"
                )
            model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", **revision)
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
                save_pretrained=not reference,
            )
        mlflow.set_tags(
            {
                TAG_MODEL_URI: info.model_uri,
                TAG_PRECISION: precision,
                TAG_EXECUTION_PROVIDER: "cpu",
                TAG_DOWNLOAD_RUN: download_run_id,
                TAG_HF_REPO: download_run.data.tags[TAG_HF_REPO],
                TAG_HF_SHA: download_run.data.tags[TAG_HF_SHA],
                TAG_TRANSFORMERS_WEIGHTS: "hub reference" if reference else "stored",
            }
        )
        return LogTransformersResult(run.info.run_id, info.model_uri, precision)

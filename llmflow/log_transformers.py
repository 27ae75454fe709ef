"""Step ``log_transformers``: log the model as a transformers chat pipeline (``task="llm/v1/chat"``).

Reads a finished download run. Writes, in its MLflow run, a logged model (``models:/<model_id>``)
holding a text-generation pipeline with the OpenAI-compatible chat signature, generation defaults in
``model_config``, an input example and pinned pip requirements; tags ``llmflow.model_uri`` and the
lineage tags (download run, HF repo and commit, precision, execution provider) and ``llmflow.transformers_weights``
(``stored``, or ``hub reference``).

The weights are logged as MLflow's "local checkpoint": the model folder's files are copied into the logged model as
they are, without loading the model. Logging a loaded pipeline instead writes the weights again from memory and then
loads the logged model a second time to check its input example: 14.7 GiB peak for Phi-3-mini's 7.6 GB of bf16
weights, against a few hundred MB this way (MLflow skips that check for a checkpoint for the same reason; the
``evaluate`` step loads and runs the model). MLflow names a checkpoint by its folder, a temporary path here; the
step names it by its HF repo id instead (``llmflow.patches.mlflow.named_checkpoint``), which chat responses give as
their ``model``.

With ``save_pretrained=false`` a hub model is logged as MLflow's reference to its repo and commit, without the
weights: they stay in the Hugging Face cache (and on the Hub), and loading the model reads them from there. MLflow
would record the repo's latest commit on the Hub at logging time (``get_latest_commit_for_repo``), which need not
be the commit this pipeline downloaded, and cannot be asked offline; the step records the download run's pinned
commit instead (``llmflow.patches.mlflow.pinned_revision``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from llmflow.errors import InputError
from llmflow.options import GenerationSettings, StepOptions, a_bool, non_empty, option
from llmflow.patches.mlflow import named_checkpoint, pinned_revision
from llmflow.patches.transformers import task_class_resolved
from llmflow.sources.folder import model_dir_from_run
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
TORCH_DTYPES = {name: dtype for dtype, name in PRECISION_NAMES.items()}


@dataclass(frozen=True)
class LogTransformersResult:
    run_id: str
    model_uri: str
    precision: str


@dataclass(frozen=True, kw_only=True)
class TransformersSettings(StepOptions):
    """How the transformers model holds its weights."""

    save_pretrained: bool = option(
        True,
        help="true: the logged model holds the weights; false: a hub model is logged as a reference to its repo and "
        "commit (no second copy of the weights; loading it needs the Hugging Face cache or the Hub).",
        check=a_bool,
    )


@dataclass(frozen=True, kw_only=True)
class LogTransformersOptions(GenerationSettings, TransformersSettings):
    """Log the downloaded model as an llm/v1/chat transformers pipeline."""

    download_run_id: str = option(help="Id of a finished `download` run whose model to log.", check=non_empty)


def checkpoint_precision(model_dir: Path) -> str:
    """The precision a checkpoint's weights load in (``dtype="auto"``): its config's dtype, fp32 when it has none."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return PRECISION_NAMES.get(dtype, dtype)


def local_model_card(model_dir: Path, repo: str) -> Any:
    """The model card of a local folder: its own ``README.md``, or one that names it and says its licence is not
    known (a Hub model's card comes from the Hub, as MLflow fetches it)."""
    from huggingface_hub import ModelCard

    readme = model_dir / "README.md"
    if readme.is_file():
        return ModelCard(readme.read_text(encoding="utf-8"))
    return ModelCard(f"---\nlicense: unknown\n---\n\n# {repo}\n\nA local model folder, logged by llmflow.\n")


def log_transformers(options: LogTransformersOptions) -> LogTransformersResult:
    """Log the downloaded model as an ``llm/v1/chat`` transformers pipeline in this step's run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    download_run_id, max_new_tokens = options.download_run_id, options.max_new_tokens
    reference = not options.save_pretrained
    with step_run("log_transformers", options) as run:
        download_run = get_step_run(download_run_id, "download")
        tags = download_run.data.tags
        if reference and tags.get(TAG_SOURCE) != "hub":
            raise InputError(
                f"save_pretrained 'false' needs a hub model, and download run '{download_run_id}' is a local folder "
                f"({tags.get(TAG_HF_REPO)}); a local model's weights can only be stored: pass save_pretrained=true"
            )
        with tempfile.TemporaryDirectory(prefix="llmflow-hf-") as tmp, pinned_revision(tags[TAG_HF_SHA]):
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
            precision = checkpoint_precision(model_dir)
            repo = download_run.data.tags[TAG_HF_REPO]
            name = transformers_model_name(download_run, precision)
            params = transformers_model_params(download_run, precision, max_new_tokens)
            logged_as = {
                "name": name,
                "params": params,
                "tags": logged_model_tags(name, params),
                "task": "llm/v1/chat",
                "model_config": {"max_new_tokens": max_new_tokens, "do_sample": False},
                "input_example": CHAT_EXAMPLE,
                "pip_requirements": pinned_requirements(*REQUIREMENTS),
            }
            if tags.get(TAG_SOURCE) == "local":
                # MLflow would ask the Hub for the card of a repo named after the folder, and warn when it cannot.
                logged_as["model_card"] = local_model_card(model_dir, repo)
            logger.info("logging %s (%s) as llm/v1/chat", repo, precision)
            if reference:
                model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", **revision)
                # Chat responses name the model by this; not the cache folder it was loaded from.
                model.name_or_path = model.config._name_or_path = repo
                generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device=torch.device("cpu"))
                info = mlflow.transformers.log_model(transformers_model=generator, save_pretrained=False, **logged_as)
            else:
                with named_checkpoint(repo), task_class_resolved():
                    info = mlflow.transformers.log_model(
                        transformers_model=str(model_dir),
                        torch_dtype=getattr(torch, TORCH_DTYPES[precision]),
                        **logged_as,
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

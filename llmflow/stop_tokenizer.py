"""Make ``stop`` work offline for a transformers chat model under ``mlflow models serve``: a Hugging Face cache that
holds the model's own tokenizer under the model's recorded name.

MLflow 3.17's transformers flavour turns a request's ``stop`` into stopping criteria with a tokenizer it loads by
the model's recorded name (``AutoTokenizer.from_pretrained(source_model_name)``), not with the pipeline's own
tokenizer. The name is the Hugging Face repo id (``local/tiny-phi3``), so offline, or for a model that is not on the
Hub, every request with ``stop`` failed. No documented setting of the logged model changes where that tokenizer
comes from, and the flavour runs no code of the project where it is served, so this fills a cache folder of its
own with the model's tokenizer files (``components/tokenizer`` and the model's ``config.json``, read from the logged
model, not the Hub) under that name; serve with ``HF_HUB_CACHE`` pointing to it:

    python -m llmflow.stop_tokenizer --model-uri models:/tiny-phi3@champion --cache-dir /srv/llmflow-hf
    HF_HUB_OFFLINE=1 HF_HUB_CACHE=/srv/llmflow-hf mlflow models serve -m models:/tiny-phi3@champion ...

A model logged as a hub reference (``save_pretrained=false``) needs none of this: it is served from the Hugging
Face cache that holds its repo, tokenizer included.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from llmflow.errors import InputError, PipelineError

TOKENIZER_DIR = "components/tokenizer"
# Beside the tokenizer files, so that transformers reads them as they are (without it, Phi-3's tokenizer is rebuilt
# as Llama's, with other token ids).
CONFIG_FILE = "model/config.json"


def _download(model_uri: str, path: str, dst: Path) -> Path:
    """One file or folder of the logged model, not the whole model (its weights: 7.6 GB for Phi-3-mini)."""
    return Path(get_artifact_repository(model_uri).download_artifacts(path, str(dst)))


def recorded_name(flavor: dict) -> str:
    """The name MLflow loads the tokenizer by, a Hub repo id (``org/name`` or ``name``); ``InputError`` for a model
    that needs no cache (a hub reference) or whose name no cache can hold (a path)."""
    name = str(flavor.get("source_model_name") or "")
    if "model_binary" not in flavor:
        raise InputError(
            f"the model is a hub reference to {name!r}: it is served from the Hugging Face cache that holds that "
            "repo, tokenizer included; no cache of its own is needed"
        )
    parts = name.split("/")
    if len(parts) > 2 or not all(parts) or name.startswith("."):
        raise InputError(f"the model's recorded name {name!r} is not a repo id (org/name); a cache cannot hold it")
    return name


def fill(model_uri: str, cache_dir: Path) -> Path:
    """Write the tokenizer of the transformers model ``model_uri`` into the Hugging Face cache ``cache_dir`` under the
    model's recorded name, as its ``main`` revision; return the snapshot folder."""
    from huggingface_hub.file_download import repo_folder_name

    with tempfile.TemporaryDirectory(prefix="llmflow-stop-") as tmp:
        flavors = mlflow.models.Model.load(_download(model_uri, "MLmodel", Path(tmp))).flavors
        if "transformers" not in flavors:
            raise InputError(f"{model_uri} is not a transformers model (its flavours: {', '.join(sorted(flavors))})")
        flavor = flavors["transformers"]
        name = recorded_name(flavor)
        files = sorted(_download(model_uri, TOKENIZER_DIR, Path(tmp)).iterdir())
        files.append(_download(model_uri, CONFIG_FILE, Path(tmp)))
        digest = hashlib.sha1()
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        revision = digest.hexdigest()
        repo = Path(cache_dir) / repo_folder_name(repo_id=name, repo_type="model")
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copyfile(file, snapshot / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)  # no trailing newline: huggingface_hub would not find it
    return snapshot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", type=str, required=True, help="The transformers model, e.g. models:/x@champion.")
    parser.add_argument("--cache-dir", type=Path, required=True, help="A folder of its own, for HF_HUB_CACHE.")
    args = parser.parse_args(argv)
    try:
        snapshot = fill(args.model_uri, args.cache_dir)
    except PipelineError as error:
        print(f"error: stop_tokenizer: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    serve = f"HF_HUB_OFFLINE=1 HF_HUB_CACHE={args.cache_dir.resolve()} mlflow models serve -m {args.model_uri}"
    print(f"{snapshot}\nserve with: {serve}")


if __name__ == "__main__":
    main()

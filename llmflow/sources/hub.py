"""Where a model comes from: a hub repo id pinned to a commit, or a local folder, and fetching its files.

``resolve_hub`` asks the Hub (or, with ``HF_HUB_OFFLINE`` set, the local Hugging Face cache alone) which commit a
revision is; ``fetch_hub_snapshot`` gets the files at that commit through the Hugging Face cache;
``source_fingerprint`` says what a source is now without fetching it, which is what the chain's reuse rules compare.
The token comes from ``HF_TOKEN`` and is handed to huggingface_hub only; it is never logged.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from llmflow.errors import InputError
from llmflow.sources.manifest import build_manifest, manifest_digest

logger = logging.getLogger(__name__)

# What a chat model needs: configs, safetensors weights, tokenizer. Not the duplicate *.bin weights,
# nor subfolders such as onnx/ or the gguf and original checkpoints that some repos carry.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", "*.tiktoken"]
IGNORE_PATTERNS = ["*/*"]
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def is_local_reference(model: str) -> bool:
    """A value that is an existing path, or looks like one, names a local folder; anything else a hub id."""
    return Path(model).expanduser().exists() or model.startswith(("/", ".", "~")) or not REPO_ID_PATTERN.match(model)


def _hub_errors() -> list[tuple[type[Exception], str]]:
    """Hub failures and their one-line messages, most specific first (GatedRepoError is a RepositoryNotFoundError)."""
    from huggingface_hub import errors

    return [
        (
            errors.GatedRepoError,
            "model '{model}' is gated on the Hugging Face Hub; accept its licence and set HF_TOKEN",
        ),
        (
            errors.RevisionNotFoundError,
            "revision '{revision}' not found in model '{model}'; expected a branch, tag or commit sha of that repo",
        ),
        (
            errors.RepositoryNotFoundError,
            "model '{model}' not found on the Hugging Face Hub (a private repo needs HF_TOKEN); expected a hub "
            "repo id such as microsoft/Phi-3-mini-4k-instruct or a local folder",
        ),
        (
            errors.OfflineModeIsEnabled,
            "cannot resolve '{model}' on the Hugging Face Hub: HF_HUB_OFFLINE is set; pass a local folder instead",
        ),
        (
            errors.HTTPError,
            "cannot reach the Hugging Face Hub to resolve '{model}' ({error}); check the network or use a local folder",
        ),
    ]


def resolve_in_cache(model: str, revision: str) -> tuple[str, dict[str, Any]]:
    """Resolve ``revision`` of ``model`` through the local Hugging Face cache alone (``refs/<revision>`` or a sha).

    This is what an air-gapped machine with a filled ``HF_HOME`` does: no request leaves the machine.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(model, revision=revision, allow_patterns=["config.json"], local_files_only=True)
        )
    except LocalEntryNotFoundError:
        raise InputError(
            f"model '{model}' at revision '{revision}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            "and HF_HUB_OFFLINE is set; fill the cache on a connected machine (README, air-gapped) or pass a local "
            "folder"
        ) from None
    config = snapshot / "config.json"
    return snapshot.name, json.loads(config.read_text()) if config.is_file() else {}


def resolve_hub(model: str, revision: str, token: str | None) -> tuple[str, dict[str, Any]]:
    """Resolve ``revision`` of hub repo ``model`` to a commit sha and return it with the repo's config.

    With ``HF_HUB_OFFLINE`` set, the local Hugging Face cache answers (``resolve_in_cache``).
    """
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return resolve_in_cache(model, revision)

    known = _hub_errors()
    try:
        info = HfApi(token=token).model_info(model, revision=revision)
    except tuple(cls for cls, _ in known) as exc:
        template = next(msg for cls, msg in known if isinstance(exc, cls))
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(template.format(model=model, revision=revision, error=error)) from None
    return info.sha, dict(info.config or {})


def fetch_hub_snapshot(model: str, commit_sha: str, token: str | None, files: list[str] | None = None) -> Path:
    """Download (or find in the HF cache) the files of ``model`` at ``commit_sha``, with a progress bar.

    ``files`` narrows the download to those names; by default every file the pipeline needs.
    """
    from huggingface_hub import snapshot_download

    path = snapshot_download(
        model,
        revision=commit_sha,
        allow_patterns=files or ALLOW_PATTERNS,
        ignore_patterns=None if files else IGNORE_PATTERNS,
        token=token,
    )
    return Path(path)


def source_fingerprint(model: str, revision: str, token: str | None = None) -> str | None:
    """What download records as ``llmflow.hf_commit_sha`` for this source now, without downloading it.

    A local folder: ``sha256:`` and its content digest. A hub id: the commit ``revision`` resolves to,
    asked of the Hub (None when the Hub cannot be reached or the repo is refused).
    """
    if is_local_reference(model):
        folder = Path(model).expanduser().resolve()
        return "sha256:" + manifest_digest(build_manifest(folder)) if folder.is_dir() else None
    try:
        return resolve_hub(model, revision, token)[0]
    except Exception:  # noqa: BLE001 - any failure means "cannot tell", and then the step runs
        logger.info("could not resolve %s@%s on the Hub; download will run", model, revision)
        return None

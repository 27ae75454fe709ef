"""Step ``download``: pin a Hugging Face model to a commit and record what was fetched.

Reads a hub repo id (and revision) or a local folder holding a saved HF model.
Writes, in its MLflow run:
- tags ``llmflow.source`` (hub or local), ``llmflow.hf_repo_id`` and ``llmflow.hf_commit_sha``
  (the resolved commit, or ``sha256:<content hash>`` for a local folder);
- ``manifest.json``: every file with its size and sha256;
- for a local folder, the files themselves under ``model/``, so that later steps (on any machine)
  get them from the run; a hub model is fetched again by commit sha, from the local HF cache when
  it is there;
- metrics ``download_bytes``, ``download_seconds`` and ``download_files``.

The token comes from ``HF_TOKEN`` and is handed to huggingface_hub only; it is never logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from llmflow.errors import InputError
from llmflow.export.architectures import check_architecture
from llmflow.options import StepOptions, non_empty, option
from llmflow.sources.manifest import build_manifest, manifest_digest, sha256_file
from llmflow.tracking.names import MANIFEST_ARTIFACT, MODEL_ARTIFACT_DIR, TAG_HF_REPO, TAG_HF_SHA, TAG_SOURCE
from llmflow.tracking.runs import artifacts_in_place, get_step_run, step_run

logger = logging.getLogger(__name__)

# What a chat model needs: configs, safetensors weights, tokenizer. Not the duplicate *.bin weights,
# nor subfolders such as onnx/ or the gguf and original checkpoints that some repos carry.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", "*.tiktoken"]
IGNORE_PATTERNS = ["*/*"]
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass(frozen=True, kw_only=True)
class DownloadOptions(StepOptions):
    """Pin a Hugging Face model to a commit and record it in MLflow."""

    model: str = option(
        "microsoft/Phi-3-mini-4k-instruct",
        help="Hub repo id (e.g. microsoft/Phi-3-mini-4k-instruct) or a local save_pretrained folder.",
        check=non_empty,
    )
    revision: str = option(
        "main", help="Branch, tag or commit sha on the Hub; ignored for a local folder.", check=non_empty
    )

    def check_together(self) -> None:
        if is_local_reference(self.model) and not Path(self.model).expanduser().is_dir():
            raise InputError(
                f"local model folder '{self.model}' not found; expected a folder saved with save_pretrained "
                "(config.json, *.safetensors, tokenizer files) or a hub repo id"
            )


@dataclass(frozen=True)
class DownloadResult:
    run_id: str
    source: str
    repo_id: str
    commit_sha: str
    model_dir: Path


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


def check_readable(model_dir: Path, model: str) -> None:
    """Refuse, in one line, a local folder with files this user cannot read.

    It happens where the folder was written by another user: transformers writes ``model.safetensors`` with mode
    0600, and a container's user (uid 1000 in deploy/kubernetes) cannot read a mounted folder saved by root.
    """
    unreadable = sorted(
        p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file() and not os.access(p, os.R_OK)
    )
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise InputError(
            f"local model folder '{model}': {shown} not readable by this user (uid {os.getuid()}); "
            f"make the folder readable, e.g. chmod -R a+rX '{model}'"
        )


def download(options: DownloadOptions) -> DownloadResult:
    """Pin ``options.model`` (hub id at ``revision``, or local folder) and record it in this step's MLflow run."""
    token = os.environ.get("HF_TOKEN") or None
    model, revision = options.model, options.revision
    with step_run("download", options) as run:
        started = time.perf_counter()
        if is_local_reference(model):
            model_dir = Path(model).expanduser().resolve()
            if not (model_dir / "config.json").is_file():
                raise InputError(
                    f"local model folder '{model}' has no config.json; expected a folder saved with save_pretrained"
                )
            check_architecture(json.loads((model_dir / "config.json").read_text()), f"local model folder '{model}'")
            check_readable(model_dir, model)
            source, repo_id = "local", f"local/{model_dir.name}"
            manifest = build_manifest(model_dir)
            commit_sha = "sha256:" + manifest_digest(manifest)
            mlflow.log_artifacts(str(model_dir), MODEL_ARTIFACT_DIR)
        else:
            source, repo_id = "hub", model
            commit_sha, config = resolve_hub(model, revision, token)
            check_architecture(config, f"model '{model}'")
            logger.info("resolved %s@%s to commit %s", model, revision, commit_sha)
            model_dir = fetch_hub_snapshot(model, commit_sha, token)
            manifest = build_manifest(model_dir)
        mlflow.set_tags({TAG_SOURCE: source, TAG_HF_REPO: repo_id, TAG_HF_SHA: commit_sha})
        mlflow.log_dict({"repo_id": repo_id, "commit_sha": commit_sha, "files": manifest}, MANIFEST_ARTIFACT)
        mlflow.log_metrics(
            {
                "download_bytes": sum(f["size"] for f in manifest),
                "download_files": len(manifest),
                "download_seconds": time.perf_counter() - started,
            }
        )
        logger.info("download: %s files, %s bytes from %s", len(manifest), sum(f["size"] for f in manifest), repo_id)
        return DownloadResult(run.info.run_id, source, repo_id, commit_sha, model_dir)


def read_manifest(download_run_id: str) -> dict[str, Any]:
    """The ``manifest.json`` of a download run: repo id, commit sha and every file with its size and sha256."""
    path = mlflow.artifacts.download_artifacts(run_id=download_run_id, artifact_path=MANIFEST_ARTIFACT)
    return json.loads(Path(path).read_text())


def model_dir_from_run(download_run_id: str, dst: Path | None = None, weights: bool = True) -> Path:
    """Materialise the model folder of a finished download run, and check it against its manifest.

    A local source comes from the run's ``model/`` artifacts, read in place when the artifact store is a local
    folder (no copy of the weights) and downloaded into ``dst`` otherwise; a hub source from the HF cache (or the
    Hub) at the recorded commit sha. With ``weights=False`` only the configs and tokenizer files are fetched
    and checked, which is all a step that templates or counts tokens needs.
    """
    run = get_step_run(download_run_id, "download")
    manifest = read_manifest(download_run_id)
    expected = [f for f in manifest["files"] if weights or not f["file"].endswith(WEIGHT_SUFFIXES)]
    in_place = artifacts_in_place(run, MODEL_ARTIFACT_DIR)
    if run.data.tags[TAG_SOURCE] == "local" and weights and in_place is not None:
        # The artifact store is a folder on this machine: read the weights where they are, checked below.
        model_dir = in_place
    elif run.data.tags[TAG_SOURCE] == "local":
        dst = dst or Path(tempfile.mkdtemp(prefix="llmflow-model-"))
        if weights:
            mlflow.artifacts.download_artifacts(
                run_id=download_run_id, artifact_path=MODEL_ARTIFACT_DIR, dst_path=str(dst)
            )
        for entry in [] if weights else expected:
            # A single artifact lands in dst_path under its base name.
            folder = (dst / MODEL_ARTIFACT_DIR / entry["file"]).parent
            folder.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(
                run_id=download_run_id, artifact_path=f"{MODEL_ARTIFACT_DIR}/{entry['file']}", dst_path=str(folder)
            )
        model_dir = dst / MODEL_ARTIFACT_DIR
    else:
        files = None if weights else [f["file"] for f in expected]
        model_dir = fetch_hub_snapshot(
            run.data.tags[TAG_HF_REPO], run.data.tags[TAG_HF_SHA], os.environ.get("HF_TOKEN") or None, files
        )
    for entry in expected:
        path = model_dir / entry["file"]
        actual = (
            {"file": entry["file"], "size": path.stat().st_size, "sha256": sha256_file(path)}
            if path.is_file()
            else None
        )
        if actual != entry:
            raise InputError(
                f"file '{entry['file']}' of download run '{download_run_id}' does not match its manifest "
                "(size or sha256 differs); re-run the download step"
            )
    return model_dir

"""A model folder on this machine: the files a download run recorded, checked against its manifest.

A step after ``download`` gets its model folder with ``model_dir_from_run``: a local source from the run's
``model/`` artifacts (in place when the artifact store is a local folder), a hub source from the Hugging Face cache
at the commit the run resolved. ``check_readable`` refuses a local folder this user cannot read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from llmflow.errors import InputError
from llmflow.sources.hub import WEIGHT_SUFFIXES, fetch_hub_snapshot
from llmflow.sources.manifest import sha256_file
from llmflow.tracking.names import MANIFEST_ARTIFACT, MODEL_ARTIFACT_DIR, TAG_HF_REPO, TAG_HF_SHA, TAG_SOURCE
from llmflow.tracking.runs import artifacts_in_place, get_step_run


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

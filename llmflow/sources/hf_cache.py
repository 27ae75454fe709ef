"""Seed a real Hugging Face cache layout (``models--org--name/{refs,blobs,snapshots}``) from a model folder.

It is the layout huggingface_hub itself writes: each file's bytes once under ``blobs/`` (named by sha256), the
snapshot folder of the commit linking to them, and ``refs/<branch>`` holding the commit sha without a newline.
The tests serve the tiny model under a hub id from such a cache (offline, no fakes), and the scale benchmark serves
the full-size model so (``python -m bench.scale --hub``), its blobs hard-linked to the model folder's files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from llmflow.sources.manifest import sha256_file

DEFAULT_REPO = "microsoft/Phi-3-mini-4k-instruct"


def seed_cache(cache: Path, folder: Path, repo_id: str = DEFAULT_REPO, branch: str = "main", link: bool = False) -> str:
    """Put every file of ``folder`` into the cache at ``cache`` as ``repo_id``'s ``branch``; return the commit sha.

    With ``link``, each blob is a hard link to the folder's file (same file system; no second copy of the bytes).
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    sha256 = {path: sha256_file(path) for path in files}
    sha = hashlib.sha1(b"".join(bytes.fromhex(sha256[p]) for p in files)).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / sha
    for path in files:
        blob = repo / "blobs" / sha256[path]
        if not blob.exists():
            if link:
                os.link(path, blob)
            else:
                shutil.copyfile(path, blob)
        entry = snapshot / path.relative_to(folder)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (repo / "refs" / branch).write_text(sha)  # no trailing newline: huggingface_hub would not find the ref
    return sha

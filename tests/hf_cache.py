"""Seed a real Hugging Face cache layout (``models--org--name/{refs,blobs,snapshots}``) from a model folder.

It is the layout huggingface_hub itself writes: each file's bytes once under ``blobs/`` (named by sha256), the
snapshot folder of the commit linking to them, and ``refs/<branch>`` holding the commit sha without a newline.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_REPO = "microsoft/Phi-3-mini-4k-instruct"


def seed_cache(cache: Path, folder: Path, repo_id: str = DEFAULT_REPO, branch: str = "main") -> str:
    """Put every file of ``folder`` into the cache at ``cache`` as ``repo_id``'s ``branch``; return the commit sha."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in files))
    sha = digest.hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / sha
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / branch).write_text(sha)  # no trailing newline: huggingface_hub would not find the ref
    return sha

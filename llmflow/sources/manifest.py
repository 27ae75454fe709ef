"""File manifests: every file of a model folder with its size and sha256, and a digest of the whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(model_dir: Path) -> list[dict[str, Any]]:
    """Every file under ``model_dir`` (sorted, symlinks followed) with its size and sha256."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    return [
        {"file": p.relative_to(model_dir).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)} for p in files
    ]


def manifest_digest(manifest: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

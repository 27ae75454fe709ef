"""Where a model's files come from and how they are pinned: manifests of files with their sha256."""

"""Patch of transformers' pipeline task registry, written for transformers 5.23.0 (``llmflow.log_transformers``).

- ``task_class_resolved``: MLflow 3.17.2 reads a task's pipeline class as ``check_task(task)[1]["impl"].__name__``;
  transformers 5 gives that class as its dotted name, a string, so logging a checkpoint folder fails with
  ``AttributeError``. Within the block ``check_task`` gives the class itself, as ``pipeline()`` resolves it. Canary:
  ``tests/test_log_transformers.py`` checks that stock MLflow still fails, so that this can go when it does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llmflow.patches import check_version, replaced

WRITTEN_FOR = "5.23.0"
check_version("transformers", WRITTEN_FOR)


@contextmanager
def task_class_resolved() -> Iterator[None]:
    """Within this block ``transformers.pipelines.check_task`` gives a task's pipeline class, not its name."""
    from transformers import pipelines

    stock_check = pipelines.check_task

    def check_task(task: str) -> tuple[str, dict[str, Any], Any]:
        normalized, metadata, options = stock_check(task)
        if isinstance(metadata.get("impl"), str):
            metadata = {**metadata, "impl": pipelines._resolve_impl(metadata["impl"])}  # as pipeline() does
        return normalized, metadata, options

    with replaced("check_task", [(pipelines, check_task)]):
        yield

"""The builder's build stamp, taken from the installed package rather than from a Git checkout it happens to sit in.

The builder (0.18) writes ``producer_version = "<version>+<commit>"`` into ``model.onnx``, and reads the commit with
``git rev-parse HEAD`` in the folder five levels above its own file. In a virtual environment inside a Git checkout
(this project's ``.venv``) that folder is the checkout, so ``model.onnx`` changed with every commit of the project and
an export could never be reproduced byte for byte at another commit. Here the stamp is the package's own
``onnxruntime_genai.__commit__``, the source revision the wheel was built from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llmflow.patches.onnxruntime_genai import build_stamp_from_package


def package_commit() -> str | None:
    import onnxruntime_genai

    return getattr(onnxruntime_genai, "__commit__", None) or None


@contextmanager
def package_build_stamp() -> Iterator[None]:
    """Within this block the builder stamps the wheel's commit; outside it, as shipped."""
    with build_stamp_from_package(package_commit):
        yield

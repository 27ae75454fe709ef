"""Every patch of another library's internals, one module per patched library.

Each patch works around a named upstream bug or limit of one version, the version pinned in ``requirements.txt``.
Each module checks at import that the installed version is the one its patches were written for, and fails loudly
when it is not: a patch applied blind to another version can silently do the wrong thing. When a pin moves, run the
patch's canary test (named in its docstring: it checks that the stock library still has the bug), drop the patch if
the bug is gone, and otherwise move ``WRITTEN_FOR``.

- ``llmflow.patches.onnxruntime_genai``: the model builder (build stamp, one-MatMul-at-a-time quantization, two RoPE
  config readers, its save progress bar);
- ``llmflow.patches.mlflow``: the transformers flavour's checkpoint name and hub revision, the artifact progress bar;
- ``llmflow.patches.transformers``: the pipeline task registry's class, as MLflow reads it.

The patches are context managers: inside the block the library is patched, after it as shipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version

_MISSING = object()


class PatchedVersionMismatch(RuntimeError):
    """The installed version of a patched library is not the one its patches were written for."""


def check_version(package: str, written_for: str) -> None:
    """Raise ``PatchedVersionMismatch`` unless ``package``'s installed version is ``written_for``."""
    installed = version(package)
    if installed != written_for:
        raise PatchedVersionMismatch(
            f"{package} {installed} is installed, but llmflow's patches of its internals were written for "
            f"{package}=={written_for} (requirements.txt pins it): install the pinned version, or check each patch "
            f"in llmflow/patches/ against {installed} with its canary test and then update WRITTEN_FOR"
        )


@contextmanager
def replaced(name: str, values: list[tuple[object, object]]) -> Iterator[None]:
    """Within this block attribute ``name`` of each owner is its value (``(owner, value)`` pairs); afterwards each
    is as it was. An attribute a class only inherited is deleted again, so that the class inherits it as before."""
    owners = [owner for owner, _ in values]
    stock = [vars(owner).get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name) for owner in owners]
    for owner, value in values:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, _), original in zip(values, stock, strict=True):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

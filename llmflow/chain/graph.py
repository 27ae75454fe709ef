"""The chain, written once: each step's entry point, the option groups of ``main`` it takes, and what it is handed
from the steps before it.

``main`` walks the whole graph; ``reproduce`` walks the part a registered version rests on, every step forced and
its parameters pinned to what the original runs recorded; the Databricks jobs in ``deploy/databricks/resources``
have one task per step here, ``:`` written ``_`` (``tests/test_bundle.py`` checks them against it). A step is handed
run ids, logged model URIs and version numbers of the steps before it, never a file path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mlflow.entities import Run

from llmflow.tracking.names import TAG_MODEL_URI, TAG_REGISTERED_VERSION

Handed = Literal["run_id", "model_uri", "version"]


@dataclass(frozen=True)
class Wire:
    """Parameter ``param`` of a step is the ``value`` of the run of step ``upstream``."""

    param: str
    upstream: str
    value: Handed


@dataclass(frozen=True)
class Step:
    """One step of the chain: ``key`` names it (``evaluate:onnx``), ``entry_point`` is the MLproject entry it runs.

    ``groups`` are the fields of ``main``'s options whose parameters it takes; ``flavour`` gives it
    ``registered_model_name = <base name>-<flavour>``; ``fixed`` are parameters with one value in the chain.
    """

    key: str
    entry_point: str
    groups: tuple[str, ...] = ()
    wires: tuple[Wire, ...] = ()
    flavour: str | None = None
    fixed: tuple[tuple[str, str], ...] = ()

    @property
    def upstream(self) -> tuple[str, ...]:
        """The steps it reads from, in the order of its wires (the order its run records them in)."""
        return tuple(dict.fromkeys(wire.upstream for wire in self.wires))


def _flavour(flavour: str, logged_by: str, reference: Wire | None) -> tuple[Step, Step]:
    """A flavour's register and evaluate: evaluate judges the version its own register made."""
    register = Step(
        f"register:{flavour}", "register", wires=(Wire("model_uri", logged_by, "model_uri"),), flavour=flavour
    )
    evaluate = Step(
        f"evaluate:{flavour}",
        "evaluate",
        ("evaluation",),
        # Its own version, not the alias: another run's register may have moved `challenger` since.
        (Wire("model_version", register.key, "version"), *([reference] if reference else [])),
        flavour=flavour,
        fixed=() if reference else (("reference_model_uri", "none"),),
    )
    return register, evaluate


GRAPH: tuple[Step, ...] = (
    Step("download", "download", ("source",)),
    Step("export_onnx", "export_onnx", ("export",), (Wire("download_run_id", "download", "run_id"),)),
    Step("log_pyfunc", "log_pyfunc", ("generation", "pyfunc"), (Wire("export_run_id", "export_onnx", "run_id"),)),
    Step(
        "log_transformers",
        "log_transformers",
        ("generation", "transformers"),
        (Wire("download_run_id", "download", "run_id"),),
    ),
    # The ONNX model is judged against the transformers model of the same download run, its reference.
    *_flavour("onnx", "log_pyfunc", Wire("reference_model_uri", "log_transformers", "model_uri")),
    *_flavour("transformers", "log_transformers", None),
)
FLAVOURS = tuple(step.flavour for step in GRAPH if step.entry_point == "register")
# rerun_from names one of these entry points (or "none", or "all" for download).
ENTRY_POINTS = tuple(dict.fromkeys(step.entry_point for step in GRAPH))


def leading_to(key: str) -> tuple[Step, ...]:
    """The steps ``key`` rests on, and itself, in the graph's order."""
    needed = {key}
    for candidate in reversed(GRAPH):
        if candidate.key in needed:
            needed.update(candidate.upstream)
    return tuple(s for s in GRAPH if s.key in needed)


def handed(run: Run, value: Handed) -> str:
    """What a finished step's run hands to the steps after it."""
    if value == "run_id":
        return run.info.run_id
    return run.data.tags[TAG_MODEL_URI if value == "model_uri" else TAG_REGISTERED_VERSION]


RunStep = Callable[[str, dict[str, str], list[str], str], Run]


def walk(steps: tuple[Step, ...], own_params: Callable[[Step], dict[str, str]], run_step: RunStep) -> dict[str, Run]:
    """Run ``steps`` in order, each with ``own_params(step)`` and what its wires hand it; return each step's run.

    ``run_step(entry_point, parameters, upstream run ids, key)`` runs (or reuses) one step: ``Runner.step``.
    """
    runs: dict[str, Run] = {}
    for current in steps:
        params = {
            **own_params(current),
            **dict(current.fixed),
            **{wire.param: handed(runs[wire.upstream], wire.value) for wire in current.wires},
        }
        upstream = [runs[key].info.run_id for key in current.upstream]
        runs[current.key] = run_step(current.entry_point, params, upstream, current.key)
    return runs

"""Patches of the onnxruntime-genai model builder (``onnxruntime_genai.models.builder``), written for 0.18.0.

- ``build_stamp_from_package``: the builder stamps ``model.onnx`` with ``git rev-parse HEAD`` run five folders above
  its own file, which in a virtual environment inside a Git checkout is the checkout's commit (see
  ``llmflow.export.stamp``). Canary: ``tests/test_export_nbits.py`` compares exports made at the package's stamp.
- ``to_nbits_replaced``: the builder's ``Model.to_nbits`` materialises the whole graph in fp32 before quantizing (a
  22.5 GiB peak for Phi-3-mini); ``llmflow.export.nbits`` quantizes one MatMul at a time instead, byte-identical.
  Canary: ``tests/test_export_nbits.py`` (byte-identical to the stock builder, which it also runs).
- ``longrope_type_key``: its Phi-3 LongRoPE class reads ``rope_parameters["type"]``, a key that configs saved by
  transformers 5 no longer have (``KeyError: 'type'``). Canary: ``tests/test_family_shapes.py``.
- ``gemma3_rope_per_layer_type``: its Gemma 3 class reads the flat ``rope_parameters["rope_type"]``, but transformers 5
  keeps Gemma 3's RoPE per layer type (``KeyError: 'rope_type'``), no longer sets ``rope_theta`` (the global theta
  falls back to 10000) nor ``rope_local_base_freq``. Canary: ``tests/test_families.py``.
- ``save_bar_described_quietly``: its "Saving <tensor>" progress bar sets its description for every tensor written,
  and tqdm's ``set_description`` redraws the bar each time, whatever its ``delay`` and ``mininterval`` say: a log gets
  a line per tensor (41 for the tiny Phi-3, hundreds at full size). Within the block the description changes without
  a redraw, and the bar is drawn when tqdm's settings say. Canary: ``tests/test_console.py``.

Importing this module does not import the builder (it pulls in torch and transformers); the patches do, when entered.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from llmflow.patches import check_version, replaced

WRITTEN_FOR = "0.18.0"
check_version("onnxruntime-genai", WRITTEN_FOR)

LONGROPE_CLASS = "Phi3MiniLongRoPEModel"
GEMMA3_CLASS = "Gemma3Model"


def builder_modules(module: str) -> list[Any]:
    """The builder's module ``builders.<module>``, under both names the builder imports it as.

    The builder puts its own folder on ``sys.path`` and imports ``builders.base`` as a top-level module, so its
    ``Model`` is not ``onnxruntime_genai.models.builders.base.Model``; both are patched.
    """
    from onnxruntime_genai.models import builder  # noqa: F401 - imported for its sys.path and module side effects

    names = (f"builders.{module}", f"onnxruntime_genai.models.builders.{module}")
    modules = [sys.modules.get(n) or importlib.import_module(n) for n in names]
    return list({id(m): m for m in modules}.values())


def builder_classes(module: str, name: str) -> list[type]:
    """Class ``name`` of the builder's module ``builders.<module>``, under both of its names."""
    return list({id(c): c for c in (getattr(m, name) for m in builder_modules(module))}.values())


def builder_model_classes() -> list[type]:
    """The builder's ``Model`` base class, under both of its names."""
    return builder_classes("base", "Model")


@contextmanager
def build_stamp_from_package(commit: Callable[[], str | None]) -> Iterator[None]:
    """Within this block the builder's ``get_genai_commit`` returns ``commit()`` instead of asking Git."""
    stamp = classmethod(lambda cls: commit())
    with replaced("get_genai_commit", [(cls, stamp) for cls in builder_model_classes()]):
        yield


@contextmanager
def to_nbits_replaced(replacement: Callable[[Any, Callable[[Any], Any]], Any]) -> Iterator[None]:
    """Within this block the builder's ``Model.to_nbits(self)`` is ``replacement(self, stock_to_nbits)``."""
    classes = builder_model_classes()

    def method_for(cls: type) -> Callable[[Any], Any]:
        stock = vars(cls)["to_nbits"]
        return lambda builder_model: replacement(builder_model, lambda model: stock(model))

    with replaced("to_nbits", [(cls, method_for(cls)) for cls in classes]):
        yield


@contextmanager
def longrope_type_key() -> Iterator[None]:
    """Within this block a LongRoPE config without ``type`` gets it from ``rope_type`` before the builder reads it."""

    def patched(original: Callable[..., Any]) -> Callable[..., Any]:
        def make_rope_init(self: Any, config: Any) -> Any:
            parameters = getattr(config, "rope_parameters", None)
            if isinstance(parameters, dict) and "rope_type" in parameters:
                parameters.setdefault("type", parameters["rope_type"])
            return original(self, config)

        return make_rope_init

    classes = builder_classes("phi", LONGROPE_CLASS)  # its subclasses inherit the patched method
    with replaced("make_rope_init", [(cls, patched(vars(cls)["make_rope_init"])) for cls in classes]):
        yield


def per_layer_type_rope(parameters: object) -> bool:
    """Whether ``parameters`` is transformers 5's per-layer-type RoPE form that the builder's Gemma 3 cannot read."""
    return (
        isinstance(parameters, dict)
        and "rope_type" not in parameters
        and all(isinstance(parameters.get(kind), dict) for kind in ("full_attention", "sliding_attention"))
    )


@contextmanager
def gemma3_rope_per_layer_type() -> Iterator[None]:
    """Within this block the builder's Gemma 3 reads transformers 5's per-layer-type RoPE parameters.

    Its ``make_rope_init`` gets the global layers' parameters as ``rope_parameters``; the base class's ``theta``
    (read before it, from a ``rope_theta`` transformers 5 no longer sets, so 10000) is taken from them, and
    ``rope_local_base_freq`` (read after it, by ``Gemma3Model.__init__``) from the sliding layers' ones. A config in
    any other form is left as it is.
    """

    def patched(original: Callable[..., Any]) -> Callable[..., Any]:
        def make_rope_init(self: Any, config: Any) -> Any:
            parameters = getattr(config, "rope_parameters", None)
            if per_layer_type_rope(parameters):
                config.rope_local_base_freq = parameters["sliding_attention"]["rope_theta"]
                config.rope_parameters = dict(parameters["full_attention"])
                self.rope_attrs["theta"] = config.rope_parameters["rope_theta"]
            return original(self, config)

        return make_rope_init

    classes = builder_classes("gemma", GEMMA3_CLASS)  # Gemma 4 overrides make_rope_init and reads this form itself
    with replaced("make_rope_init", [(cls, patched(cls.make_rope_init)) for cls in classes]):
        yield


@contextmanager
def save_bar_described_quietly() -> Iterator[None]:
    """Within this block the builder's save progress bar is redrawn on tqdm's schedule, not on each description."""
    from tqdm import tqdm

    class DescribedQuietly(tqdm):
        def set_description(self, desc: str | None = None, refresh: bool = False) -> None:
            super().set_description(desc, refresh=False)

    with replaced("tqdm", [(module, DescribedQuietly) for module in builder_modules("base")]):
        yield

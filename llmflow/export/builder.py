"""The one call into the onnxruntime-genai model builder, with this project's patches around it.

Quantization runs one MatMul at a time (``llmflow.export.nbits``) and the build stamp is the installed wheel's commit
(``llmflow.export.stamp``); the quantizer's per-MatMul INFO lines are held back.

Two builder bugs are worked around here, by patches in ``llmflow.patches.onnxruntime_genai``. The first
(``longrope_type_key``): its Phi-3 LongRoPE class
(Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) reads the RoPE policy as ``rope_parameters["type"]``, the key of configs
written before transformers 5. A config that transformers 5 saved has only ``rope_type``, and the builder then fails
with ``KeyError: 'type'``; its base class already reads ``rope_type`` for every other model.
``tests/test_family_shapes.py`` exports such configs and compares the ONNX model's logits with transformers'.

The second (``gemma3_rope_per_layer_type``): its Gemma 3 class (Gemma3ForCausalLM) reads the flat
``rope_parameters["rope_type"]``, but transformers 5 keeps Gemma 3's RoPE per layer type
(``{"full_attention": {...}, "sliding_attention": {...}}``), also when it loads a config written in the older form
(``rope_theta`` and ``rope_local_base_freq``), so the builder fails with ``KeyError: 'rope_type'``. Two more errors
hide behind it: the global theta falls back to 10000 (transformers 5 no longer sets ``rope_theta``), and
``Gemma3Model.__init__`` reads ``rope_local_base_freq``, no longer set either. The fix hands the builder the global
layers' parameters as ``rope_parameters`` and their theta as its theta, and the sliding layers' theta as
``rope_local_base_freq``.
``tests/test_families.py`` exports a tiny Gemma 3 and compares the ONNX model's logits with transformers'; it also
checks that the stock builder still fails on both config forms, so that the day it does not, this fix can go.
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from llmflow.console import DebugLines
from llmflow.errors import InputError, first_line
from llmflow.export.nbits import WeightTransform, streaming_quantization
from llmflow.export.recipe import Int4Recipe
from llmflow.export.residency import page_out, trim_heap
from llmflow.export.stamp import package_build_stamp
from llmflow.patches.onnxruntime_genai import (
    gemma3_rope_per_layer_type,
    longrope_type_key,
    save_bar_described_quietly,
)

logger = logging.getLogger(__name__)

# What the builder raises for a model or option it cannot handle (a KeyError: a config key it expects and does not
# find); anything else is a bug and keeps its traceback.
BUILDER_INPUT_ERRORS = (NotImplementedError, ValueError, OSError, KeyError)


def builder_extra_options(precision: str, recipe: Int4Recipe, tied_embeddings: bool = False) -> list[str]:
    """The builder's ``KEY=VALUE`` extra options; only int4 takes any (``Int4Recipe.builder_options``)."""
    return recipe.builder_options(tied_embeddings) if precision == "int4" else []


def ties_embeddings(model_dir: Path) -> bool:
    """Whether the HF model at ``model_dir`` ties its embedding and LM head (its ``config.json``)."""
    config = Path(model_dir) / "config.json"
    return bool(config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("tie_word_embeddings"))


def calibrated_transform(model_dir: Path, recipe: Int4Recipe, store: Path) -> WeightTransform | None:
    """The int4 weight transform of a calibrated recipe (GPTQ, or activation-aware clipping), or None."""
    if recipe.algo == "gptq":
        from llmflow.export.gptq import gptq_weights

        transform: WeightTransform = gptq_weights(model_dir, recipe, store)
    elif recipe.clip != "none":
        from llmflow.export.clip import activation_clipper

        transform = activation_clipper(model_dir, recipe.symmetric, recipe.block_size)
    else:
        return None
    gc.collect()
    trim_heap()  # what the calibration freed goes back to the kernel before the builder loads the model
    return transform


def report_transform(transform: WeightTransform | None) -> None:
    """Log which int4 weights GPTQ gave; a warning names any decoder weight it was meant to give and did not."""
    used, unmatched = getattr(transform, "used", None), getattr(transform, "unmatched", [])
    if used is None:
        return
    logger.info("gptq: %d int4 MatMuls from GPTQ, %d rounded to nearest", len(used), len(unmatched))
    missed = [name for name in unmatched if "/layers." in name]
    if missed:
        logger.warning(
            "gptq: no calibrated weight matched %d decoder MatMuls (rounded to nearest): %s",
            len(missed),
            ", ".join(missed[:5]),
        )


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hold back the quantizer's per-MatMul INFO lines; its warnings still show."""
    quantizer = logging.getLogger("onnxruntime.quantization")
    previous = quantizer.level
    quantizer.setLevel(max(logging.WARNING, previous))
    try:
        yield
    finally:
        quantizer.setLevel(previous)


def _builder_reason(exc: Exception) -> str:
    """One line that says why the builder gave up; a KeyError's own message is only the quoted key."""
    if isinstance(exc, KeyError) and exc.args:
        return f"missing config key {exc.args[0]!r}"
    return first_line(exc)


def build(
    model_dir: Path,
    out_dir: Path,
    *,
    precision: str,
    execution_provider: str,
    recipe: Int4Recipe,
) -> Path:
    """Export the HF model folder ``model_dir`` into ``out_dir`` with the onnxruntime-genai builder; return ``out_dir``.

    This is the one place that calls the builder; the options are checked by the caller
    (``llmflow.export_onnx.run_builder``). A model or option it rejects becomes an ``InputError``.
    Quantization runs one MatMul at a time (``llmflow.export.nbits``): the same files as the builder's own pass,
    without its whole-graph fp32 copy; the pages of the weight files it has read are given back as it goes
    (``llmflow.export.residency``), so that the memory mapped weights do not stay resident beside the output, and
    each quantized weight goes to a scratch file in ``out_dir`` until the builder saves (``llmflow.export.spill``),
    so that the output is not held in memory either.
    The build stamp in ``model.onnx`` is the installed wheel's commit
    (``llmflow.export.stamp``), so the same input gives the same files at any commit of this project.
    """
    # Imported here: the builder pulls in torch and transformers, which validation alone does not need.
    from onnxruntime_genai.models import builder

    extra = builder_extra_options(precision, recipe, ties_embeddings(model_dir))
    out_dir = Path(out_dir)
    calibration_dir = tempfile.TemporaryDirectory(prefix="llmflow-calibration-")
    # Before the builder loads the model; what the calibration holds in memory is freed when it returns.
    transform = calibrated_transform(model_dir, recipe, Path(calibration_dir.name)) if precision == "int4" else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        calibration_dir,
        tempfile.TemporaryDirectory(prefix="llmflow-builder-cache-") as cache_dir,
        # Beside the output (same disk, so the save copies in the kernel); gone before this returns.
        tempfile.TemporaryDirectory(prefix=".llmflow-quantized-", dir=out_dir) as spill_dir,
        _quiet_quantizer(),
        # The builder prints a line per layer read ("Reading layer 31") and per file written; its progress bar (on
        # stderr) stays, drawn on tqdm's schedule. The lines go to this module's logger at DEBUG.
        redirect_stdout(DebugLines(logger, "builder: ")),
        save_bar_described_quietly(),
        streaming_quantization(
            after_each=lambda: page_out(model_dir),
            recipe=recipe if precision == "int4" else None,
            weight_transform=transform,
            spill_dir=Path(spill_dir),
        ),
        package_build_stamp(),
        longrope_type_key(),
        gemma3_rope_per_layer_type(),
    ):
        try:
            # (model_name, input_path, output_dir, precision, execution_provider, cache_dir), as the builder's CLI
            # passes them; no model_name, so the builder reads the local folder and never asks the Hub.
            args = (None, str(model_dir), str(out_dir), precision, execution_provider, cache_dir)
            builder.create_model(*args, **builder.parse_extra_options(*args, extra))
        except BUILDER_INPUT_ERRORS as exc:
            reason = _builder_reason(exc)
            raise InputError(
                f"the onnxruntime-genai model builder cannot export '{model_dir}' as "
                f"{precision}/{execution_provider}: {reason}"
            ) from exc
    report_transform(transform)
    # The builder's model and its weights are garbage in reference cycles; free them before the smoke test loads the
    # export, and give back the weight pages read while saving.
    gc.collect()
    page_out(model_dir)
    return out_dir

"""The one call into the onnxruntime-genai model builder, with this project's patches around it.

Quantization runs one MatMul at a time (``llmflow.export.nbits``) and the build stamp is the installed wheel's commit
(``llmflow.export.stamp``); the quantizer's per-MatMul INFO lines are held back.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmflow.errors import InputError
from llmflow.export.nbits import streaming_quantization
from llmflow.export.stamp import package_build_stamp

# What the builder raises for a model or option it cannot handle; anything else is a bug and keeps its traceback.
BUILDER_INPUT_ERRORS = (NotImplementedError, ValueError, OSError)


def builder_extra_options(precision: str, int4_block_size: int, int4_accuracy_level: int) -> list[str]:
    """The builder's ``KEY=VALUE`` extra options; only int4 takes any."""
    per_precision = {"int4": [f"int4_block_size={int4_block_size}", f"int4_accuracy_level={int4_accuracy_level}"]}
    return per_precision.get(precision, [])


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


def build(
    model_dir: Path,
    out_dir: Path,
    precision: str,
    execution_provider: str,
    int4_block_size: int,
    int4_accuracy_level: int,
) -> Path:
    """Export the HF model folder ``model_dir`` into ``out_dir`` with the onnxruntime-genai builder; return ``out_dir``.

    This is the one place that calls the builder; the options are checked by the caller
    (``llmflow.export_onnx.run_builder``). A model or option it rejects becomes an ``InputError``.
    Quantization runs one MatMul at a time (``llmflow.export.nbits``): the same files as the builder's own pass,
    without its whole-graph fp32 copy. The build stamp in ``model.onnx`` is the installed wheel's commit
    (``llmflow.export.stamp``), so the same input gives the same files at any commit of this project.
    """
    # Imported here: the builder pulls in torch and transformers, which validation alone does not need.
    from onnxruntime_genai.models import builder

    extra = builder_extra_options(precision, int4_block_size, int4_accuracy_level)
    out_dir = Path(out_dir)
    with (
        tempfile.TemporaryDirectory(prefix="llmflow-builder-cache-") as cache_dir,
        _quiet_quantizer(),
        streaming_quantization(),
        package_build_stamp(),
    ):
        try:
            # (model_name, input_path, output_dir, precision, execution_provider, cache_dir), as the builder's CLI
            # passes them; no model_name, so the builder reads the local folder and never asks the Hub.
            args = (None, str(model_dir), str(out_dir), precision, execution_provider, cache_dir)
            builder.create_model(*args, **builder.parse_extra_options(*args, extra))
        except BUILDER_INPUT_ERRORS as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(
                f"the onnxruntime-genai model builder cannot export '{model_dir}' as "
                f"{precision}/{execution_provider}: {reason}"
            ) from exc
    return out_dir

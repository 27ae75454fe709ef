"""GPTQ int4 weights on onnxruntime's block format: each weight's rounding error is pushed onto the weights not yet
rounded, in the directions the calibration inputs say matter least.

Round-to-nearest rounds each weight alone. GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers") rounds the input channels of a linear layer one after another and, after
each, updates the channels still to come so that the layer's output on the calibration inputs ``X`` changes least
(the inverse of ``H = X^T X`` gives the update). Here:

- ``H`` comes from ``llmflow.export.calibrate``, one decoder layer at a time, on the calibration text
  (``llmflow.export.calibration_text``); each layer reads the outputs of the layers before it as quantized
  (GPTQ's sequential order);
- the grid is onnxruntime's ``MatMulNBits`` 4-bit block format, the recipe's own (asymmetric with a zero point, or
  MLAS's signed symmetric grid; blocks of ``block_size`` along the input): each block's scale and zero point are
  chosen when GPTQ reaches the block, from the updated weights, as the fraction of their range (1 to 0.5, 21 steps)
  with the least squared error (GPTQ's ``mse`` grid search);
- the codes, scales and zero points go into the graph as they are (``llmflow.export.nbits``), byte for byte the
  layout onnxruntime's quantizer writes (a test packs round-to-nearest codes and compares with its bytes).

Measured on SmolLM2-135M-Instruct and its rotated copy (README, "Choosing the int4 recipe"): the int4 recipe with
GPTQ keeps perplexity within ×1.06 of the float model on both, where round-to-nearest costs ×1.09 and ×1.23.

Why it is written here: onnxruntime's ``GPTQWeightOnlyQuantizer`` runs the whole fp32 ONNX model for its
calibration (15.3 GB at Phi-3-mini's size, over the export's 6 GiB) and writes the model again; AutoGPTQ is archived,
GPTQModel and llm-compressor produce checkpoints for GPU kernels and bring their own stacks. The algorithm itself is
the reference code's ~40 lines (``gptq.py`` of IST-DASLab/gptq), kept readable below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmflow.export.gptq_match import ARRAYS, Entry, GptqWeights, fingerprint
from llmflow.export.nbits import QuantizedBlocks
from llmflow.export.recipe import Int4Recipe

logger = logging.getLogger(__name__)

RATIOS = tuple(1.0 - 0.025 * step for step in range(21))  # 1.0, 0.975, ..., 0.5
DAMPING = 0.01  # of the mean of H's diagonal, added to it (the reference's percdamp)
LEVELS = 15
LAZY_BATCH = 128  # columns per update of the weights after them (the reference's blocksize)


def _grid(high: Any, low: Any, symmetric: bool) -> tuple[Any, Any]:
    """Scale and zero point (as floats) of a 4-bit grid spanning ``[low, high]`` (``low <= 0 <= high``), as
    onnxruntime's block quantizer forms them: asymmetric, ``(high - low) / 15`` with a rounded zero point;
    symmetric, MLAS's signed grid, the extreme value with its sign mapped to -8."""
    import torch

    if symmetric:
        extreme = torch.where(high >= -low, high, low)
        scale = torch.where(extreme != 0, extreme / -8, torch.ones_like(extreme))
        return scale, torch.full_like(scale, 8.0)
    scale = torch.where(high > low, (high - low) / LEVELS, torch.ones_like(high))
    return scale, torch.clamp(torch.round(-low / scale), 0, LEVELS)


def _codes(x: Any, scale: Any, zero: Any) -> Any:
    import torch

    return torch.clamp(torch.round(x / scale) + zero, 0, LEVELS)


def block_grid(block: Any, symmetric: bool, scale_dtype: Any) -> tuple[Any, Any]:
    """The grid (scale, zero point per row) of one block ``[rows, block_size]`` with the least squared error among
    ``RATIOS`` of its range. ``scale_dtype``: the scales are rounded to what the file stores (bf16 for a bf16 model)."""
    import torch

    high = block.amax(dim=1).clamp(min=0)
    low = block.amin(dim=1).clamp(max=0)
    best = best_scale = best_zero = None
    work = torch.empty_like(block)
    for ratio in RATIOS:
        scale, zero = _grid(high * ratio, low * ratio, symmetric)
        scale = scale.to(scale_dtype).to(torch.float32)
        # (clamp(round(x / s) + z, 0, 15) - z) * s - x, in place: this search is most of GPTQ's elementwise work.
        torch.div(block, scale[:, None], out=work)
        work.round_().add_(zero[:, None]).clamp_(0, LEVELS).sub_(zero[:, None]).mul_(scale[:, None]).sub_(block)
        error = work.square_().sum(dim=1)
        if best is None:
            best, best_scale, best_zero = error, scale, zero
        else:
            better = error < best
            best = torch.where(better, error, best)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


@dataclass
class GptqResult:
    """Codes ``[rows, cols]`` (uint8, 0..15), scales and zero points ``[rows, blocks]``, and the dequantized weight."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    dequantized: Any = field(repr=False)


def gptq(
    weight: Any, gram: Any, symmetric: bool, block_size: int, scale_dtype: Any = None, damping: float = DAMPING
) -> GptqResult:
    """GPTQ of a linear layer's ``weight`` (``[out, in]``, torch) under ``gram`` (``X^T X`` of its inputs, float64).

    Columns (input channels) in order, in lazy batches of 128; each block's grid is chosen from the weights as GPTQ
    has updated them when it gets there."""
    import torch

    scale_dtype = scale_dtype or torch.float32
    rows, cols = weight.shape
    if cols % block_size:
        raise ValueError(f"GPTQ needs the input size ({cols}) to be a multiple of the block size ({block_size})")
    w = weight.detach().to(torch.float32).clone()
    h = gram.to(torch.float32).clone()  # float32, as the reference: the damping keeps it well conditioned
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * torch.mean(torch.diagonal(h)) * torch.eye(cols, dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    blocks = cols // block_size
    codes = torch.empty((rows, cols), dtype=torch.uint8)
    scales = torch.empty((rows, blocks), dtype=torch.float32)
    zeros = torch.empty((rows, blocks), dtype=torch.float32)
    dequantized = torch.empty_like(w)
    batch = block_size * max(1, LAZY_BATCH // block_size)
    for first in range(0, cols, batch):
        last = min(first + batch, cols)
        # The batch transposed, [columns, rows]: each input channel's weights contiguous for the column loop.
        part = w[:, first:last].T.contiguous()
        values = torch.empty_like(part)
        errors = torch.empty_like(part)
        local = inverse[first:last, first:last]
        for start in range(0, last - first, block_size):
            stop = start + block_size
            b = (first + start) // block_size
            scale, zero = block_grid(part[start:stop].T, symmetric, scale_dtype)
            scales[:, b], zeros[:, b] = scale, zero
            for i in range(start, stop):
                column = part[i]
                values[i] = (_codes(column, scale, zero) - zero) * scale
                errors[i] = (column - values[i]) / local[i, i]
                part[i + 1 :] -= local[i, i + 1 :, None] * errors[i][None, :]
            codes[:, first + start : first + stop] = (
                torch.round(values[start:stop].T / scale[:, None]) + zero[:, None]
            ).to(torch.uint8)
        dequantized[:, first:last] = values.T
        # GPTQ's lazy batch: the columns after the batch get its errors in one product.
        w[:, last:] -= errors.T @ inverse[first:last, last:]
    return GptqResult(
        codes.numpy(),
        scales.to(scale_dtype).to(torch.float32).numpy(),
        zeros.to(torch.uint8).numpy(),
        dequantized,
    )


def pack(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, block_size: int) -> QuantizedBlocks:
    """``MatMulNBits``' initializers for 4-bit codes ``[N, K]`` with a grid per block: the packed weight
    ``[N, blocks, block_size / 2]`` (two codes a byte, the first in the low nibble), the scales ``[N, blocks]`` and
    the zero points ``[N, ceil(blocks / 2)]`` (two blocks a byte, the first in the low nibble); the layout
    onnxruntime's ``qbits_block_quant`` returns (``tests/test_export_gptq.py`` compares the bytes)."""
    rows, cols = codes.shape
    blocks = cols // block_size
    pairs = codes.reshape(rows, blocks, block_size // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    padded = np.full((rows, blocks + blocks % 2), 8, dtype=np.uint8)  # an odd block count pads with 8, as ORT
    padded[:, :blocks] = zero_points
    zeros = (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)
    return QuantizedBlocks(np.ascontiguousarray(packed), np.ascontiguousarray(scales, dtype=np.float32), zeros)


def more_bits_layers(layers: int) -> set[int]:
    """The layers whose qkv and down_proj the builder's ``mixed_layers`` makes int8 (llama.cpp's choice; the formula
    of onnxruntime-genai 0.18's ``make_matmul_mixed_precision``)."""
    return {i for i in range(layers) if i < layers / 8 or i >= 7 * layers / 8 or (i - round(layers / 8)) % 3 == 2}


def int4_inputs(recipe: Int4Recipe, layer: int, layers: int) -> set[str]:
    """The input kinds of decoder layer ``layer`` whose linear layers the recipe leaves int4."""
    kinds = {"attn_in", "o_in", "mlp_in", "down_in"}
    if "qkv" in recipe.int8:
        kinds.discard("attn_in")
    if "mixed_layers" in recipe.int8 and layer in more_bits_layers(layers):
        kinds -= {"attn_in", "down_in"}
    return kinds


def gptq_weights(model_dir: Path, recipe: Int4Recipe, store: Path) -> GptqWeights:
    """GPTQ every int4 linear layer of the decoder layers of the model at ``model_dir`` (the LM head stays
    round-to-nearest), one layer at a time, into ``store``; the transform that gives the results to the export."""
    entries = calibrate_into(Path(model_dir), recipe, Path(store))
    logger.info("gptq: %d linear layers quantized", sum(len(group) for group in entries.values()))
    return GptqWeights(entries, recipe.block_size)


def calibrate_into(model_dir: Path, recipe: Int4Recipe, store: Path) -> dict[tuple[int | None, str], list[Entry]]:
    """The calibration and GPTQ: results into ``store``, their entries returned."""
    import json

    import torch

    from llmflow.export.calibrate import calibrate_layerwise
    from llmflow.export.calibration_text import CALIBRATION_TEXT

    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)
    layers = int(config["num_hidden_layers"])
    # The builder keeps a bf16 model's scales in bf16 (llmflow.export.nbits): GPTQ rounds them so as it goes.
    bf16 = str(config.get("torch_dtype") or config.get("dtype")) == "bfloat16"
    scale_dtype = torch.bfloat16 if bf16 else torch.float32
    entries: dict[tuple[int | None, str], list[Entry]] = {}

    def on_layer(index: int, layer: Any, sums: dict[str, Any], kinds: dict[str, list[str]]) -> bool:
        modules = dict(layer.named_modules())
        changed = False
        for kind in sorted(set(sums)):
            gram, _rows = sums[kind]
            for name in kinds[kind]:
                linear = modules[name]
                if linear.in_features % recipe.block_size:  # onnxruntime pads such a weight: rounded to nearest
                    continue
                result = gptq(linear.weight, gram, recipe.symmetric, recipe.block_size, scale_dtype)
                path = store / f"layer{index}.{name}"
                path.mkdir()
                blocks = pack(result.codes, result.scales, result.zero_points, recipe.block_size)
                for array_name, array in zip(ARRAYS, blocks, strict=True):
                    np.save(path / f"{array_name}.npy", array)
                entries.setdefault((index, kind), []).append(
                    Entry(name, path, *fingerprint(linear.weight.detach().numpy()))
                )
                with torch.no_grad():  # the next layers read what the quantized model will give them
                    linear.weight.copy_(result.dequantized)
                changed = True
        return changed

    calibrate_layerwise(model_dir, CALIBRATION_TEXT, on_layer, wanted=lambda index: int4_inputs(recipe, index, layers))
    return entries

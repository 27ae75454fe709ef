"""Activation-aware clipping of int4 weights: each block's range is shrunk where that lowers the layer's output error.

Round-to-nearest int4 gives each block of ``block_size`` weights (along the input dimension, one output column at a
time) a grid spanning the block's minimum and maximum. One large weight stretches the grid for the other 31, and
most of the error comes from them. Clipping the block to ``ratio`` times its range trades a larger error on the
outlier for a finer grid everywhere else; the best ratio depends on how much each input channel carries. AWQ's
clipping search (Lin et al., 2024, "AWQ: Activation-aware Weight Quantization", its ``auto_clip`` step) picks it per
block by the output error on calibration activations. Here the error of a block is ``d^T G d``, with ``d`` the
block's quantization error and ``G`` the Gram matrix of the calibration inputs of that block's channels (the
block-diagonal part of ``X^T X``, from ``llmflow.export.calibrate``, one decoder layer at a time): a search over 21
ratios from 1 to 0.5, per block and column, in float64.

The weights are clipped in the float graph, just before onnxruntime's own block quantizer reads them
(``llmflow.export.nbits``), so the files are the quantizer's format and the rest of the export is unchanged.

Why it is written here: onnxruntime's RTN, HQQ, GPTQ and k-quant quantizers have no activation-aware clip; its
AWQ (``NVAWQWeightOnlyQuantizer``) needs NVIDIA ModelOpt and downloads its calibration set from the Hub; AutoAWQ,
where the algorithm was published, is deprecated, and llm-compressor, which adopted it, targets vLLM's checkpoint
format and is not among this project's dependencies. The calibration text is
``llmflow/export/calibration_text.py``, prose that neither the held-out text nor the QA set contains.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from llmflow.export.calibrate import SHARED_INPUTS

logger = logging.getLogger(__name__)

# The inputs a builder MatMul reads, by the projection's name (builder node names and HF module names share them):
# the calibration's own table.
INPUT_KINDS = SHARED_INPUTS
LM_HEAD = "lm_head"
RATIOS = tuple(1.0 - 0.025 * step for step in range(21))  # 1.0, 0.975, ..., 0.5
COLUMN_CHUNK_ELEMENTS = 2**21  # weights per chunk of columns in the search (16 MB of float64 per work array)
_LAYER = re.compile(r"layers\.(\d+)[./]")

Key = tuple[int | None, str]


def input_key(name: str) -> Key | None:
    """``(layer, input kind)`` of a builder MatMul (``/model/layers.3/mlp/down_proj/MatMul``) or an HF module
    (``model.layers.3.mlp.down_proj``); ``(None, "lm_head")`` for the LM head; None for anything else."""
    parts = [part for part in re.split(r"[./]", name) if part]
    if LM_HEAD in parts:
        return (None, LM_HEAD)
    layer = _LAYER.search(name)
    kinds = [INPUT_KINDS[part] for part in parts if part in INPUT_KINDS]
    if layer is None or not kinds:
        return None
    return (int(layer.group(1)), kinds[-1])


def input_grams(model_dir: Path, text: str, block_size: int) -> dict[Key, np.ndarray]:
    """The block-diagonal Gram matrices of every linear layer's input over ``text``: ``{key: [blocks, bs, bs]}``.

    The float model reads the text one decoder layer at a time (``llmflow.export.calibrate``), in float32.
    """
    from llmflow.export.calibrate import calibrate_layerwise

    grams: dict[Key, np.ndarray] = {}

    def on_layer(index: int, layer: Any, sums: dict[str, Any], kinds: dict[str, list[str]]) -> bool:
        for kind, (gram, _rows) in sums.items():
            if kind in set(INPUT_KINDS.values()) and gram.shape[0] % block_size == 0:
                grams[(index, kind)] = block_diagonal(gram.numpy(), block_size)
        return False

    def head(gram: Any, rows: int) -> None:
        if gram.shape[0] % block_size == 0:
            grams[(None, LM_HEAD)] = block_diagonal(gram.numpy(), block_size)

    calibrate_layerwise(model_dir, text, on_layer, head)
    logger.info("clip: %d layer inputs calibrated", len(grams))
    return grams


def block_diagonal(gram: np.ndarray, block_size: int) -> np.ndarray:
    """The ``[blocks, bs, bs]`` diagonal blocks of ``gram`` (``[d, d]``)."""
    blocks = gram.shape[0] // block_size
    return np.ascontiguousarray(
        gram.reshape(blocks, block_size, blocks, block_size).diagonal(axis1=0, axis2=2).transpose(2, 0, 1)
    )


def _fake_quant(blocks: np.ndarray, low: np.ndarray, high: np.ndarray, symmetric: bool) -> np.ndarray:
    """Round-to-nearest 4-bit, as onnxruntime's block quantizer does it, of ``blocks`` clipped to [low, high]."""
    clipped = np.clip(blocks, low, high)
    if symmetric:
        # MLAS: the value of largest magnitude, with its sign, maps to -8 (scale = v / -8, zero point 8), so the
        # grid reaches 7/8 of it on the other side.
        extreme = np.where(high >= -low, high, low)
        scale = np.where(extreme != 0, extreme / -8, 1.0)
        return (np.clip(np.round(clipped / scale) + 8, 0, 15) - 8) * scale
    scale = np.where(high > low, (high - low) / 15, 1.0)
    zero_point = np.clip(np.round(-low / scale), 0, 15)
    return (np.clip(np.round(clipped / scale) + zero_point, 0, 15) - zero_point) * scale


def clip_weight(weight: np.ndarray, gram: np.ndarray, symmetric: bool, block_size: int) -> tuple[np.ndarray, float]:
    """``weight`` (``[K, N]``, as the MatMul reads it) with each block of each column clipped to the ratio of its
    range that gives the least output error under ``gram``; and the mean ratio chosen. Columns go in chunks, so
    that the float64 work arrays stay near 100 MB whatever the layer's size."""
    rows, cols = weight.shape
    clipped = np.empty_like(weight)
    ratio_sum = 0.0
    chunk = max(1, COLUMN_CHUNK_ELEMENTS // rows)
    for start in range(0, cols, chunk):
        part, ratios = _clip_columns(weight[:, start : start + chunk], gram, symmetric, block_size)
        clipped[:, start : start + chunk] = part
        ratio_sum += float(ratios.sum())
    return clipped, ratio_sum / (cols * (rows // block_size))


def _clip_columns(
    weight: np.ndarray, gram: np.ndarray, symmetric: bool, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = weight.shape
    blocks = weight.astype(np.float64).reshape(rows // block_size, block_size, cols)  # [b, i, n]
    high = np.maximum(blocks.max(axis=1, keepdims=True), 0.0)
    low = np.minimum(blocks.min(axis=1, keepdims=True), 0.0)
    best_error = best_ratio = None
    for ratio in RATIOS:
        error = _fake_quant(blocks, low * ratio, high * ratio, symmetric) - blocks
        cost = (error * np.matmul(gram, error)).sum(axis=1)  # d^T G d per block and column, as batched BLAS
        if best_error is None:
            best_error, best_ratio = cost, np.full_like(cost, ratio)
        else:
            better = cost < best_error
            best_error = np.where(better, cost, best_error)
            best_ratio = np.where(better, ratio, best_ratio)
    chosen = best_ratio[:, None, :]
    return np.clip(blocks, low * chosen, high * chosen).reshape(rows, cols).astype(weight.dtype), best_ratio


class ActivationClipper:
    """Clips each int4 weight the export quantizes, by its node's calibration Gram (``llmflow.export.nbits``)."""

    def __init__(self, grams: dict[Key, np.ndarray], symmetric: bool, block_size: int) -> None:
        self.grams, self.symmetric, self.block_size = grams, symmetric, block_size

    def __call__(self, node_name: str, weight: np.ndarray) -> np.ndarray:
        key = input_key(node_name)
        gram = self.grams.get(key) if key is not None else None
        if gram is None or weight.shape[0] != gram.shape[0] * self.block_size:
            logger.debug("clip: no calibration input for %s; quantized unclipped", node_name)
            return weight
        clipped, mean_ratio = clip_weight(weight, gram, self.symmetric, self.block_size)
        logger.debug("clip: %s, mean ratio %.3f", node_name, mean_ratio)
        return clipped


def activation_clipper(model_dir: Path, symmetric: bool, block_size: int) -> ActivationClipper:
    """The clipper for the model at ``model_dir``, calibrated on the project's calibration text."""
    from llmflow.export.calibration_text import CALIBRATION_TEXT

    return ActivationClipper(input_grams(model_dir, CALIBRATION_TEXT, block_size), symmetric, block_size)

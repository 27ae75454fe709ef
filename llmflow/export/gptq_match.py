"""Which GPTQ'd rows a builder ``MatMul`` holds: the results of ``llmflow.export.gptq`` on disk, found again by
fingerprint when the export's quantization pass (``llmflow.export.nbits``) reaches each int4 weight.

The calibration sees transformers' linear layers; the builder writes its own MatMuls, fusing some (q, k and v into
``qkv_proj``) and splitting others (Phi-3's ``gate_up_proj`` into ``gate_proj`` and ``up_proj``). Each row of a
result carries its original weight's sum and dot product with a fixed vector; a MatMul's weight is looked for, by
those, among the concatenated rows of its layer's linear layers that read the same input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmflow.export.clip import input_key
from llmflow.export.nbits import QuantizedBlocks

logger = logging.getLogger(__name__)

ARRAYS = ("packed", "scales", "zero_points")  # a result's files, in QuantizedBlocks' order


@dataclass(frozen=True)
class Entry:
    """One linear layer's GPTQ result on disk, with what identifies its rows in the builder's graph: per output, the
    original weight's sum and its dot product with ``probe(in)`` (a fixed vector, so a permutation of inputs shows)."""

    name: str
    path: Path
    sums: np.ndarray
    dots: np.ndarray


def probe(size: int) -> np.ndarray:
    return np.sin(np.arange(1, size + 1, dtype=np.float64))


def fingerprint(weight: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per output row of ``weight`` (``[out, in]``, float32): its sum (float64) and its dot product with ``probe``."""
    return column_fingerprint(np.asarray(weight).T)


def column_fingerprint(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fingerprint`` of a MatMul's ``[in, out]`` weight, column by column, without a copy of it."""
    dots = probe(weight.shape[0]).astype(weight.dtype) @ weight
    return weight.sum(axis=0, dtype=np.float64), dots.astype(np.float64)


class GptqWeights:
    """The weight transform of the export's quantization pass (``llmflow.export.nbits``): a builder ``MatMul``
    whose float weight is made of GPTQ'd rows gets their codes. The builder fuses some linear layers (q, k and v
    into ``qkv_proj``) and splits others (Phi-3's ``gate_up_proj`` into ``gate_proj`` and ``up_proj``), so the rows
    are looked for in the concatenation of a layer's linear layers that read the same input, in module order, by
    their fingerprints. Any other int4 weight is rounded to nearest by onnxruntime, as usual, and counted."""

    def __init__(self, entries: dict[tuple[int | None, str], list[Entry]], block_size: int) -> None:
        self.entries, self.block_size = entries, block_size
        self.used: list[str] = []
        self.unmatched: list[str] = []

    def __call__(self, node_name: str, weight: np.ndarray) -> np.ndarray | QuantizedBlocks:
        key = input_key(node_name)
        group = self.entries.get(key, []) if key else []
        found = self._rows(group, weight) if group else None
        if found is None:
            self.unmatched.append(node_name)
            logger.debug("gptq: no calibrated weight matches %s; rounded to nearest", node_name)
            return weight
        self.used.append(node_name)
        return self._load_rows(group, *found)

    @staticmethod
    def _load_rows(group: list[Entry], start: int, stop: int) -> QuantizedBlocks:
        """Rows ``[start, stop)`` of the group's concatenated results, read from their memory-mapped files: only
        those rows are copied (a view would keep the whole group alive in the graph: Phi-3's gate_proj and up_proj
        would each hold all of gate_up_proj, 1 GB more at 3.8 B)."""
        arrays: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
        offset = 0
        for entry in group:
            rows = len(entry.sums)
            low, high = max(start, offset) - offset, min(stop, offset + rows) - offset
            if low < high:
                for name in ARRAYS:
                    stored = np.load(entry.path / f"{name}.npy", mmap_mode="r")
                    arrays[name].append(np.array(stored[low:high]))
            offset += rows
        return QuantizedBlocks(*(np.concatenate(arrays[name]) for name in ARRAYS))

    @staticmethod
    def _rows(group: list[Entry], weight: np.ndarray) -> tuple[int, int] | None:
        """The rows ``[start, stop)`` of the group's concatenated outputs that ``weight`` (``[K, N]``) holds."""
        sums = np.concatenate([entry.sums for entry in group])
        dots = np.concatenate([entry.dots for entry in group])
        cols = weight.shape[1]
        ours = column_fingerprint(weight)
        starts = np.cumsum([0] + [len(entry.sums) for entry in group[:-1]])
        for offset in sorted({int(s) + j * cols for s in starts for j in range(len(sums) // cols + 1)}):
            if offset + cols > len(sums):
                continue
            theirs = (sums[offset : offset + cols], dots[offset : offset + cols])
            if all(
                np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))
                for a, b in zip(ours, theirs, strict=True)
            ):
                return offset, offset + cols
        return None

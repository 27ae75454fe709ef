"""Quantized weights go to a scratch file as they are made, not into memory, until the builder saves the model.

The builder keeps every initializer of its graph in memory until ``ir.save`` writes ``model.onnx.data``: after the
one-MatMul-at-a-time quantization (``llmflow.export.nbits``), that is the whole int4 output (3.3 GB for
Phi-3-mini with the default recipe) beside the rest of the export. Here each quantized tensor is appended to a file
in a scratch folder and the graph holds an ``onnx_ir.ExternalTensor`` pointing at its bytes: they are written as
``ir.save`` writes an in-memory tensor (``Tensor.tofile``), and ``ir.save`` copies them into ``model.onnx.data`` with
``copy_file_range`` (in the kernel, no user memory), so the files are the same, byte for byte
(``tests/test_export_nbits.py``, ``tests/test_export_spill.py``). What it costs: the scratch file on disk (the size
of the quantized weights) until the model is saved, and one more write of those bytes.

onnx_ir has no "write this initializer to disk now" of its own: ``ir.external_data.unload_from_model`` writes a
whole model at once, which is what the builder's save does at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # onnx_ir takes seconds to import; only an export needs it
    import onnx_ir as ir


class SpillFile:
    """Appends tensors to ``folder/name`` and returns ``ExternalTensor``s of them; ``close`` when the model is saved.

    Called as ``store(name, array)``, it stands in for ``ir.Tensor(array, name=name)``.
    """

    def __init__(self, folder: Path, name: str = "quantized.bin") -> None:
        self.folder = Path(folder)
        self.name = name
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = (self.folder / name).open("wb")
        self.bytes = 0

    def __call__(self, name: str, array: np.ndarray) -> ir.TensorProtocol:
        import onnx_ir as ir

        tensor = ir.Tensor(array, name=name)
        offset = self.bytes
        tensor.tofile(self._file)  # what ir.save itself writes for an in-memory tensor, without a bytes copy
        # Written through, so that ir.save's copy_file_range (another file descriptor) sees every byte.
        self._file.flush()
        self.bytes = self._file.tell()
        return ir.ExternalTensor(
            self.name,
            offset,
            self.bytes - offset,
            tensor.dtype,
            shape=ir.Shape(tensor.shape),
            name=name,
            base_dir=str(self.folder),
        )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SpillFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_memory(name: str, array: np.ndarray) -> ir.TensorProtocol:
    """The builder's own way: the tensor stays in memory until the model is saved."""
    import onnx_ir as ir

    return ir.Tensor(array, name=name)

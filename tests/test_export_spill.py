"""Quantized weights written to a scratch file as they are made (``llmflow.export.spill``), not held in memory."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest

from llmflow.export import nbits
from llmflow.export.spill import SpillFile
from llmflow.export_onnx import ExportSettings, run_builder


def test_spilled_tensors_read_back_as_written(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {
        "packed": rng.integers(0, 256, (6, 3, 16), dtype=np.uint8),
        "scales": rng.standard_normal((6, 3)).astype(ml_dtypes.bfloat16),
        "float": rng.standard_normal((5, 7)).astype(np.float32),
    }
    with SpillFile(tmp_path) as spill:
        tensors = {name: spill(name, array) for name, array in arrays.items()}
    assert spill.bytes == sum(array.nbytes for array in arrays.values())
    assert (tmp_path / spill.name).stat().st_size == spill.bytes
    for name, array in arrays.items():
        tensor = tensors[name]
        assert isinstance(tensor, ir.ExternalTensor)
        assert tensor.name == name and tuple(tensor.shape) == array.shape
        assert tensor.dtype == ir.Tensor(array).dtype
        np.testing.assert_array_equal(tensor.numpy(), array)
        tensor.release()


def test_the_export_writes_every_quantized_weight_to_the_scratch_file_and_removes_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    spilled: list[str] = []
    folders: list[Path] = []

    class Recording(SpillFile):
        def __init__(self, folder: Path, name: str = "quantized.bin") -> None:
            super().__init__(folder, name)
            folders.append(self.folder)

        def __call__(self, name: str, array: np.ndarray) -> ir.TensorProtocol:
            spilled.append(name)
            return super().__call__(name, array)

    monkeypatch.setattr(nbits, "SpillFile", Recording)
    out = run_builder(tiny_model_dir, tmp_path / "onnx", ExportSettings(precision="int4", int4_algo="default"))
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    quantized = {name for node in graph.node if node.op_type == "MatMulNBits" for name in node.input[1:]}
    # packed weight, scales and zero points (asymmetric default) of every MatMulNBits, and nothing else
    assert len(quantized) >= 3 * 9
    assert set(spilled) == quantized
    # The scratch folder was inside the output folder, and is gone.
    assert len(folders) == 1 and folders[0].parent == out
    assert not folders[0].exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

"""``reproduce``'s tensor-level comparison of two ONNX exports, on copies of the session's export."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import onnx_ir as ir
import pytest

from llmflow.errors import InputError
from llmflow.reproduce import ReproduceOptions, reproduce, tensor_differences


def _edited_copy(onnx_dir: Path, dst: Path, name: str) -> Path:
    """A copy of ``onnx_dir`` whose initializer ``name`` has its first element nudged by one ULP."""
    shutil.copytree(onnx_dir, dst, ignore=shutil.ignore_patterns("model.onnx*"))
    model = ir.load(onnx_dir / "model.onnx")
    value = model.graph.initializers[name]
    array = value.const_value.numpy().copy()
    array.flat[0] = np.nextafter(array.flat[0], np.float32(np.inf))
    value.const_value = ir.Tensor(array, name=name)
    ir.save(model, dst / "model.onnx", external_data="model.onnx.data")
    return dst


def test_identical_exports_have_no_tensor_differences(onnx_dir: Path, tmp_path: Path):
    assert tensor_differences(onnx_dir, shutil.copytree(onnx_dir, tmp_path / "copy")) == []


def test_one_changed_tensor_is_named_with_how_much_it_differs(onnx_dir: Path, tmp_path: Path):
    edited = _edited_copy(onnx_dir, tmp_path / "edited", "cos_cache")
    [difference] = tensor_differences(onnx_dir, edited)
    assert difference["tensor"] == "cos_cache"
    assert difference["dtype"] == "FLOAT" and len(difference["shape"]) == 2
    assert 1 <= difference["bytes_different"] <= 4  # one float32 is four bytes
    assert 0 < difference["max_abs_difference"] < 1e-6


def test_a_run_without_a_parameter_of_its_step_is_refused_in_one_line():
    from types import SimpleNamespace

    from llmflow.export_onnx import ExportSettings
    from llmflow.options import names
    from llmflow.reproduce import _params

    recorded = {"precision": "int4", "execution_provider": "cpu", "int4_block_size": "32", "int4_accuracy_level": "4"}
    partial = SimpleNamespace(data=SimpleNamespace(params=recorded), info=SimpleNamespace(run_id="r1"))
    with pytest.raises(InputError, match=r"^run r1 has no recorded parameters \['int4_algo', .*it cannot be re-run$"):
        _params(partial, *names(ExportSettings))
    complete = {**recorded, "int4_algo": "rtn", "int4_mixed_precision": "none", "int4_symmetric": "true"}
    complete["int4_clip"] = "none"
    whole = SimpleNamespace(data=SimpleNamespace(params={**complete, "onnx_source": "export"}), info=partial.info)
    assert _params(whole, *names(ExportSettings)) == {**complete, "onnx_source": "export"}


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return list(model_input["prompt"])


@pytest.mark.parametrize("missing", ["llmflow_export_run_id", "llmflow_download_run_id", "llmflow_source_run_id"])
def test_an_onnx_version_without_its_whole_lineage_is_refused_in_one_line(tracking_uri: str, missing: str):
    with mlflow.start_run():
        uri = mlflow.pyfunc.log_model(name="model", python_model=_Echo(), pip_requirements=["mlflow"]).model_uri
    lineage = {
        "llmflow_logged_by_step": "log_pyfunc",
        "llmflow_download_run_id": "d1",
        "llmflow_source_run_id": "s1",
        "llmflow_export_run_id": "e1",
    }
    del lineage[missing]
    mlflow.register_model(uri, "partial", tags=lineage)
    with pytest.raises(InputError, match=r"^version 1 of 'partial' has no lineage tags from this pipeline's register"):
        reproduce(ReproduceOptions(model_uri="models:/partial/1"))

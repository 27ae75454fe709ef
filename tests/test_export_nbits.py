"""The streaming int4 quantization against the builder's own ``to_nbits``: byte-identical files, and its fallback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from onnxruntime_genai.models import builder
from onnxruntime_genai.models.builders.base import Model

from llmflow.export import nbits
from llmflow.export.stamp import package_build_stamp, package_commit
from llmflow.export_onnx import ExportSettings, run_builder
from llmflow.patches.onnxruntime_genai import builder_model_classes
from llmflow.sources.manifest import sha256_file


def stock_export(model_dir: Path, out: Path, extra: list[str]) -> Path:
    """The builder as shipped, but for the build stamp (which otherwise names the Git commit of this checkout)."""
    with tempfile.TemporaryDirectory() as cache, package_build_stamp():
        args = (None, str(model_dir), str(out), "int4", "cpu", cache)
        builder.create_model(*args, **builder.parse_extra_options(*args, extra))
    return out


def digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize(("block", "level"), [(32, 4), (128, 0)])
def test_streaming_export_is_byte_identical_to_the_builder(
    tiny_model_dir: Path, tmp_path: Path, block: int, level: int, monkeypatch: pytest.MonkeyPatch
):
    quantized: list[str] = []
    real = nbits._quantize_node
    monkeypatch.setattr(
        nbits, "_quantize_node", lambda graph, node, *a: quantized.append(node.name) or real(graph, node, *a)
    )
    # The builder's own recipe (round-to-nearest, symmetric, no int8 placements), not the project's default.
    stock_recipe = {"int4_algo": "default", "int4_mixed_precision": "none", "int4_symmetric": True}
    ours = run_builder(
        tiny_model_dir,
        tmp_path / "ours",
        ExportSettings(precision="int4", int4_block_size=block, int4_accuracy_level=level, **stock_recipe),
    )
    theirs = stock_export(tiny_model_dir, tmp_path / "stock", [f"block_size={block}", f"accuracy_level={level}"])
    # 2 layers x (qkv, o, gate_up or gate + up, down) + the LM head went through the streaming path.
    assert len(quantized) >= 9 and any("lm_head" in name for name in quantized)
    assert digests(ours) == digests(theirs)


def test_the_builder_is_restored_after_the_export():
    classes = builder_model_classes()
    stock = [cls.to_nbits for cls in classes]
    with nbits.streaming_quantization():
        assert all(cls.to_nbits is not original for cls, original in zip(classes, stock, strict=True))
    assert [cls.to_nbits for cls in classes] == stock
    assert Model in classes


def test_other_quantization_methods_keep_the_builders_own_pass(tiny_model_dir: Path, tmp_path: Path):
    """``algo_config=rtn`` is outside the streaming path: the output must still equal the stock builder's."""
    extra = ["block_size=32", "accuracy_level=4", "algo_config=rtn"]
    with nbits.streaming_quantization():
        ours = stock_export(tiny_model_dir, tmp_path / "ours", extra)
    theirs = stock_export(tiny_model_dir, tmp_path / "stock", extra)
    assert digests(ours) == digests(theirs)


def test_mixed_precision_streams_byte_identical_to_the_builder(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    """The builder's own int8 placements (LM head, llama.cpp's layers) go through the streaming path unchanged."""
    widths: list[int] = []
    real = nbits._quantize_node
    monkeypatch.setattr(
        nbits, "_quantize_node", lambda graph, node, q, bits, *a: widths.append(bits) or real(graph, node, q, bits, *a)
    )
    settings = ExportSettings(
        precision="int4", int4_algo="default", int4_mixed_precision="last_matmul,mixed_layers", int4_symmetric=True
    )
    ours = run_builder(tiny_model_dir, tmp_path / "ours", settings)
    theirs = stock_export(
        tiny_model_dir,
        tmp_path / "stock",
        ["block_size=32", "accuracy_level=4", "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8"],
    )
    assert 4 in widths and 8 in widths, "both passes streamed"
    assert digests(ours) == digests(theirs)


def quantized_attributes(folder: Path, name: str) -> dict[str, int]:
    """``{node name: attribute}`` of every MatMulNBits node of the export at ``folder``."""
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {
        node.name: next(a.i for a in node.attribute if a.name == name)
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
    }


@pytest.mark.parametrize(("block", "level"), [(16, 1), (128, 4)])
def test_block_size_and_accuracy_level_reach_every_quantized_matmul(
    tiny_model_dir: Path, tmp_path: Path, block: int, level: int
):
    """The builder ignores its documented ``int4_``-prefixed aliases; the keys it reads must be the ones passed."""
    settings = ExportSettings(int4_block_size=block, int4_accuracy_level=level, int4_mixed_precision="last_matmul")
    out = run_builder(tiny_model_dir, tmp_path / "onnx", settings)
    assert set(quantized_attributes(out, "block_size").values()) == {block}
    assert set(quantized_attributes(out, "accuracy_level").values()) == {level}


def test_the_qkv_selector_makes_every_attention_input_projection_int8(tiny_model_dir: Path, tmp_path: Path):
    out = run_builder(tiny_model_dir, tmp_path / "qkv", ExportSettings(int4_mixed_precision="qkv", int4_symmetric=True))
    bits = quantized_attributes(out, "bits")
    qkv = {name: b for name, b in bits.items() if "/attn/qkv_proj/" in name}
    assert qkv and set(qkv.values()) == {8}
    assert {b for name, b in bits.items() if name not in qkv} == {4}


def test_applies_to_only_the_default_path():
    class Fake:
        quantization_algo = "default"
        quant_attrs = {"use_qdq": False, "op_types_to_quantize": ("MatMul",)}
        matmul_attrs = {"weights_prepacked": 0}

    assert nbits.applies_to(Fake())
    Fake.quant_attrs = {"use_qdq": True, "op_types_to_quantize": ("MatMul",)}
    assert not nbits.applies_to(Fake())
    Fake.quant_attrs = {"use_qdq": False, "op_types_to_quantize": ("MatMul", "Gather")}
    assert not nbits.applies_to(Fake())


def test_the_build_stamp_is_the_wheels_commit_not_the_checkouts(onnx_dir: Path):
    import onnx
    import onnxruntime_genai as og

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    assert model.producer_version == f"{og.__version__}+{package_commit()[:7]}"

"""Activation-aware clipping of int4 weights (``int4_clip=activation``): the search, its model of onnxruntime's
quantizer, and an export with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmflow.errors import InputError
from llmflow.export import clip
from llmflow.export.nbits import _block_quantizer
from llmflow.export_onnx import ExportSettings, run_builder
from llmflow.sources.manifest import sha256_file

BLOCK = 32


def ort_dequantized(weight: np.ndarray, symmetric: bool) -> np.ndarray:
    """What onnxruntime's int4 block quantizer (the export's) gives back for ``weight`` ([K, N])."""
    packed, scales, zero_points = _block_quantizer(4, BLOCK, symmetric, 4).qbits_block_quant(weight)
    cols, blocks, _ = packed.shape
    values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(cols, blocks, BLOCK).astype(np.float64)
    if symmetric:
        zero = np.full((cols, blocks), 8.0)
    else:
        zero = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1).reshape(cols, -1)[:, :blocks]
    deq = (values - zero[..., None]) * scales[..., None]
    return deq.reshape(cols, -1).T  # [K, N]


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_search_models_onnxruntimes_own_rounding(symmetric: bool):
    weight = np.random.default_rng(1).standard_normal((4 * BLOCK, 24)).astype(np.float32)
    blocks = weight.astype(np.float64).reshape(4, BLOCK, 24)
    high, low = np.maximum(blocks.max(1, keepdims=True), 0), np.minimum(blocks.min(1, keepdims=True), 0)
    ours = clip._fake_quant(blocks, low, high, symmetric).reshape(4 * BLOCK, 24)
    assert np.allclose(ours, ort_dequantized(weight, symmetric), atol=1e-5)


def output_error(weight: np.ndarray, x: np.ndarray, symmetric: bool) -> float:
    return float(np.square(x @ (ort_dequantized(weight, symmetric) - weight)).sum())


@pytest.mark.parametrize("symmetric", [False, True])
def test_clipping_lowers_the_layers_output_error_on_its_calibration_inputs(symmetric: bool):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((8 * BLOCK, 64)).astype(np.float32)
    weight[rng.integers(0, 8 * BLOCK, 40), rng.integers(0, 64, 40)] *= 6  # a few outliers stretch their blocks
    x = rng.standard_normal((2048, 8 * BLOCK)) * rng.uniform(0.1, 3, 8 * BLOCK)  # channels of unequal weight
    blocks = x.reshape(len(x), -1, BLOCK)
    gram = np.einsum("nbi,nbj->bij", blocks, blocks)
    clipped, mean_ratio = clip.clip_weight(weight, gram, symmetric, BLOCK)
    assert clipped.dtype == weight.dtype and clipped.shape == weight.shape
    assert 0.5 <= mean_ratio < 1.0
    assert np.all(np.abs(clipped) <= np.abs(weight) + 1e-7)  # only shrinks
    assert output_error(clipped, x, symmetric) < 0.9 * output_error(weight, x, symmetric)


def test_large_layers_go_in_column_chunks_with_the_same_result(monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((2 * BLOCK, 50)).astype(np.float32)
    gram = np.stack([np.eye(BLOCK) * (b + 1) for b in range(2)])
    whole = clip.clip_weight(weight, gram, False, BLOCK)
    monkeypatch.setattr(clip, "COLUMN_CHUNK_ELEMENTS", 7 * 2 * BLOCK)
    chunked = clip.clip_weight(weight, gram, False, BLOCK)
    assert np.array_equal(whole[0], chunked[0]) and whole[1] == pytest.approx(chunked[1])


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("/model/layers.3/attn/qkv_proj/MatMul", (3, "attn_in")),
        ("/model/layers.12/attn/o_proj/MatMul", (12, "o_in")),
        ("/model/layers.0/mlp/gate_proj/MatMul", (0, "mlp_in")),
        ("/model/layers.0/mlp/up_proj/MatMul", (0, "mlp_in")),
        ("/model/layers.7/mlp/down_proj/MatMul", (7, "down_in")),
        ("/lm_head/MatMul", (None, "lm_head")),
        ("model.layers.3.self_attn.v_proj", (3, "attn_in")),
        ("model.layers.2.mlp.gate_up_proj", (2, "mlp_in")),
        ("lm_head", (None, "lm_head")),
        ("model.embed_tokens", None),
        ("/model/layers.1/attn/GroupQueryAttention", None),
    ],
)
def test_each_matmul_finds_the_input_it_reads(name: str, key: tuple | None):
    assert clip.input_key(name) == key


def test_clipping_needs_the_default_quantizer():
    with pytest.raises(InputError) as info:
        ExportSettings(int4_clip="activation", int4_algo="k_quant").check()
    assert "int4_clip 'activation' works with int4_algo 'default' only, not 'k_quant'" in str(info.value)
    with pytest.raises(InputError) as info:
        ExportSettings(int4_clip="yes").check()
    assert "'yes'" in str(info.value) and "none" in str(info.value) and "activation" in str(info.value)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def test_an_export_with_clipping_is_reproducible_loads_and_differs_from_plain(tiny_model_dir: Path, tmp_path: Path):
    import onnxruntime_genai as og

    settings = ExportSettings(int4_algo="default", int4_clip="activation")
    assert settings.int4_recipe().label.endswith("+clip-activation")
    first = run_builder(tiny_model_dir, tmp_path / "a", settings)
    second = run_builder(tiny_model_dir, tmp_path / "b", settings)
    plain = run_builder(tiny_model_dir, tmp_path / "plain", ExportSettings(int4_algo="default"))
    assert digests(first) == digests(second)
    assert digests(first)["model.onnx.data"] != digests(plain)["model.onnx.data"]
    model = og.Model(str(first))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([[1, 2, 3]], dtype=np.int32))
    generator.generate_next_token()
    assert generator.get_next_tokens().shape == (1,)


def test_the_block_diagonal_of_a_gram_matrix_is_each_blocks_own():
    x = np.random.default_rng(3).standard_normal((50, 3 * BLOCK))
    gram = x.T @ x
    blocks = clip.block_diagonal(gram, BLOCK)
    assert blocks.shape == (3, BLOCK, BLOCK)
    for b in range(3):
        part = x[:, b * BLOCK : (b + 1) * BLOCK]
        assert np.allclose(blocks[b], part.T @ part)

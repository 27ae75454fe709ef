"""GPTQ int4 (``int4_algo=gptq``, the default): the layer-at-a-time calibration, the algorithm, the packing into
onnxruntime's format, the match of calibrated weights to the builder's MatMuls, and an export with it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from llmflow.demo.families import FAMILIES, build_family
from llmflow.export import gptq, gptq_match
from llmflow.export.calibrate import calibrate_layerwise, linears_by_input
from llmflow.export.nbits import QuantizedBlocks, _block_quantizer
from llmflow.export.recipe import DEFAULT_INT4_RECIPE, Int4Recipe
from llmflow.export_onnx import ExportSettings, run_builder
from llmflow.sources.manifest import sha256_file

BLOCK = 32
TEXT = "The river runs past the old mill, where the miller counts his sacks of grain every evening. " * 12


def rtn_codes(weight: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest codes, scales and zero points of ``weight`` ([N, K]) on the grid ``gptq`` uses."""
    rows, cols = weight.shape
    blocks = torch.from_numpy(weight).reshape(rows, cols // BLOCK, BLOCK)
    scale, zero = gptq._grid(blocks.amax(-1).clamp(min=0), blocks.amin(-1).clamp(max=0), symmetric)
    codes = gptq._codes(blocks, scale[..., None], zero[..., None]).to(torch.uint8).reshape(rows, cols)
    return codes.numpy(), scale.numpy(), zero.to(torch.uint8).numpy()


@pytest.mark.parametrize("symmetric", [False, True])
def test_packing_writes_onnxruntimes_own_bytes(symmetric: bool):
    weight = np.random.default_rng(1).standard_normal((3 * BLOCK, 7)).astype(np.float32)  # [K, N], 3 blocks: odd
    theirs = _block_quantizer(4, BLOCK, symmetric, 4).qbits_block_quant(weight)
    ours = gptq.pack(*rtn_codes(np.ascontiguousarray(weight.T), symmetric), BLOCK)
    assert np.array_equal(ours.packed, theirs[0])
    assert np.array_equal(ours.scales, theirs[1])
    if not symmetric:  # a symmetric model stores no zero points
        assert np.array_equal(ours.zero_points, theirs[2])


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_halves_the_output_error_of_round_to_nearest(symmetric: bool):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 128, generator=generator, dtype=torch.float64)
    x = x @ torch.randn(128, 128, generator=generator, dtype=torch.float64)  # correlated channels, as activations
    weight = torch.randn(64, 128, generator=generator)
    result = gptq.gptq(weight, x.T @ x, symmetric, BLOCK)
    codes, scales, zeros = rtn_codes(weight.numpy(), symmetric)
    rtn = (codes.reshape(64, 4, BLOCK) - zeros[..., None].astype(np.float32)) * scales[..., None]

    def error(q: np.ndarray) -> float:
        return float(((x.numpy() @ (weight.numpy() - q.reshape(64, 128)).T) ** 2).mean())

    assert result.codes.max() <= 15 and result.codes.dtype == np.uint8
    grid = (result.codes.reshape(64, 4, BLOCK) - result.zero_points[..., None].astype(np.float32)) * result.scales[
        ..., None
    ]
    assert np.allclose(grid.reshape(64, 128), result.dequantized.numpy(), atol=1e-6)  # what the file will hold
    assert error(result.dequantized.numpy()) < 0.7 * error(rtn)


def test_a_size_off_the_block_grid_is_refused():
    with pytest.raises(ValueError, match=r"input size \(40\) to be a multiple of the block size \(32\)"):
        gptq.gptq(torch.zeros(4, 40), torch.eye(40, dtype=torch.float64), False, BLOCK)


@pytest.mark.parametrize("family", ["phi3", *FAMILIES])
def test_calibration_one_layer_at_a_time_sees_what_the_whole_model_sees(
    family: str, tiny_model_dir: Path, tmp_path: Path
):
    from transformers import AutoModelForCausalLM

    from llmflow.export.calibrate import _windows

    model_dir = tiny_model_dir if family == "phi3" else build_family(family, tmp_path / family)
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def on_layer(index: int, layer, sums: dict, kinds: dict) -> bool:
        seen.update({(index, kind): gram for kind, (gram, _) in sums.items()})
        return False

    calibrate_layerwise(model_dir, TEXT, on_layer, head=lambda gram, rows: seen.update({(-1, "head"): gram}))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    expected: dict[tuple[int, str], torch.Tensor] = {}

    def hook(key: tuple[int, str]):
        def add(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            expected[key] = expected.get(key, 0) + x.T @ x

        return add

    last = len(model.model.layers) - 1
    model.lm_head.register_forward_hook(hook((-1, "head")))
    modules = dict(model.model.layers[last].named_modules())
    for kind, names in linears_by_input(model.model.layers[last]).items():
        modules[names[0]].register_forward_hook(hook((last, kind)))
    with torch.no_grad():
        for window in _windows(model_dir, TEXT, 512):
            model(input_ids=window, use_cache=False)
    assert set(expected) <= set(seen) and len(expected) >= 4
    for key, gram in expected.items():
        assert torch.allclose(seen[key], gram, rtol=1e-4, atol=1e-6 * float(gram.abs().max())), key


def test_the_layers_made_int8_are_the_builders():
    from onnxruntime_genai.models.builders.base import Model

    class Stub:
        pass

    for layers in range(1, 41):
        stub = Stub()
        stub.num_layers = layers
        Model.make_matmul_mixed_precision(stub, {"mixed_layers": "int8"})
        builder = {int(name.split("/")[2].split(".")[1]) for name in stub.int4_customized_weight_config}
        assert gptq.more_bits_layers(layers) == builder, layers


def test_the_recipe_says_which_inputs_stay_int4():
    assert gptq.int4_inputs(DEFAULT_INT4_RECIPE, 0, 32) == {"o_in", "mlp_in"}  # layer 0: one of llama.cpp's
    assert gptq.int4_inputs(DEFAULT_INT4_RECIPE, 5, 32) == {"o_in", "mlp_in", "down_in"}
    assert gptq.int4_inputs(Int4Recipe(algo="gptq"), 0, 32) == {"attn_in", "o_in", "mlp_in", "down_in"}


def entry(tmp_path: Path, name: str, weight: np.ndarray) -> gptq_match.Entry:
    """A stored result for ``weight`` ([out, in]), with RTN codes standing in for GPTQ's."""
    blocks = gptq.pack(*rtn_codes(weight, False), BLOCK)
    path = tmp_path / name
    path.mkdir()
    for array_name, array in zip(gptq_match.ARRAYS, blocks, strict=True):
        np.save(path / f"{array_name}.npy", array)
    return gptq_match.Entry(name, path, *gptq_match.fingerprint(weight))


def test_a_fused_builder_weight_gets_its_layers_in_order_and_a_stranger_is_rounded(tmp_path: Path):
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((rows, 2 * BLOCK)).astype(np.float32) for rows in (8, 4, 4))
    entries = {(3, "attn_in"): [entry(tmp_path, n, w) for n, w in (("q", q), ("k", k), ("v", v))]}
    weights = gptq_match.GptqWeights(entries, BLOCK)
    fused = np.concatenate([q, k, v]).T.copy()  # the builder's qkv_proj, [K, N]
    got = weights("/model/layers.3/attn/qkv_proj/MatMul", fused)
    assert isinstance(got, QuantizedBlocks)
    assert np.array_equal(got.packed, gptq.pack(*rtn_codes(np.concatenate([q, k, v]), False), BLOCK).packed)
    single = weights("/model/layers.3/attn/k_proj/MatMul", k.T.copy())
    assert isinstance(single, QuantizedBlocks) and single.packed.shape[0] == 4
    half = weights("/model/layers.3/attn/q_proj/MatMul", q[4:].T.copy())  # a split: Phi-3's gate_up_proj in two
    assert isinstance(half, QuantizedBlocks) and np.array_equal(half.packed, got.packed[4:8])
    shuffled = q[:, ::-1].T.copy()  # the same rows with their inputs in another order: not these weights
    assert weights("/model/layers.3/attn/q_proj/MatMul", shuffled) is shuffled
    swapped = np.concatenate([k, q, v]).T.copy()  # the same sizes, another order: not these weights
    assert weights("/model/layers.3/attn/qkv_proj/MatMul", swapped) is swapped
    assert weights("/model/layers.4/attn/qkv_proj/MatMul", fused) is fused
    assert weights.unmatched == [
        "/model/layers.3/attn/q_proj/MatMul",
        "/model/layers.3/attn/qkv_proj/MatMul",
        "/model/layers.4/attn/qkv_proj/MatMul",
    ]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def test_the_default_export_is_gptq_reproducible_and_every_decoder_int4_matmul_is_calibrated(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import onnxruntime_genai as og

    settings = ExportSettings()
    assert settings.int4_recipe() == DEFAULT_INT4_RECIPE and DEFAULT_INT4_RECIPE.algo == "gptq"
    with caplog.at_level(logging.INFO, logger="llmflow.export.builder"):
        first = run_builder(tiny_model_dir, tmp_path / "a", settings)
    # The tiny Phi-3's 2 layers: o_proj and gate_up_proj (the builder's gate_proj and up_proj) int4 in each, and
    # down_proj in layer 1 (layer 0 is one of llama.cpp's sensitive layers).
    assert "gptq: 7 int4 MatMuls from GPTQ, 0 rounded to nearest" in caplog.text
    second = run_builder(tiny_model_dir, tmp_path / "b", settings)
    rtn = run_builder(tiny_model_dir, tmp_path / "rtn", ExportSettings(int4_algo="default"))
    assert digests(first) == digests(second)
    assert digests(first)["model.onnx.data"] != digests(rtn)["model.onnx.data"]
    model = og.Model(str(first))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([[1, 2, 3]], dtype=np.int32))
    generator.generate_next_token()
    assert generator.get_next_tokens().shape == (1,)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_familys_int4_matmuls_come_from_gptq(
    family: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
):
    """The builder fuses and splits each family's projections its own way; every int4 MatMul must still find its
    calibrated rows (the tiny configs have 2 layers: 7 int4 MatMuls, as the tiny Phi-3's)."""
    model_dir = build_family(family, tmp_path / family)
    with caplog.at_level(logging.INFO, logger="llmflow.export.builder"):
        run_builder(model_dir, tmp_path / "onnx", ExportSettings())
    assert "gptq: 7 int4 MatMuls from GPTQ, 0 rounded to nearest" in caplog.text
    assert "longer than the specified maximum sequence length" not in capsys.readouterr().err + caplog.text

"""The rest of the Phi family in shape: Phi-3-mini-128k, Phi-3.5-mini and Phi-4-mini (``llmflow.demo.shapes``).

Each tiny model (LongRoPE; Phi-4-mini also partial rotary 0.75, tied embeddings, a 200k vocabulary) is exported to
fp32 ONNX and its logits compared with transformers' on a prompt shorter than the original context (LongRoPE's short
factors) and one longer (its long factors). Two of them then go through the whole int4 path: export, the pyfunc,
the transformers model, register and evaluate against the reference. This checks shape, not weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from int4_path import MAX_NEW_TOKENS, run_int4_path

from llmflow.demo.shapes import ORIGINAL_CONTEXT, SHAPES, build_shape
from llmflow.errors import InputError

pytestmark = pytest.mark.integration
LOGIT_TOLERANCE = 1e-4
PROMPT_LENGTHS = (20, ORIGINAL_CONTEXT + 36)  # below and past the original context


@pytest.fixture(scope="module")
def shape_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {name: build_shape(name, root / name) for name in SHAPES}


def test_an_unknown_shape_names_the_known_ones(tmp_path: Path):
    with pytest.raises(InputError, match="shape 'phi-5' is not known; expected one of: phi-3-mini-128k, phi-3.5-mini"):
        build_shape("phi-5", tmp_path)


def test_the_configs_have_the_published_traits_in_the_form_transformers_5_saves(shape_dirs: dict[str, Path]):
    configs = {name: json.loads((folder / "config.json").read_text()) for name, folder in shape_dirs.items()}
    for name, config in configs.items():
        rope = config["rope_parameters"]
        assert (rope["rope_type"], "type" in rope) == ("longrope", False), name
        assert config["max_position_embeddings"] == 32 * config["original_max_position_embeddings"]
        assert len(rope["short_factor"]) == len(rope["long_factor"]) == SHAPES[name].rotary_pairs
        assert config["vocab_size"] == SHAPES[name].vocab_size
    phi4 = configs["phi-4-mini"]
    assert (phi4["partial_rotary_factor"], phi4["tie_word_embeddings"], phi4["vocab_size"]) == (0.75, True, 200064)
    assert phi4["num_attention_heads"] > phi4["num_key_value_heads"]


def _logits_pair(model_dir: Path, onnx_dir: Path, length: int) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    ids = list(range(10, 10 + length))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, -1].numpy()
    og_model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=length + 4)
    generator = og.Generator(og_model, params)
    generator.append_tokens(ids)
    return np.asarray(generator.get_output("logits"))[0, -1], expected


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_fp32_export_computes_the_logits_transformers_does(name: str, shape_dirs, tmp_path: Path):
    from llmflow.export_onnx import ExportSettings, run_builder

    onnx_dir = run_builder(shape_dirs[name], tmp_path / "onnx", ExportSettings(precision="fp32"))
    for length in PROMPT_LENGTHS:
        got, expected = _logits_pair(shape_dirs[name], onnx_dir, length)
        assert got.shape == expected.shape == (SHAPES[name].vocab_size,)
        difference = float(np.abs(got - expected).max())
        print(f"\n{name}, {length}-token prompt: max |logit difference| {difference:.2e}")
        assert difference < LOGIT_TOLERANCE, (name, length, difference)


def test_the_stock_builder_fails_on_a_transformers_5_longrope_config(shape_dirs, tmp_path: Path):
    """The bug ``llmflow.patches.onnxruntime_genai.longrope_type_key`` works around; if this fails, the builder
    fixed it."""
    from onnxruntime_genai.models import builder

    args = (None, str(shape_dirs["phi-3.5-mini"]), str(tmp_path / "out"), "fp32", "cpu", str(tmp_path / "cache"))
    with pytest.raises(KeyError, match="type"):
        builder.create_model(*args, **builder.parse_extra_options(*args, []))


@pytest.mark.parametrize("name", ["phi-3.5-mini", "phi-4-mini"])
def test_the_int4_model_goes_through_the_pyfunc_and_evaluate(name: str, shape_dirs, tracking_uri, tmp_path: Path):
    path = run_int4_path(shape_dirs[name], name, tmp_path)
    assert path.answer["choices"][0]["message"]["role"] == "assistant"
    assert path.answer["usage"]["completion_tokens"] <= MAX_NEW_TOKENS

"""The chat-model families besides Phi in shape: Llama 3, Qwen2.5, Qwen3, Mistral, Gemma 2 and 3 (``demo.families``).

Each tiny model is exported to fp32 ONNX and its logits compared with transformers' after a 20-token prompt and a
48-token one (three sliding windows), and after each of a few tokens decoded one by one from the KV cache. The
family's distinguishing config values are first shown to move transformers' logits, so the comparison would catch a
builder that ignored them. Every family then goes through the whole int4 path: export, the pyfunc, the transformers
model, register and evaluate against the reference. This checks shape, not weights.

Gemma 3 goes through ``llmflow.patches.onnxruntime_genai.gemma3_rope_per_layer_type``: the 0.18 builder reads
``rope_parameters["rope_type"]``, and transformers 5 keeps Gemma 3's RoPE per layer type
(``{"full_attention": {...}, "sliding_attention": {...}}``, also for a Hub config written in the older form), so the
stock builder fails with ``KeyError: 'rope_type'``. A test asserts that failure on both forms, so that the day the
builder reads them the workaround can go.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from int4_path import MAX_NEW_TOKENS, run_int4_path

from llmflow.demo.families import FAMILIES, SLIDING_WINDOW, build_family
from llmflow.errors import InputError

pytestmark = pytest.mark.integration
LOGIT_TOLERANCE = 1e-4  # as tests/test_family_shapes.py
PROMPT_LENGTHS = (20, 3 * SLIDING_WINDOW)
DECODE_STEPS = 4
LIVE_TRAIT_MARGIN = 10  # a trait moves transformers' logits by at least this many times the tolerance


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name) for name in FAMILIES}


def _config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text())


def test_an_unknown_family_names_the_known_ones(tmp_path: Path):
    with pytest.raises(InputError, match="family 'falcon' is not known; expected one of: llama-3, qwen2.5, qwen3"):
        build_family("falcon", tmp_path)


def test_the_builder_lists_every_family(family_dirs: dict[str, Path]):
    from llmflow.export.architectures import check_architecture

    for name, folder in family_dirs.items():
        assert check_architecture(_config(folder), name) == FAMILIES[name].architecture


def test_the_configs_and_weights_keep_the_published_traits(family_dirs: dict[str, Path]):
    from safetensors.numpy import load_file

    for name, folder in family_dirs.items():
        family, config = FAMILIES[name], _config(folder)
        for key, value in family.traits.items():
            assert config[key] == value, (name, key)
        assert config["tie_word_embeddings"] == family.tie_word_embeddings, name
        assert config["num_attention_heads"] > config["num_key_value_heads"] == family.num_key_value_heads, name
        weights = load_file(folder / "model.safetensors")
        assert not weights["model.embed_tokens.weight"][448:].any(), name  # past the demo tokenizer's 448 ids
        assert ("lm_head.weight" in weights) != family.tie_word_embeddings, name
    qwen3 = _config(family_dirs["qwen3"])
    assert qwen3["num_attention_heads"] * qwen3["head_dim"] == 2 * qwen3["hidden_size"]
    qwen25 = load_file(family_dirs["qwen2.5"] / "model.safetensors")
    assert all(qwen25[f"model.layers.0.self_attn.{p}_proj.bias"].any() for p in "qkv")  # the builder drops zero biases
    for name in ("qwen3", "gemma-3"):
        assert "model.layers.0.self_attn.q_norm.weight" in load_file(family_dirs[name] / "model.safetensors"), name


def _last_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_distinguishing_trait_moves_the_logits(name: str, family_dirs: dict[str, Path]):
    """Set to a neutral value, each live trait changes transformers' logits well past the tolerance."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = list(range(10, 10 + PROMPT_LENGTHS[-1]))
    model = AutoModelForCausalLM.from_pretrained(family_dirs[name], dtype=torch.float32).eval()
    expected = _last_logits(model, ids)[-1]
    assert FAMILIES[name].live_traits, name
    for key, neutral in FAMILIES[name].live_traits.items():
        config = AutoConfig.from_pretrained(family_dirs[name])
        setattr(config, key, copy.deepcopy(neutral))
        other = AutoModelForCausalLM.from_config(config).eval()
        other.load_state_dict(model.state_dict())
        moved = float(np.abs(_last_logits(other, ids)[-1] - expected).max())
        print(f"\n{name}: {key} -> {neutral}: max |logit change| {moved:.2e}")
        assert moved > LIVE_TRAIT_MARGIN * LOGIT_TOLERANCE, (name, key, moved)


def _logit_differences(model_dir: Path, onnx_dir: Path, length: int) -> list[float]:
    """Max |ONNX - transformers| of the last logits after a ``length``-token prompt, then after each decoded token."""
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    ids = list(range(10, 10 + length + DECODE_STEPS))
    expected = _last_logits(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), ids)
    og_model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=len(ids) + 4)
    generator = og.Generator(og_model, params)
    generator.append_tokens(ids[:length])
    differences = []
    for position in range(length - 1, len(ids)):
        if position >= length:
            generator.append_tokens([ids[position]])
        got = np.asarray(generator.get_output("logits"))[0, -1]
        assert got.shape == expected[position].shape
        differences.append(float(np.abs(got - expected[position]).max()))
    return differences


def _assert_same_logits(name: str, model_dir: Path, onnx_dir: Path) -> None:
    for length in PROMPT_LENGTHS:
        differences = _logit_differences(model_dir, onnx_dir, length)
        print(f"\n{name}, {length} tokens, then {DECODE_STEPS} decoded: max |logit difference| {max(differences):.2e}")
        assert len(differences) == DECODE_STEPS + 1 and max(differences) < LOGIT_TOLERANCE, (name, length, differences)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_fp32_export_computes_the_logits_transformers_does(name: str, family_dirs, tmp_path: Path):
    from llmflow.export_onnx import ExportSettings, run_builder

    onnx_dir = run_builder(family_dirs[name], tmp_path / "onnx", ExportSettings(precision="fp32"))
    _assert_same_logits(name, family_dirs[name], onnx_dir)


def _as_published(model_dir: Path, out_dir: Path) -> Path:
    """A copy of the tiny Gemma 3 with its config in the published form (gemma-3-1b-it's keys), not transformers 5's."""
    import shutil

    shutil.copytree(model_dir, out_dir)
    config = _config(out_dir)
    rope = config.pop("rope_parameters")
    config.pop("layer_types")
    config |= {
        "rope_theta": rope["full_attention"]["rope_theta"],
        "rope_local_base_freq": rope["sliding_attention"]["rope_theta"],
        "rope_scaling": None,
        "sliding_window_pattern": 2,
    }
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


@pytest.mark.parametrize("form", ["transformers 5", "published"])
def test_the_stock_builder_cannot_read_gemma3_rope_parameters(form: str, family_dirs, tmp_path: Path):
    """The bug ``llmflow.patches.onnxruntime_genai.gemma3_rope_per_layer_type`` works around; if this fails, the
    builder fixed it."""
    from onnxruntime_genai.models import builder

    model_dir = family_dirs["gemma-3"]
    if form == "published":
        model_dir = _as_published(model_dir, tmp_path / "published")
        assert "rope_parameters" not in _config(model_dir)
    args = (None, str(model_dir), str(tmp_path / "out"), "fp32", "cpu", str(tmp_path / "cache"))
    with pytest.raises(KeyError, match="rope_type"):
        builder.create_model(*args, **builder.parse_extra_options(*args, []))


def test_without_the_workaround_the_export_names_the_missing_key(
    family_dirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A KeyError from the builder is a one-line ``InputError`` that names the key, not a traceback."""
    from llmflow.export import builder as export_builder
    from llmflow.export_onnx import ExportSettings, run_builder

    monkeypatch.setattr(export_builder, "gemma3_rope_per_layer_type", nullcontext)
    with pytest.raises(InputError) as info:
        run_builder(family_dirs["gemma-3"], tmp_path / "onnx", ExportSettings(precision="fp32"))
    assert str(info.value) == (
        f"the onnxruntime-genai model builder cannot export '{family_dirs['gemma-3']}' as fp32/cpu: "
        "missing config key 'rope_type'"
    )
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_int4_model_goes_through_the_pyfunc_and_evaluate(name: str, family_dirs, tracking_uri, tmp_path: Path):
    """Export int4, log the pyfunc and the transformers reference, ask the pyfunc, register and evaluate."""
    from llmflow.tracking.names import TAG_DECISION

    path = run_int4_path(family_dirs[name], name, tmp_path)
    message = path.answer["choices"][0]["message"]
    # Random weights answer in anything, blank lines included; what counts is that tokens came back decoded.
    assert message["role"] == "assistant" and message["content"], path.answer
    assert 1 <= path.answer["usage"]["completion_tokens"] <= MAX_NEW_TOKENS
    assert path.evaluation.data.tags[TAG_DECISION] == ("promoted" if path.promoted else "rejected")

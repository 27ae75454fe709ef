"""Tiny random models in the shapes of the rest of the Phi family that run on ``Phi3ForCausalLM``.

Phi-3-mini-128k, Phi-3.5-mini and Phi-4-mini are the same class as Phi-3-mini-4k, with what sets them apart:

| model (published config) | RoPE | context / original | rotary | embeddings | vocabulary | heads / kv heads |
|---|---|---|---|---|---|---|
| Phi-3-mini-128k-instruct | LongRoPE | 131072 / 4096 | full | separate | 32064 | 32 / 32 |
| Phi-3.5-mini-instruct | LongRoPE | 131072 / 4096 | full | separate | 32064 | 32 / 32 |
| Phi-4-mini-instruct | LongRoPE | 131072 / 4096 | partial, 0.75 | tied | 200064 | 24 / 8 |

A tiny model keeps each of those traits at 2 layers: the same context ratio, 32, so the same LongRoPE magnitude
scaling; the vocabulary size; partial rotary; tied embeddings; grouped-query attention (2:1, where Phi-4-mini has
3:1). The head size is 64: the onnxruntime-genai attention kernel needs rotary dim / 2 to be a multiple of 8, which a
head size of 16 breaks under partial rotary. The LongRoPE factors are made up, one per rotary pair, short near 1
and long rising. The weights are random; the tokenizer is the demo's (``llmflow.demo.tiny``), and the embedding and
LM-head rows past it are zero, so greedy decoding only emits ids the tokenizer can decode. The config is saved by
transformers 5 (``rope_parameters`` with ``rope_type`` only), the form that trips the 0.18 builder's LongRoPE path
(see ``llmflow.export.builder``).
This checks shape, not weights: the real models' weights are not read here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmflow.demo.tiny import known, qa_tokenizer, save_chat_model

logger = logging.getLogger(__name__)

HEAD_SIZE = 64
ORIGINAL_CONTEXT = 64
CONTEXT_RATIO = 32  # 131072 / 4096, as published


@dataclass(frozen=True)
class Shape:
    """What a family member's tiny model keeps of its published config."""

    name: str
    hub_id: str
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    partial_rotary_factor: float = 1.0
    tie_word_embeddings: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rotary_pairs(self) -> int:
        return int(HEAD_SIZE * self.partial_rotary_factor) // 2


SHAPES = {
    shape.name: shape
    for shape in (
        Shape("phi-3-mini-128k", "microsoft/Phi-3-mini-128k-instruct", 32064, 4, 4),
        Shape("phi-3.5-mini", "microsoft/Phi-3.5-mini-instruct", 32064, 4, 4),
        Shape("phi-4-mini", "microsoft/Phi-4-mini-instruct", 200064, 2, 1, 0.75, tie_word_embeddings=True),
    )
}


def build_shape(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build and save the tiny model of family member ``name`` (a key of ``SHAPES``) in ``out_dir``; return it."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    shape = known("shape", name, SHAPES)
    torch.manual_seed(seed)
    tokenizer = qa_tokenizer()
    pairs_count = shape.rotary_pairs
    config = Phi3Config(
        vocab_size=shape.vocab_size,
        hidden_size=HEAD_SIZE * shape.num_attention_heads,
        intermediate_size=2 * HEAD_SIZE * shape.num_attention_heads,
        num_hidden_layers=2,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        partial_rotary_factor=shape.partial_rotary_factor,
        tie_word_embeddings=shape.tie_word_embeddings,
        max_position_embeddings=ORIGINAL_CONTEXT * CONTEXT_RATIO,
        original_max_position_embeddings=ORIGINAL_CONTEXT,
        rope_scaling={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.01 * i for i in range(pairs_count)],
            "long_factor": [1.0 + 0.5 * i for i in range(pairs_count)],
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")],
        pad_token_id=tokenizer.pad_token_id,
        **shape.extra,
    )
    model = Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight[len(tokenizer) :] = 0.0
        model.get_input_embeddings().weight[len(tokenizer) :] = 0.0
    out_dir = save_chat_model(model, tokenizer, out_dir)
    logger.info("tiny %s shape (%s) saved to %s", name, shape.hub_id, out_dir)
    return out_dir


# Phi-3-mini-4k-instruct's own tokenizer files (from ../shared/phi3-mini-4k-instruct/, see bench/scale/model.py).
PHI3_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)


def build_with_phi3_tokenizer(shared: Path, out_dir: Path, seed: int = 0) -> Path:
    """A tiny random model with Phi-3-mini-4k-instruct's real config (2 layers, width 256) and real tokenizer.

    ``shared`` holds the published ``config.json``, tokenizer files and ``generation_config.json`` (eos ids 32000,
    32001 and 32007); they are copied next to the weights, as a Hub snapshot has them.
    """
    import shutil

    import torch
    from transformers import AutoConfig, Phi3ForCausalLM

    config = AutoConfig.from_pretrained(shared)
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 256, 512, 2
    config.num_attention_heads = config.num_key_value_heads = 256 // HEAD_SIZE
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    for name in PHI3_TOKENIZER_FILES:
        shutil.copyfile(Path(shared) / name, out_dir / name)
    return out_dir

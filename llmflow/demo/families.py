"""Tiny random models of the chat-model families users run besides Phi: Llama 3, Qwen2.5, Qwen3, Mistral, Gemma 2 and 3.

Each keeps what sets its family apart in its published config:

| published config | class | heads / kv | RoPE theta | also | tied |
|---|---|---|---|---|---|
| Llama-3.2-1B-Instruct | LlamaForCausalLM | 32 / 8 | 500000 | llama3 RoPE scaling: factor 32, low 1, high 4 | yes |
| Qwen2.5-0.5B-Instruct | Qwen2ForCausalLM | 14 / 2 | 1000000 | q/k/v biases | yes |
| Qwen3-0.6B | Qwen3ForCausalLM | 16 / 8 | 1000000 | q/k RMSNorm; head_dim 128, heads x head_dim = 2 x hidden | yes |
| Mistral-7B-Instruct-v0.3 | MistralForCausalLM | 32 / 8 | 1000000 | sliding_window null | no |
| gemma-2-2b-it | Gemma2ForCausalLM | 8 / 4 | 10000 | see below | yes |
| gemma-3-1b-it | Gemma3ForCausalLM | 4 / 1 | 1000000, local 10000 | see below | yes |

Gemma 2: attention soft-cap 50, logit soft-cap 30, sliding window 4096 on every other layer, query_pre_attn_scalar,
(1 + w) RMSNorm (four per layer), embeddings times sqrt(hidden size), GELU-tanh. Gemma 3: q/k RMSNorm, sliding
window 512 on 5 layers of 6 with their own RoPE theta, (1 + w) RMSNorm, embeddings times sqrt(hidden size), GELU-tanh.

A tiny model has 2 layers, 4 heads of size 64 (the onnxruntime-genai attention kernel's rotary needs that size) and
a hidden size of 256 (Qwen3: 128, so that heads x head_dim is twice the hidden size, as published). It keeps the
kv-head ratio (Qwen2.5's 7:1 becomes 4:1), the vocabulary size, the tying and the RoPE settings above, with a
context of 1024 (Llama 3: an original context of 64, the published ratio of 16). What changes, and why:
- Gemma 2's soft-caps are 0.5 on attention and 3 on the logits: the published 50 and 30 move a random tiny model's
  logits by 1e-6 and 3e-4, too little for a comparison at 1e-4 to notice a builder that dropped them.
- Gemma 2's ``query_pre_attn_scalar`` is 72, not the head size, as gemma-2-27b's 144 is not its 128 (2b's equals it,
  so there it would not show).
- The sliding windows are 16 tokens and Gemma 3 alternates 1 local to 1 global, so a 2-layer model has both.
``Family.live_traits`` lists, per family, config values that change transformers' logits when set to a neutral value:
the tests check that each does, so an export that matches transformers' logits has implemented them.

The weights are random; every one-dimensional weight (norms, biases) gets noise on top of its initial value, because
the builder drops an all-zero bias and a norm of ones hides whether it applied it. The tokenizer is the demo's
(``llmflow.demo.tiny``, with Phi-3's chat template and special tokens, which is all the pipeline needs), and the
embedding and LM-head rows past it are zero, so greedy decoding only emits ids the tokenizer can decode.
This checks shape, not weights: the real models' weights are not read here.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmflow.demo.tiny import known, qa_tokenizer, save_chat_model

logger = logging.getLogger(__name__)

HEAD_SIZE = 64
NUM_HEADS = 4
HIDDEN_SIZE = HEAD_SIZE * NUM_HEADS
CONTEXT = 1024
SLIDING_WINDOW = 16
NORM_AND_BIAS_NOISE = 0.1


def _rope(theta: float, rope_type: str = "default", **scaling: float) -> dict[str, Any]:
    return {"rope_type": rope_type, "rope_theta": theta, **scaling}


# Llama-3.2's scaling; its original context, 8192, becomes 64 as the context becomes 1024 (the ratio of 16 kept).
LLAMA3_ROPE = _rope(
    500000.0, "llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
)


@dataclass(frozen=True)
class Family:
    """What a family's tiny model keeps of its published config (``traits``: config values beyond the sizes)."""

    name: str
    hub_id: str
    architecture: str
    model_type: str
    vocab_size: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    traits: dict[str, Any] = field(default_factory=dict)
    # config key -> a neutral value for it; each must change transformers' logits (see the module docstring)
    live_traits: dict[str, Any] = field(default_factory=dict)
    hidden_size: int = HIDDEN_SIZE


FAMILIES = {
    family.name: family
    for family in (
        Family(
            "llama-3",
            "meta-llama/Llama-3.2-1B-Instruct",
            "LlamaForCausalLM",
            "llama",
            128256,
            1,
            True,
            traits={"rope_parameters": LLAMA3_ROPE},
            live_traits={"rope_parameters": _rope(500000.0)},
        ),
        Family(
            "qwen2.5",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "Qwen2ForCausalLM",
            "qwen2",
            151936,
            1,
            True,
            traits={"rope_parameters": _rope(1000000.0)},
            live_traits={"rope_parameters": _rope(10000.0)},
        ),
        Family(
            "qwen3",
            "Qwen/Qwen3-0.6B",
            "Qwen3ForCausalLM",
            "qwen3",
            151936,
            2,
            True,
            traits={"head_dim": HEAD_SIZE, "rope_parameters": _rope(1000000.0)},
            live_traits={"rope_parameters": _rope(10000.0)},
            hidden_size=HIDDEN_SIZE // 2,
        ),
        Family(
            "mistral",
            "mistralai/Mistral-7B-Instruct-v0.3",
            "MistralForCausalLM",
            "mistral",
            32768,
            1,
            False,
            traits={"sliding_window": None, "rope_parameters": _rope(1000000.0)},
            live_traits={"sliding_window": SLIDING_WINDOW, "rope_parameters": _rope(10000.0)},
        ),
        Family(
            "gemma-2",
            "google/gemma-2-2b-it",
            "Gemma2ForCausalLM",
            "gemma2",
            256000,
            2,
            True,
            traits={
                "head_dim": HEAD_SIZE,
                "query_pre_attn_scalar": 72,
                "attn_logit_softcapping": 0.5,
                "final_logit_softcapping": 3.0,
                "sliding_window": SLIDING_WINDOW,
                "layer_types": ["sliding_attention", "full_attention"],
                "hidden_activation": "gelu_pytorch_tanh",
                "rope_parameters": _rope(10000.0),
            },
            live_traits={
                "query_pre_attn_scalar": HEAD_SIZE,
                "attn_logit_softcapping": None,
                "final_logit_softcapping": None,
                "sliding_window": CONTEXT,
            },
        ),
        Family(
            "gemma-3",
            "google/gemma-3-1b-it",
            "Gemma3ForCausalLM",
            "gemma3_text",
            262144,
            1,
            True,
            traits={
                "head_dim": HEAD_SIZE,
                "query_pre_attn_scalar": HEAD_SIZE,
                "sliding_window": SLIDING_WINDOW,
                "layer_types": ["sliding_attention", "full_attention"],
                "hidden_activation": "gelu_pytorch_tanh",
                "rope_parameters": {"full_attention": _rope(1000000.0), "sliding_attention": _rope(10000.0)},
            },
            live_traits={
                "sliding_window": CONTEXT,
                "rope_parameters": {"full_attention": _rope(1000000.0), "sliding_attention": _rope(1000000.0)},
            },
        ),
    )
}


def build_family(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Build and save the tiny model of family ``name`` (a key of ``FAMILIES``) in ``out_dir``; return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family = known("family", name, FAMILIES)
    torch.manual_seed(seed)
    tokenizer = qa_tokenizer()
    config = AutoConfig.for_model(
        family.model_type,
        vocab_size=family.vocab_size,
        hidden_size=family.hidden_size,
        intermediate_size=2 * family.hidden_size,
        num_hidden_layers=2,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=family.num_key_value_heads,
        tie_word_embeddings=family.tie_word_embeddings,
        max_position_embeddings=CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")],
        pad_token_id=tokenizer.pad_token_id,
        **copy.deepcopy(family.traits),
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(NORM_AND_BIAS_NOISE * torch.randn_like(parameter))
        model.get_output_embeddings().weight[len(tokenizer) :] = 0.0
        model.get_input_embeddings().weight[len(tokenizer) :] = 0.0
    out_dir = save_chat_model(model, tokenizer, out_dir)
    logger.info("tiny %s (%s) saved to %s", name, family.hub_id, out_dir)
    return out_dir

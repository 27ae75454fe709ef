"""A function-preserving copy of a Llama-family model whose weights no longer sit on any quantization grid.

SmolLM2-135M-Instruct reaches this project as a Q4_1 GGUF: its linear weights lie exactly on an asymmetric
block-32 4-bit grid, so an asymmetric block-32 recipe gives them back losslessly and would look far better on it
than on a model trained in bf16. A recipe is therefore also judged on this copy, which computes the same function
with other weights:

1. **Fold the RMSNorm weights** into the linear layers that read the normalised stream: q/k/v take
   ``input_layernorm``, gate/up take ``post_attention_layernorm``, the LM head takes the final norm; the norms
   become 1. The LM head is untied from the embedding to take the final norm.
2. **Rotate the residual stream** by a random orthogonal ``Q`` (seeded): the embedding becomes ``E Q``, every layer
   that reads the stream ``W Q``, every layer that writes it (o_proj, down_proj) ``Q^T W``. RMSNorm with unit
   weight is rotation invariant, so the logits are the same up to float rounding (QuaRot's construction).

``python -m bench.rotated MODEL OUT`` writes the copy; ``tests/test_real_model.py`` checks that its logits are the
original's.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SEED = 20261204
READS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP_READS = ("mlp.gate_proj", "mlp.up_proj")
WRITES = ("self_attn.o_proj", "mlp.down_proj")
COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def random_orthogonal(size: int, seed: int = SEED):  # noqa: ANN201 - a torch tensor
    import torch

    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed


def rotate_model(model_dir: Path, out: Path, seed: int = SEED) -> Path:
    """Write the folded, untied and rotated copy of the Llama-family model at ``model_dir`` to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"model_type '{config.model_type}' is not handled; expected llama, mistral or qwen2")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.to(torch.float64) for k, v in model.state_dict().items()}
    q = random_orthogonal(config.hidden_size, seed)
    out_state: dict[str, torch.Tensor] = {}
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for names, norm in ((READS, "input_layernorm"), (MLP_READS, "post_attention_layernorm")):
            g = state[f"{prefix}{norm}.weight"]
            for name in names:
                out_state[f"{prefix}{name}.weight"] = (state[f"{prefix}{name}.weight"] * g) @ q
            out_state[f"{prefix}{norm}.weight"] = torch.ones_like(g)
        for name in WRITES:
            out_state[f"{prefix}{name}.weight"] = q.T @ state[f"{prefix}{name}.weight"]
        for key, value in state.items():  # biases (Qwen2's q/k/v) are untouched: they add after the matmul
            if key.startswith(prefix) and key not in out_state:
                out_state[key] = value
    embedding = state["model.embed_tokens.weight"]
    head = state.get("lm_head.weight", embedding)
    out_state["model.embed_tokens.weight"] = embedding @ q
    out_state["lm_head.weight"] = (head * state["model.norm.weight"]) @ q
    out_state["model.norm.weight"] = torch.ones_like(state["model.norm.weight"])
    config.tie_word_embeddings = False
    rotated = type(model)(config)
    rotated.load_state_dict({k: v.to(torch.float32) for k, v in out_state.items()}, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    rotated.save_pretrained(out)
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a folded and rotated, function-preserving copy of a model.")
    parser.add_argument("model", type=Path, help="Hugging Face folder of a Llama-family model.")
    parser.add_argument("out", type=Path, help="Folder to write the copy to.")
    parser.add_argument("--seed", type=int, default=SEED, help="Seed of the random rotation.")
    args = parser.parse_args()
    rotate_model(args.model, args.out, args.seed)


if __name__ == "__main__":
    main()

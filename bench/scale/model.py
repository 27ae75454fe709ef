"""A model of Phi-3-mini's real shape: random bf16 weights, the real config and tokenizer from ``../shared/``.

``../shared/phi3-mini-4k-instruct/`` (next to the project root) holds Phi-3-mini-4k-instruct's config.json,
tokenizer and generation config, without weights. The weights here are random (normal, std 0.02) and the LM-head
rows of the three eos ids are scaled down, so greedy decoding runs to its token budget: a speed figure then always
covers the same number of tokens. ``num_layers`` makes a smaller model of the same width (7 layers: about 1 B).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError

logger = logging.getLogger(__name__)

# Next to the project folder by default; LLMFLOW_PHI3_SHAPE_DIR names another place (a clone elsewhere).
SHARED_PHI3_ENV = "LLMFLOW_PHI3_SHAPE_DIR"
SHARED_PHI3 = Path(os.environ.get(SHARED_PHI3_ENV) or PROJECT_ROOT.parent / "shared" / "phi3-mini-4k-instruct")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)
EOS_ROW_SCALE = 1e-3


@dataclass(frozen=True)
class RealShapeModel:
    path: Path
    parameters: int
    num_layers: int
    seconds: float


def require_shared(folder: Path = SHARED_PHI3) -> Path:
    """``folder`` when it holds Phi-3-mini's config and tokenizer; else an ``InputError`` that says what is missing."""
    missing = [
        name for name in ("config.json", "tokenizer.json", "tokenizer_config.json") if not (folder / name).is_file()
    ]
    if missing:
        raise InputError(
            f"'{folder}' is missing {', '.join(missing)}; the scale benchmark needs Phi-3-mini-4k-instruct's "
            f"config.json and tokenizer files there (no weights): next to the project folder, or set {SHARED_PHI3_ENV}"
        )
    return folder


def build_real_shape(
    out_dir: Path, shared: Path = SHARED_PHI3, num_layers: int | None = None, seed: int = 0
) -> RealShapeModel:
    """Build and save (bf16 safetensors) a random Phi-3-mini of the real shape in ``out_dir``; reuse a finished one."""
    import torch
    from transformers import AutoConfig, Phi3ForCausalLM

    shared = require_shared(shared)
    out_dir = Path(out_dir)
    stamp = out_dir / "scale_model.json"
    if stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("num_layers") == num_layers and info.get("seed") == seed:
            logger.info("reusing the model in %s", out_dir)
            return RealShapeModel(out_dir, info["parameters"], info["layers"], 0.0)
    started = time.perf_counter()
    config = AutoConfig.from_pretrained(shared)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
        eos = json.loads((shared / "generation_config.json").read_text())["eos_token_id"]
        model.lm_head.weight[eos] *= EOS_ROW_SCALE
    model.eval()
    parameters = sum(p.numel() for p in model.parameters())
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    del model
    for name in TOKENIZER_FILES:
        shutil.copyfile(shared / name, out_dir / name)
    seconds = time.perf_counter() - started
    stamp.write_text(
        json.dumps(
            {"num_layers": num_layers, "layers": config.num_hidden_layers, "seed": seed, "parameters": parameters}
        )
    )
    logger.info("random Phi-3-mini shape, %.2f B parameters, saved to %s in %.0f s", parameters / 1e9, out_dir, seconds)
    return RealShapeModel(out_dir, parameters, config.num_hidden_layers, seconds)

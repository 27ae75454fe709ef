"""llama.cpp's own converter on the benchmark's model: ``python bench/gguf_convert.py LLAMA_CPP MODEL OUT.gguf``.

Runs ``convert_hf_to_gguf.py`` from the llama.cpp tree that the ``llama-cpp-python`` sdist vendors (``LLAMA_CPP``),
with the gguf package of that same tree, and writes a float32 GGUF. Run as a plain file, in a process of its own:
it puts that tree on ``sys.path``.

One choice differs from a plain ``convert_hf_to_gguf.py MODEL`` run, and it only concerns the vocabulary:
the benchmark's model has the tiny model's byte-level BPE tokenizer (``tokenizer.json``: 448 ids, GPT-2's
byte-level pre-tokenizer, no ``tokenizer.model``), while the converter's Phi-3 class reads a SentencePiece
``tokenizer.model``. The same class already carries the other branch: for a Phi-3-architecture model with a GPT-2
style BPE tokenizer (Phi-4) it writes the vocabulary with ``_set_vocab_gpt2``. Here that branch is taken, and the
pre-tokenizer name, which the converter finds by hashing the ids of a test string against known Hub models (ours
is not one), is given as ``gpt-2``: the regex of GPT-2's byte-level pre-tokenizer, which is what
``tokenizer.json`` says it uses (checked below; anything else is refused). So the GGUF's vocabulary is the model's
own: the same 448 tokens at the same ids, and ``[PAD<i>]`` (type UNUSED) for ids 448..vocab_size-1, which the model
has rows for but no tokenizer entry, exactly as the converter pads any vocabulary shorter than the embedding table.
Every weight goes through the converter unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PRE_TOKENIZER = "gpt-2"


def check_gpt2_pre_tokenizer(tokenizer_json: dict[str, Any]) -> None:
    """Refuse a ``tokenizer.json`` whose pre-tokenizer is not GPT-2's byte-level one (the ``gpt-2`` pre type)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    wanted = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    found = {key: pre.get(key) for key in wanted}
    if found != wanted:
        raise ValueError(f"pre_tokenizer {found} is not GPT-2's byte-level one; expected {wanted}")
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise ValueError(f"tokenizer model {tokenizer_json.get('model', {}).get('type')!r} is not BPE")


def convert(llama_cpp: Path, model_dir: Path, out: Path) -> None:
    check_gpt2_pre_tokenizer(json.loads((model_dir / "tokenizer.json").read_text()))
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf
    from conversion.phi import Phi3MiniModel

    Phi3MiniModel.set_vocab = Phi3MiniModel._set_vocab_gpt2
    Phi3MiniModel.get_vocab_base_pre = lambda self, tokenizer: PRE_TOKENIZER
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", "f32"]
    convert_hf_to_gguf.main()


def convert_llama(llama_cpp: Path, model_dir: Path, out: Path) -> None:
    """A Llama-architecture model with a byte-level BPE ``tokenizer.json`` (SmolLM2): the converter's own BPE path.

    The converter's Llama class tries SentencePiece first and reaches its BPE path (``_set_vocab_gpt2``) only on a
    FileNotFoundError; without the sentencepiece package it fails with ModuleNotFoundError instead, so the BPE path
    is taken directly. The weights go through unchanged.
    """
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf
    from conversion.llama import LlamaModel

    LlamaModel.set_vocab = LlamaModel._set_vocab_gpt2
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", "f32"]
    convert_hf_to_gguf.main()


def convert_phi3_llama_hf(llama_cpp: Path, model_dir: Path, out: Path) -> None:
    """A Phi-3 model whose vocabulary is Llama's SentencePiece BPE in ``tokenizer.json`` alone (Phi-3-mini's real
    tokenizer, as ``../shared/phi3-mini-4k-instruct/`` holds it: byte fallback, no ``tokenizer.model``).

    The converter's Phi-3 class reads ``tokenizer.model`` with sentencepiece. The same vocabulary is in
    ``tokenizer.json``, which the gguf package reads with ``LlamaHfVocab`` (made for Llama models saved without
    ``tokenizer.model``; what the converter's ``_set_vocab_llama_hf`` uses): a ``llama`` tokenizer with the same ids,
    the chat template and special ids from ``tokenizer_config.json``. Its 32,011 tokens are padded with
    ``[PAD<i>]`` (type UNUSED) to the embedding table's 32,064 rows, as the converter's Phi-3 class pads its
    SentencePiece vocabulary. The weights go through unchanged.
    """
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import convert_hf_to_gguf
    import gguf
    from conversion.phi import Phi3MiniModel

    def set_vocab(self: Any) -> None:
        entries = list(gguf.LlamaHfVocab(self.dir_model).all_tokens())
        entries += [(f"[PAD{i}]".encode(), -10000.0, gguf.TokenType.UNUSED)
                    for i in range(len(entries), self.hparams["vocab_size"])]  # fmt: skip
        self.gguf_writer.add_tokenizer_model("llama")
        self.gguf_writer.add_tokenizer_pre("default")
        self.gguf_writer.add_token_list([text for text, _, _ in entries])
        self.gguf_writer.add_token_scores([score for _, score, _ in entries])
        self.gguf_writer.add_token_types([kind for _, _, kind in entries])
        gguf.SpecialVocab(self.dir_model, n_vocab=len(entries)).add_to_gguf(self.gguf_writer)

    Phi3MiniModel.set_vocab = set_vocab
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", "f32"]
    convert_hf_to_gguf.main()


CONVERTERS = {"phi3": convert, "llama": convert_llama, "phi3-llama-hf": convert_phi3_llama_hf}

if __name__ == "__main__":
    CONVERTERS[sys.argv[4] if len(sys.argv) > 4 else "phi3"](*map(Path, sys.argv[1:4]))

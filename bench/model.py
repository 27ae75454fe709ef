"""The benchmark's model and prompts: a random Phi-3-shaped model built offline, and fixed-length chat prompts.

The model reuses the tiny model's tokenizer (``llmflow.demo.tiny``, 448 ids) with a larger config vocabulary, so the
embedding table and the LM head have Phi-3's size while the tokenizer stays small.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from llmflow.demo.tiny import DEFAULT_QA_PATH, check_builder_compatible, train_tokenizer
from llmflow.evaluation.qa import load_qa

logger = logging.getLogger(__name__)

TOKENIZER_VOCAB = 448
# The LM-head rows of every id but the word tokens are scaled down, so that greedy decoding (1) never stops
# before max_new_tokens, since the EOS ids are muted, and (2) writes plain words: their text decodes the same
# token by token (streaming) and all at once, and re-encodes to the same number of tokens. The LM head keeps its
# full size, so the work per token is unchanged.
MUTED_ROW_SCALE = 1e-3
EOS_TOKENS = ("<|endoftext|>", "<|end|>")


def is_word_token(token: str) -> bool:
    """A token that is a space and letters: ``Ġcapital`` (byte-level BPE) or ``▁capital`` (SentencePiece, Phi-3's)."""
    return token[:1] in ("Ġ", "▁") and token[1:].isalpha()


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int


SHAPES = {
    # Phi-3-mini's vocabulary and proportions at about 168 M parameters (stack-notes' speed reference).
    "mid": Shape(
        hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816, vocab_size=32064, context_length=4096
    ),
    # For the tests: the same code path in seconds. 512 clashes with no projection width (qkv 192, gate_up 352).
    "tiny": Shape(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=176, vocab_size=512, context_length=512),
}


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    shape: Shape
    parameters: int
    muted_ids: int


@dataclass(frozen=True)
class Prompt:
    content: str  # the user's message, for chat requests
    templated: str  # the same message in the model's chat format, for prompt requests
    tokens: int


def build_random_phi3(out_dir: Path, shape: Shape, seed: int = 0) -> BuiltModel:
    """Build a randomly initialised ``Phi3ForCausalLM`` of ``shape`` and save it (fp32) under ``out_dir``.

    Writes the ``save_pretrained`` files of the model and of the tiny model's tokenizer, and
    ``bench_model.json`` (shape, seed, parameter count). The LM-head rows of all ids but the word tokens
    (the EOS ids and the ids beyond the tokenizer included) are scaled by ``MUTED_ROW_SCALE``; see there.
    """
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    if shape.vocab_size < TOKENIZER_VOCAB:
        raise ValueError(f"vocab_size {shape.vocab_size} is smaller than the tokenizer's {TOKENIZER_VOCAB} ids")
    torch.manual_seed(seed)
    tokenizer = train_tokenizer([f"{r.question}\n{r.answer}" for r in load_qa(DEFAULT_QA_PATH)], TOKENIZER_VOCAB)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in EOS_TOKENS]
    config = Phi3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.context_length,
        original_max_position_embeddings=shape.context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    check_builder_compatible(config)
    model = Phi3ForCausalLM(config).eval()
    words = {i for token, i in tokenizer.get_vocab().items() if is_word_token(token)}
    muted = sorted(set(range(shape.vocab_size)) - words)
    with torch.no_grad():
        model.lm_head.weight[muted] *= MUTED_ROW_SCALE
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    parameters = sum(p.numel() for p in model.parameters())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "bench_model.json").write_text(
        json.dumps({"shape": asdict(shape), "seed": seed, "parameters": parameters, "muted_ids": len(muted)})
    )
    logger.info("random Phi-3 of %.1f M parameters saved to %s", parameters / 1e6, out_dir)
    return BuiltModel(out_dir, shape, parameters, len(muted))


def make_prompts(model_dir: Path, count: int, length: int, seed: int = 0) -> list[Prompt]:
    """``count`` user messages of words from the tokenizer's vocabulary, each exactly ``length`` tokens once templated.

    Equal lengths keep a batch free of padding, so batch and single requests do the same work per row.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    words = sorted(t[1:] for t in tokenizer.get_vocab() if is_word_token(t))
    rng = random.Random(seed)

    def templated_of(content: str) -> tuple[str, int]:
        messages = [{"role": "user", "content": content}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompts: list[Prompt] = []
    for _ in range(100 * count):
        picked: list[str] = []
        text, tokens = templated_of("")
        while tokens < length:
            picked.append(rng.choice(words))
            text, tokens = templated_of(" ".join(picked))
        if tokens == length:
            prompts.append(Prompt(" ".join(picked), text, tokens))
            if len(prompts) == count:
                return prompts
    raise ValueError(f"could not make {count} prompts of exactly {length} tokens from {len(words)} words")

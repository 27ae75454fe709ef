"""Build a tiny, offline Phi-3 chat model that has memorised the shipped QA set.

It is a real ``Phi3ForCausalLM`` (2 layers, hidden 128) with a real byte-level BPE tokenizer that
carries Phi-3's chat special tokens and chat template, saved as an ordinary Hugging Face folder.
It is trained for a few seconds on ``data/qa.jsonl`` so the demo and the tests get real answers:
it has memorised that set and knows nothing else. Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError
from llmflow.evaluation.qa import load_qa

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Phi-3-mini-4k-instruct's own chat template (tokenizer_config.json on the Hub).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
DEFAULT_QA_PATH = PROJECT_ROOT / "data" / "qa.jsonl"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        chat_template=PHI3_CHAT_TEMPLATE,
        model_max_length=512,
        # As Phi-3-mini's own tokenizer_config.json: the clean-up is for WordPiece and only draws a warning on BPE.
        clean_up_tokenization_spaces=False,
    )


def qa_tokenizer(qa_path: Path = DEFAULT_QA_PATH, vocab_size: int = 448) -> PreTrainedTokenizerFast:
    """The demo's tokenizer, trained on the QA set's questions and answers; every family's tiny model shares it."""
    return train_tokenizer([f"{row.question}\n{row.answer}" for row in load_qa(qa_path)], vocab_size=vocab_size)


def _training_batch(tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, ...]:
    """Tokenise each pair as a chat; the loss covers only the assistant's answer and its end tokens."""
    rows, labels = [], []
    for question, answer in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        rows.append(full_ids)
        labels.append([-100] * len(prompt_ids) + full_ids[len(prompt_ids) :])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    return input_ids, attention, label_ids


def check_builder_compatible(config: Phi3Config) -> None:
    """Refuse a vocabulary size that equals the width of a projection layer.

    The onnxruntime-genai builder takes any ``nn.Linear`` whose ``out_features`` equals the vocabulary
    size for the LM head, so such a model exports to a graph that computes logits from the wrong layer.
    Real Phi-3 (vocab 32064) never collides; a tiny model easily does (vocab 512 and gate_up 2 x 256).
    """
    widths = {
        "qkv_proj": config.hidden_size * 3,
        "o_proj": config.hidden_size,
        "gate_up_proj": config.intermediate_size * 2,
        "down_proj": config.hidden_size,
    }
    clashes = [name for name, width in widths.items() if width == config.vocab_size]
    if clashes:
        raise ValueError(f"vocab_size {config.vocab_size} equals the width of {clashes}; pick another size")


def phi3_config(
    tokenizer: PreTrainedTokenizerFast, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int
) -> Phi3Config:
    """A Phi-3 config for ``tokenizer`` (its vocabulary and special tokens), 512 positions, untied embeddings."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|end|>"]],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    check_builder_compatible(config)
    return config


def save_chat_model(model: Phi3ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> Path:
    """Save ``model`` (greedy generation defaults, its config's eos and pad ids) and ``tokenizer`` in ``out_dir``."""
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.do_sample = False
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_phi3(
    out_dir: Path,
    qa_path: Path = DEFAULT_QA_PATH,
    seed: int = 0,
    train_steps: int = 150,
    hidden_size: int = 128,
    num_layers: int = 2,
) -> Path:
    """Build, train and save the tiny Phi-3 under ``out_dir``; return ``out_dir``.

    Reads the QA pairs at ``qa_path``. Writes ``config.json``, ``generation_config.json``,
    ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``.
    The same seed gives byte-identical weights.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    pairs = [(row.question, row.answer) for row in load_qa(qa_path)]
    corpus = [f"{q}\n{a}" for q, a in pairs]
    tokenizer = train_tokenizer(corpus, vocab_size=448)
    config = phi3_config(tokenizer, hidden_size, hidden_size * 2, num_layers, num_heads=4)
    model = Phi3ForCausalLM(config)
    input_ids, attention, labels = _training_batch(tokenizer, pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(train_steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == train_steps - 1:
            logger.info("step %d/%d loss %.4f", step + 1, train_steps, loss.item())
    model.eval()
    out_dir = save_chat_model(model, tokenizer, out_dir)
    (out_dir / "tiny_model.json").write_text(
        json.dumps({"seed": seed, "train_steps": train_steps, "final_loss": loss.item(), "qa_pairs": len(pairs)})
    )
    logger.info(
        "tiny Phi-3 saved to %s in %.1f s (final loss %.4f)", out_dir, time.perf_counter() - started, loss.item()
    )
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny offline Phi-3 used by the demo and the tests.")
    parser.add_argument("--out", type=Path, default=Path("build/tiny-phi3"), help="Folder to write the model to.")
    parser.add_argument("--qa-path", type=Path, default=DEFAULT_QA_PATH, help="QA set (JSONL) to memorise.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; the same seed gives the same weights.")
    parser.add_argument("--train-steps", type=int, default=150, help="Optimizer steps over the whole QA set.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_tiny_phi3(args.out, qa_path=args.qa_path, seed=args.seed, train_steps=args.train_steps)


if __name__ == "__main__":
    main()


def known(kind: str, name: str, table: Mapping[str, T]) -> T:
    """``table[name]``; ``InputError`` naming the ``kind`` asked for and the names there are, when it is not there."""
    if name not in table:
        raise InputError(f"{kind} '{name}' is not known; expected one of: {', '.join(table)}")
    return table[name]

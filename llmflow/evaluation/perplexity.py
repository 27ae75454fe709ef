"""Perplexity of a causal language model on a held-out text: the transformers model or its ONNX export.

Both paths score the same token ids through the same windows, so their perplexities compare like with like:

- **Tokens.** ``encode_text`` tokenizes without special tokens and puts the BOS token first (when the
  tokenizer has one), so every token of the text is scored, the first one given BOS. A transformers
  tokenizer and an onnxruntime-genai ``og.Tokenizer`` built from the same files give the same ids; each
  result records the sha256 of its ids (``ids_sha256``) so a caller can check it.
- **Windows.** The strided sliding window of Hugging Face's "Perplexity of fixed-length models": the text is
  cut into windows of at most ``window`` tokens; the first window scores all of its tokens, and each later
  window moves on by ``stride`` tokens and scores only those new tokens, with the tokens before them as
  context. Every token after BOS is scored exactly once (see ``token_windows``).
- **Logits.** transformers: one forward pass per window under ``torch.inference_mode``. ONNX: one
  onnxruntime-genai generator per window; after ``append_tokens`` its ``get_output("logits")`` holds the
  logits of every position of the window (checked in onnxruntime-genai 0.18: shape (1, tokens, vocab), equal to
  the torch model's to 1e-5 for an fp32 export).

Perplexity is ``exp(mean negative log-likelihood)`` over the scored tokens, in nats per token.

Why this module is over 300 lines: the two paths are kept side by side on purpose, with the tokenization
and the windows they share, because comparing them is the point; split apart, a change to one would not
be seen next to the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmflow import PROJECT_ROOT
from llmflow.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_HELDOUT_PATH = PROJECT_ROOT / "data" / "heldout.txt"
# The longest default window: a 4k-context model is scored with 2048-token windows (as in HF's guide).
MAX_DEFAULT_WINDOW = 2048
# Rows of logits turned into log-probabilities at a time on the ONNX side (bounds the float32 copies).
_ONNX_ROWS_PER_CHUNK = 256

# (input ids of one window, the ids its last len(targets) positions must predict) -> summed NLL in nats.
WindowNll = Callable[[list[int], list[int]], float]


@dataclass(frozen=True)
class Window:
    """One forward pass: inputs ``ids[context_start:target_end - 1]``; scores ``ids[target_start:target_end]``.

    The target ``ids[t]`` is predicted by the logits at input position ``t - 1``, so the window's last
    ``target_end - target_start`` positions are the scored ones, and ``ids[t]`` sees
    ``t - context_start`` tokens of context.
    """

    context_start: int
    target_start: int
    target_end: int

    @property
    def input_length(self) -> int:
        return self.target_end - 1 - self.context_start

    @property
    def targets(self) -> int:
        return self.target_end - self.target_start


@dataclass(frozen=True)
class PerplexityResult:
    """What one perplexity computation measured."""

    perplexity: float
    nll: float  # mean negative log-likelihood, nats per scored token
    tokens: int  # tokens scored (every token after BOS)
    windows: int  # forward passes
    seconds: float  # wall time: tokenizing and scoring (not loading the model)
    window: int
    stride: int
    tokenizer: str  # which tokenizer made the ids: "transformers" or "onnxruntime-genai"
    ids_sha256: str  # digest of the token ids: equal digests mean the same ids were scored

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """The figures as MLflow metrics: ``<prefix>perplexity``, ``<prefix>nll_per_token``, ..."""
        return {
            f"{prefix}perplexity": self.perplexity,
            f"{prefix}nll_per_token": self.nll,
            f"{prefix}perplexity_tokens": float(self.tokens),
            f"{prefix}perplexity_windows": float(self.windows),
            f"{prefix}perplexity_seconds": self.seconds,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_heldout(path: str | Path = DEFAULT_HELDOUT_PATH) -> str:
    """The held-out text at ``path`` (UTF-8). Raises ``InputError`` for a missing, unreadable or empty file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"held-out text file '{path}' not found; expected a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"held-out text file '{path}' is not UTF-8 ({exc.reason}); expected UTF-8 text") from None
    if not text.strip():
        raise InputError(f"held-out text file '{path}' is empty; expected some prose to score")
    return text


def _check_whole(name: str, value: Any, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lowest:
        raise InputError(f"{name} {value!r} is not accepted; expected a whole number >= {lowest}")
    return int(value)


def default_window(max_positions: int | None) -> int:
    """``min(max_positions, 2048)``; 2048 when the model does not say how many positions it takes."""
    return MAX_DEFAULT_WINDOW if not max_positions else min(int(max_positions), MAX_DEFAULT_WINDOW)


def resolve_window(window: int | None, stride: int | None, max_positions: int | None) -> tuple[int, int]:
    """Check ``window`` and ``stride`` (defaults: ``default_window`` and half the window)."""
    window = default_window(max_positions) if window is None else _check_whole("window", window, 2)
    if max_positions and window > max_positions:
        raise InputError(f"window {window} is not accepted; expected 2 to {max_positions} (the model's context)")
    stride = max(1, window // 2) if stride is None else _check_whole("stride", stride, 1)
    if stride > window:
        raise InputError(f"stride {stride} is not accepted; expected 1 to window ({window})")
    return window, stride


def token_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The windows that score ``ids[1:n_tokens]`` once each, with at most ``window`` input tokens per pass.

    The first window scores targets 1 to ``window``; each later one scores the next ``stride`` targets (fewer
    at the end) with the ``window - stride`` tokens before them as extra context. ``stride == window`` gives
    disjoint windows, where the first target of each window has one token of context; a text shorter than
    the window is one window.
    """
    n_tokens = _check_whole("n_tokens", n_tokens, 2)
    window = _check_whole("window", window, 2)
    stride = _check_whole("stride", stride, 1)
    if stride > window:
        raise InputError(f"stride {stride} is not accepted; expected 1 to window ({window})")
    windows = []
    start, size = 1, window
    while start < n_tokens:
        end = min(start + size, n_tokens)
        windows.append(Window(max(0, end - 1 - window), start, end))
        start, size = end, stride
    return windows


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text``: BOS (if the tokenizer has one), then the text without special tokens.

    ``tokenizer`` is a transformers tokenizer or an onnxruntime-genai ``og.Tokenizer``.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"text {text!r:.60} is not accepted; expected non-empty text")
    if _is_og_tokenizer(tokenizer):
        bos = int(tokenizer.bos_token_id)
        ids = [int(token) for token in tokenizer.encode(text)]
        if ids and ids[0] == bos:  # og adds BOS when the tokenizer's config says so
            ids = ids[1:]
    else:
        bos = tokenizer.bos_token_id
        ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    ids = [int(bos), *ids] if bos is not None and int(bos) >= 0 else ids
    if len(ids) < 2:
        raise InputError(f"text {text!r} gives {len(ids)} token; expected at least 2 to score one")
    return ids


def first_tokens(ids: list[int], max_tokens: int | None) -> list[int]:
    """The first ``max_tokens`` ids (BOS included), or all of them for ``None`` or 0; at least two stay, one scored."""
    if max_tokens is None or max_tokens == 0:
        return ids
    return ids[: max(2, _check_whole("max_tokens", max_tokens, 0))]


def tokenizer_kind(tokenizer: Any) -> str:
    return "onnxruntime-genai" if _is_og_tokenizer(tokenizer) else "transformers"


def _is_og_tokenizer(tokenizer: Any) -> bool:
    return type(tokenizer).__module__.startswith("onnxruntime_genai")


def score(
    window_nll: WindowNll, ids: Sequence[int], window: int, stride: int, tokenizer: str, started: float
) -> PerplexityResult:
    """Run ``window_nll`` over the windows of ``ids`` and sum up; ``started`` is the ``perf_counter`` start."""
    windows = token_windows(len(ids), window, stride)
    total = 0.0
    # A bar with the time left (tqdm's estimate): at full size a window takes seconds.
    for item in tqdm(windows, desc=f"perplexity ({tokenizer})", unit="window", leave=False):
        inputs = list(ids[item.context_start : item.target_end - 1])
        total += window_nll(inputs, list(ids[item.target_start : item.target_end]))
    tokens = len(ids) - 1
    nll = total / tokens
    digest = hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()
    result = PerplexityResult(
        perplexity=math.exp(nll),
        nll=nll,
        tokens=tokens,
        windows=len(windows),
        seconds=time.perf_counter() - started,
        window=window,
        stride=stride,
        tokenizer=tokenizer,
        ids_sha256=digest,
    )
    logger.info(
        "perplexity %.4g (%.4f nats/token) over %d tokens in %d windows of %d (stride %d), %.1f s",
        result.perplexity,
        nll,
        tokens,
        len(windows),
        window,
        stride,
        result.seconds,
    )
    return result


def perplexity_transformers(
    model: Any,
    tokenizer: Any,
    text: str,
    window: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
) -> PerplexityResult:
    """Perplexity of a transformers causal LM on ``text`` (torch, no gradients).

    ``model`` and ``tokenizer`` as a text-generation pipeline holds them (``pipe.model``, ``pipe.tokenizer``).
    ``window`` defaults to ``min(config.max_position_embeddings, 2048)``, ``stride`` to half the window.
    ``max_tokens`` keeps the first that many tokens of the text (``None`` or 0: all of it).
    """
    import torch

    started = time.perf_counter()
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    window, stride = resolve_window(window, stride, max_positions)
    ids = first_tokens(encode_text(tokenizer, text), max_tokens)
    device = getattr(model, "device", "cpu")

    def window_nll(inputs: list[int], targets: list[int]) -> float:
        x = torch.tensor([inputs], dtype=torch.long, device=device)
        # logits_to_keep: only the scored positions go through the LM head.
        logits = model(input_ids=x, use_cache=False, logits_to_keep=len(targets)).logits[0, -len(targets) :]
        y = torch.tensor(targets, dtype=torch.long, device=logits.device)
        return float(torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum"))

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return score(window_nll, ids, window, stride, tokenizer_kind(tokenizer), started)
    finally:
        model.train(was_training)


def _onnx_model(model: Any) -> tuple[Any, int | None, Any]:
    """(og.Model, context length or None, default tokenizer) for a folder, an og.Model or an ``OnnxChatModel``."""
    import onnxruntime_genai as og

    from llmflow.chat_model.cpus import load_og_model

    if isinstance(model, str | Path):
        folder = Path(model)
        config_file = folder / "genai_config.json"
        if not config_file.is_file():
            raise InputError(
                f"ONNX model folder '{folder}' has no genai_config.json; expected an onnxruntime-genai export folder"
            )
        context = json.loads(config_file.read_text(encoding="utf-8"))["model"].get("context_length")
        return load_og_model(folder), context, _hf_tokenizer(folder)
    if isinstance(model, og.Model):
        return model, None, og.Tokenizer(model)
    if isinstance(getattr(model, "model", None), og.Model):  # the ONNX pyfunc's OnnxChatModel
        folder = getattr(model, "onnx_dir", None)
        tokenizer = _hf_tokenizer(Path(folder)) if folder else og.Tokenizer(model.model)
        return model.model, getattr(model, "context_length", None), tokenizer
    raise InputError(
        f"ONNX model {type(model).__name__} is not accepted; expected an onnxruntime-genai export folder, "
        "an og.Model or the ONNX pyfunc's python model (OnnxChatModel)"
    )


def _hf_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def perplexity_onnx(
    model: Any,
    text: str,
    tokenizer: Any = None,
    window: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
) -> PerplexityResult:
    """Perplexity of an onnxruntime-genai model on ``text``.

    ``model``: an export folder (genai_config.json, model.onnx, tokenizer files), an ``og.Model``, or the
    ONNX pyfunc's python model (``pyfunc.unwrap_python_model()``, an ``OnnxChatModel``).
    ``tokenizer``: a transformers tokenizer or ``og.Tokenizer``; by default the transformers tokenizer of the
    folder (``AutoTokenizer.from_pretrained``), or ``og.Tokenizer`` for a bare ``og.Model``.
    ``window`` defaults to ``min(context_length, 2048)`` (required for a bare ``og.Model``, whose context
    length onnxruntime-genai does not expose); ``stride`` to half the window.
    ``max_tokens`` keeps the first that many tokens of the text (``None`` or 0: all of it).
    """
    import onnxruntime_genai as og

    og_model, context_length, default_tokenizer = _onnx_model(model)
    started = time.perf_counter()
    if window is None and context_length is None:
        raise InputError(
            "window None is not accepted for a bare og.Model; expected a whole number up to its context length"
        )
    window, stride = resolve_window(window, stride, context_length)
    tokenizer = default_tokenizer if tokenizer is None else tokenizer
    ids = first_tokens(encode_text(tokenizer, text), max_tokens)

    def window_nll(inputs: list[int], targets: list[int]) -> float:
        params = og.GeneratorParams(og_model)
        params.set_search_options(max_length=len(inputs))
        generator = og.Generator(og_model, params)
        generator.append_tokens(np.asarray([inputs], dtype=np.int32))
        logits = generator.get_output("logits")
        if logits.shape[:2] != (1, len(inputs)):
            raise RuntimeError(
                f"onnxruntime-genai returned logits of shape {logits.shape} for {len(inputs)} input tokens; "
                "expected one row per input token"
            )
        rows = logits[0, len(inputs) - len(targets) :]
        total = 0.0
        for first in range(0, len(targets), _ONNX_ROWS_PER_CHUNK):
            chunk = rows[first : first + _ONNX_ROWS_PER_CHUNK].astype(np.float32)
            wanted = np.asarray(targets[first : first + _ONNX_ROWS_PER_CHUNK])
            peak = chunk.max(axis=1)
            log_norm = peak + np.log(np.exp(chunk - peak[:, None]).sum(axis=1))
            total += float((log_norm - chunk[np.arange(len(wanted)), wanted]).astype(np.float64).sum())
        return total

    return score(window_nll, ids, window, stride, tokenizer_kind(tokenizer), started)

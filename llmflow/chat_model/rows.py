"""The generation state of one row of one request, whatever generates it.

The ONNX pyfunc (``onnx_chat_model``) and the endpoint's transformers backend (``transformers_chat``) both feed a
``Row`` one generated token at a time; it turns tokens into text, cuts it at a stop string (``StopScanner``) and
says why it ended, so both give the same answer, ``finish_reason`` and usage for the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .chat_protocol import Request, StopScanner


class TokenDecoder(Protocol):
    """Text for one more token of a sequence (onnxruntime-genai's ``TokenizerStream`` is one)."""

    def decode(self, token: int) -> str: ...


@dataclass
class Row:
    """The generation state of one row of one request; it lives only for that request."""

    request: Request
    ids: Any  # the prompt's token ids: a sequence of ints
    budget: int
    decoder: TokenDecoder
    scanner: StopScanner
    pieces: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None

    def push(self, token: int, eos: frozenset[int]) -> str:
        """Take the next generated token; return the text it makes safe to show (may be empty)."""
        if token in eos:
            self.finish_reason = "stop"
            return self._keep(self.scanner.flush())
        self.completion_tokens += 1
        text, stopped = self.scanner.feed(self.decoder.decode(token))
        if stopped:
            self.finish_reason = "stop"
        elif self.completion_tokens >= self.budget:
            self.finish_reason = "length"
            text += self.scanner.flush()
        return self._keep(text)

    def close(self) -> str:
        """End the row if the generator stopped before it did (not expected: see ``generate``)."""
        if self.finish_reason is not None:
            return ""
        self.finish_reason = "length"
        return self._keep(self.scanner.flush())

    def _keep(self, text: str) -> str:
        if text:
            self.pieces.append(text)
        return text

    @property
    def text(self) -> str:
        return "".join(self.pieces)

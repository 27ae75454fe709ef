"""The generated text of a row with tools, read back into OpenAI's shapes, whole or as it streams.

Under a tool plan's guidance (``tools``) the text is one JSON object with fixed separators: ``{"tool_call": {"name":
"...", "arguments": {...}}}`` or ``{"response": ...}``. Its first characters say which, so ``ReplyStream`` can
stream a reply's text as it is decoded and a call as OpenAI streams one (a first delta with the call's id and name,
then pieces of ``arguments``). ``parse`` is the same reading, all at once, so a stream joins to what ``parse`` gives.

A text cut short (``max_tokens``, a stop string) is read as far as it goes, as llama.cpp reads a partial answer:
a reply's text so far, or a call with the arguments so far and the row's own ``finish_reason``; text that never
got as far as a call's name is returned as it is, as content (llama.cpp's fallback). Standard library only.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from .tools import ToolPlan

CALL = '{"tool_call": {"name": "'
ARGUMENTS = '", "arguments": '
CALL_END = "}}"
REPLY_TEXT = '{"response": "'
REPLY_VALUE = '{"response": '
RAW, TEXT, VALUE, CALLING = "raw", "text", "value", "call"


def call_id() -> str:
    """A tool call's id, as OpenAI's look: ``call_`` and 24 random hex digits (``secrets``: never a seeded draw)."""
    return f"call_{secrets.token_hex(12)}"


def _escape_length(text: str, index: int) -> int:
    """How many characters the escape at ``text[index]`` takes; a surrogate pair's first half counts its second."""
    if text[index + 1 : index + 2] != "u":
        return 2
    code = text[index + 2 : index + 6]
    after = text[index + 6 : index + 8]
    high = len(code) == 4 and all(c in "0123456789abcdefABCDEF" for c in code) and 0xD800 <= int(code, 16) < 0xDC00
    return 12 if high and "\\u".startswith(after) else 6


def _string_piece(text: str, start: int) -> tuple[str, int, bool]:
    """A JSON string in ``text`` decoded from ``start`` (after its opening quote, or where the last piece stopped)
    as far as it is whole: the decoded piece, where it stopped and whether that is the closing quote. An escape
    (``\\n``, ``\\u00e9``, a surrogate pair) cut in two waits for its end."""
    index = start
    while index < len(text) and text[index] != '"':
        step = 1 if text[index] != "\\" else _escape_length(text, index)
        if index + step > len(text):
            break
        index += step
    return json.loads(f'"{text[start:index]}"', strict=False), index, text[index : index + 1] == '"'


def _complete(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Reply:
    """A row's answer: ``content`` (``None`` with a tool call), ``tool_calls`` (OpenAI's, at most one here) and
    ``finish_reason`` (``tool_calls`` when a call was made whole)."""

    content: str | None
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str = "stop"

    def message(self) -> dict[str, Any]:
        """OpenAI's assistant ``message`` of a ``chat.completion`` choice."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [dict(call) for call in self.tool_calls]
        return message


@dataclass
class ReplyStream:
    """Reads a row's text piece by piece: ``feed`` returns OpenAI ``delta`` dicts (``{"content": ...}`` or
    ``{"tool_calls": [...]}``) safe to send now; ``close`` the last ones and the whole ``Reply``."""

    plan: ToolPlan
    text: str = ""
    kind: str | None = None
    content: str = ""  # the reply's text sent so far
    call: dict[str, Any] | None = None
    arguments_at: int = 0  # where the call's arguments start in ``text``
    sent: int = 0  # characters of the call's arguments sent so far
    decoded_to: int = 0  # how far a reply's JSON string is decoded (an index into ``text``)
    closed: bool = False  # the reply's JSON string has ended

    def __post_init__(self) -> None:
        if not self.plan.calls:
            self.kind = RAW

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        return self._read(final=False)

    def close(self, finish_reason: str) -> tuple[list[dict[str, Any]], Reply]:
        """The last deltas and the answer; ``finish_reason``: the row's (``stop``, ``length``)."""
        deltas = self._read(final=True)
        if self.call is None:
            return deltas, Reply(self.content, (), finish_reason)
        whole = _complete(self.text)
        arguments = self.text[self.arguments_at :]
        function = {"name": self.call["name"], "arguments": arguments[: -len(CALL_END)] if whole else arguments}
        call = {"id": self.call["id"], "type": "function", "function": function}
        return deltas, Reply(None, (call,), "tool_calls" if whole else finish_reason)

    def _decide(self, final: bool) -> None:
        starts = {CALL: CALLING, **({REPLY_VALUE: VALUE} if self.plan.structured else {REPLY_TEXT: TEXT})}
        for prefix, kind in starts.items():
            if self.text.startswith(prefix):
                self.kind = kind
                return
        if final or not any(prefix.startswith(self.text) for prefix in starts):
            self.kind = RAW

    def _read(self, final: bool) -> list[dict[str, Any]]:
        if self.kind is None:
            self._decide(final)
        if self.kind == CALLING:
            return self._calling(final)
        piece = READERS[self.kind](self, final) if self.kind else ""
        self.content += piece
        return [{"content": piece}] if piece else []

    def _raw(self, final: bool) -> str:
        return self.text[len(self.content) :]

    def _reply_text(self, final: bool) -> str:
        if self.closed:
            return ""
        piece, self.decoded_to, self.closed = _string_piece(self.text, self.decoded_to or len(REPLY_TEXT))
        return piece

    def _reply_value(self, final: bool) -> str:
        """A structured reply's JSON as it comes, less the last character, which may be the wrapper's brace."""
        body = self.text[len(REPLY_VALUE) :]
        shown = body if final and not _complete(self.text) else body[:-1]
        return shown[len(self.content) :]

    def _calling(self, final: bool) -> list[dict[str, Any]]:
        deltas = []
        if self.call is None:
            name_end = self.text.find(ARGUMENTS, len(CALL))
            if name_end < 0:
                if final:  # not even a whole name: the text goes back as content
                    self.kind = RAW
                    return self._read(final)
                return []
            self.call = {"id": call_id(), "name": self.text[len(CALL) : name_end]}
            self.arguments_at = name_end + len(ARGUMENTS)
            function = {"name": self.call["name"], "arguments": ""}
            deltas.append(
                {"tool_calls": [{"index": 0, "id": self.call["id"], "type": "function", "function": function}]}
            )
        arguments = self.text[self.arguments_at :]
        held = len(CALL_END) if not final or _complete(self.text) else 0
        shown = arguments[: max(len(arguments) - held, 0)]
        if len(shown) > self.sent:
            deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": shown[self.sent :]}}]})
            self.sent = len(shown)
        return deltas


# How each kind of answer turns into content: the text as it is, a reply's JSON string decoded, a reply's JSON value.
READERS = {RAW: ReplyStream._raw, TEXT: ReplyStream._reply_text, VALUE: ReplyStream._reply_value}


def parse(text: str, plan: ToolPlan, finish_reason: str) -> Reply:
    """The whole generated ``text`` of a row with ``plan`` as its ``Reply`` (what ``ReplyStream`` joins to)."""
    stream = ReplyStream(plan)
    stream.feed(text)
    return stream.close(finish_reason)[1]

"""The OpenAI chat-completions protocol as the endpoint speaks it: what it honours, what it refuses, what it answers.

Said truthfully: every field either changes the answer as OpenAI documents it, or only names or labels the request
(``model``, ``user``), or is refused with a 400 that names it. None is accepted and then ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .chat_protocol import SHOWN_CHARS, shown

# Fields passed on to the model's own chat request (chat_protocol); `max_completion_tokens` is the newer name.
# `response_format` is checked by the model (chat_protocol, and its schema compiled by onnxruntime-genai's guidance).
FORWARDED = ("messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "response_format")
RENAMED = {"max_completion_tokens": "max_tokens"}
# Fields that do not change the answer: `model` names the one model served, `user` labels the request.
LABELS = ("model", "user", "stream", "stream_options")


def _is_default(default: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value == default


# Fields this endpoint cannot honour: accepted only with their default value (what OpenAI does without them).
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_is_default(1), "n > 1 is not supported; this endpoint returns exactly one choice"),
    "logprobs": (_is_default(False), "logprobs are not supported by this endpoint"),
    "top_logprobs": (_is_default(None), "top_logprobs are not supported by this endpoint"),
    "tools": (_is_default(None), "tools are not supported by this endpoint"),
    "tool_choice": (lambda value: value in (None, "none"), "tool_choice is not supported by this endpoint"),
    "functions": (_is_default(None), "functions are not supported by this endpoint"),
    "function_call": (lambda value: value in (None, "none"), "function_call is not supported by this endpoint"),
    "parallel_tool_calls": (_is_default(None), "parallel_tool_calls is not supported by this endpoint"),
    "frequency_penalty": (_is_default(0), "frequency_penalty other than 0 is not supported"),
    "presence_penalty": (_is_default(0), "presence_penalty other than 0 is not supported"),
    "logit_bias": (lambda value: not value, "logit_bias is not supported by this endpoint"),
}
ACCEPTED = (*FORWARDED, *RENAMED, *LABELS, *REFUSED)


class BadRequest(ValueError):
    """A request the endpoint answers with HTTP 400 in OpenAI's error format; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatCall:
    """An OpenAI request, read: the model's chat request and how to answer it."""

    request: dict[str, Any]
    stream: bool
    include_usage: bool


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None) -> dict:
    """OpenAI's error format."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _stream_options(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not body.get("stream"):
        raise BadRequest("stream_options is only allowed when stream is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise BadRequest(f"stream_options accepts only include_usage; got {shown(options)}", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise BadRequest(f"stream_options.include_usage must be true or false; got {shown(include)}", "stream_options")
    return include


def read_call(body: Any) -> ChatCall:
    """The ``ChatCall`` of an OpenAI request body; ``BadRequest`` names the field that is wrong or refused."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - set(ACCEPTED))
    if unknown:
        raise BadRequest(
            f"unsupported field(s) {shown(unknown)}; accepted: {', '.join(ACCEPTED)}", unknown[0][:SHOWN_CHARS]
        )
    for name, (harmless, message) in REFUSED.items():
        if name in body and not harmless(body[name]):
            raise BadRequest(f"{message}; got {name}={shown(body[name])}", name)
    if "messages" not in body:
        raise BadRequest("missing required field 'messages'", "messages")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false; got {shown(stream)}", "stream")
    request = {RENAMED.get(key, key): value for key, value in body.items() if key in FORWARDED or key in RENAMED}
    request = {key: value for key, value in request.items() if value is not None}
    return ChatCall(request, stream, _stream_options(body))


def model_request(body: Any) -> dict[str, Any]:
    """The model's chat request for an OpenAI request body."""
    return read_call(body).request


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    completion_id: str, model: str, content: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def _chunk_head(completion_id: str, created: int, model: str) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}


def chunk(
    completion_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict:
    """A ``chat.completion.chunk`` with one choice."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {**_chunk_head(completion_id, created, model), "choices": [choice]}


def usage_chunk(completion_id: str, created: int, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk of a stream that asked for ``include_usage``: no choices, the usage of the whole request."""
    head = _chunk_head(completion_id, created, model)
    return {**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

"""The OpenAI chat-completions protocol as the endpoint speaks it: what it honours, what it refuses, what it answers.

Said truthfully: every field either changes the answer as OpenAI documents it, or only names or labels the request
(``model``, ``user``), or is refused with a 400 that names it. None is accepted and then ignored. The request's
fields, types and ranges are the pydantic models of ``openai_request``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .openai_request import REFUSED, ChatRequest, problem

__all__ = ["REFUSED", "BadRequest", "ChatCall", "read_call"]

# Fields passed on to the model's own chat request (chat_protocol); `max_completion_tokens` is the newer name of
# `max_tokens`. `response_format` is checked by the model (chat_protocol, and its schema compiled by guidance).
SETTINGS = ("temperature", "top_p", "top_k", "stop", "seed", "response_format")


class BadRequest(ValueError):
    """A request the endpoint answers with HTTP 400 in OpenAI's error format; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatCall:
    """An OpenAI request, read: the model's chat request, how to answer it, and the ``model`` it names (or ``None``)."""

    request: dict[str, Any]
    stream: bool
    include_usage: bool
    model: str | None = None


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None) -> dict:
    """OpenAI's error format."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def read_call(body: Any) -> ChatCall:
    """The ``ChatCall`` of an OpenAI request body; ``BadRequest`` names the field that is wrong or refused."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object; got {type(body).__name__}")
    try:
        parsed = ChatRequest.model_validate(body)
    except ValidationError as error:
        raise BadRequest(*problem(error, body)) from None
    max_tokens = parsed.max_tokens if parsed.max_tokens is not None else parsed.max_completion_tokens
    settings = {"max_tokens": max_tokens, **{name: getattr(parsed, name) for name in SETTINGS}}
    request = {
        "messages": [message.for_model() for message in parsed.messages],
        **{name: value for name, value in settings.items() if value is not None},
    }
    include_usage = parsed.stream_options is not None and parsed.stream_options.include_usage
    return ChatCall(request, bool(parsed.stream), include_usage, parsed.model)


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

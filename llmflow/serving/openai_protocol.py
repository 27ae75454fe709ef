"""The OpenAI chat-completions protocol as the endpoint speaks it: what it honours, what it refuses, what it answers.

Said truthfully: every field either changes the answer as OpenAI documents it, or only names or labels the request
(``model``, ``user``), or is refused with a 400 that names it. None is accepted and then ignored. The request's
fields, types and ranges are the pydantic models of ``openai_request``; pydantic's ``ValidationError`` becomes one
``BadRequest`` with the path of the field (``messages[2].role``) in ``param``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from llmflow.chat_model.chat_protocol import shown

from .openai_request import CONTENT_ERROR, OWN_TEXT, REFUSED, UNKNOWN, ChatRequest, NamedToolChoice, Problem

__all__ = ["REFUSED", "BadRequest", "ChatCall", "read_call"]

# Fields passed on to the model's own chat request (chat_protocol); `max_completion_tokens` is the newer name of
# `max_tokens`. `response_format` is checked by the model (chat_protocol, and its schema compiled by guidance);
# `tools`, `tool_choice` and `parallel_tool_calls` are passed on with tools (``_tool_fields``).
SETTINGS = ("temperature", "top_p", "top_k", "stop", "seed", "response_format")


# What a field of pydantic's own type errors accepts, in the words of the other errors.
ACCEPTED = {
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
}


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


def _path(loc: tuple[int | str, ...], body: Any, missing: bool) -> list[int | str]:
    """The segments of ``loc`` that are in ``body``: pydantic adds the tag of a union member (``user``, ``parts``),
    which is not a field. The last segment of a missing field is kept."""
    path, node = [], body
    for number, segment in enumerate(loc):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and isinstance(segment, int) and 0 <= segment < len(node):
            node = node[segment]
        elif not (missing and number == len(loc) - 1):
            continue
        path.append(segment)
    return path


def _param(path: list[int | str]) -> str | None:
    text = "".join(f"[{segment}]" if isinstance(segment, int) else f".{segment}" for segment in path)
    return text.removeprefix(".") or None


def _got(error: dict[str, Any]) -> str:
    value = error.get("input")
    return f"got {type(value).__name__} {shown(value)}" if isinstance(value, dict | list) else f"got {shown(value)}"


def _accepted(error: dict[str, Any], path: list[int | str]) -> str:
    """What the field accepts: its description for a field of the request, else pydantic's own words."""
    field = ChatRequest.model_fields.get(str(path[0])) if len(path) == 1 else None
    if field is not None and field.description:
        return field.description
    return ACCEPTED.get(error["type"]) or error["msg"].removeprefix("Input should be ")


def _union_tag(error: dict[str, Any], where: str) -> tuple[str, str]:
    """A message's ``role`` (the tag of the union of messages) that is missing or names no message type."""
    field = error["ctx"]["discriminator"].strip("'")
    param = f"{where}.{field}"
    if error["type"] == "union_tag_not_found":
        return f"{param} is required", param
    expected = error["ctx"]["expected_tags"]
    return f"{param} must be one of {expected}; got {shown(error['ctx']['tag'])}", param


def _told(found: Problem, path: list[int | str], error: dict[str, Any]) -> tuple[str, str | None]:
    """A validator's ``Problem`` as a message and ``param``."""
    if found.kind == UNKNOWN:  # said of the object that has it; param is the unknown field
        return f"{_param(path) or 'the request'} {found.text}", _param([*path, found.field])
    if found.field:
        path = [*path, found.field]
    param = _param(path)
    if found.kind == OWN_TEXT:
        return found.text, param
    return f"{param} {found.text}" if "; got" in found.text else f"{param} {found.text}; {_got(error)}", param


def _problem(error: ValidationError, body: Any) -> tuple[str, str | None]:
    """The message and ``param`` of the first thing wrong in ``body``, from pydantic's ``error``."""
    first = error.errors(include_url=False)[0]
    kind, ctx = first["type"], first.get("ctx") or {}
    path = _path(first["loc"], body, kind == "missing")
    if isinstance(ctx.get("error"), Problem):
        return _told(ctx["error"], path, first)
    where = _param(path) or "the request"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _union_tag(first, where)
    if kind == CONTENT_ERROR:
        return f"{where} {first['msg']}; {_got(first)}", where
    if kind == "missing":
        return f"{where} is required", _param(path)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where} must be an object; {_got(first)}", _param(path)
    return f"{where} must be {_accepted(first, path)}; {_got(first)}", _param(path)


def _tool_fields(parsed: ChatRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the model reads them; none without tools (then
    ``tool_choice`` can only be ``none``, the default, and ``parallel_tool_calls`` changes nothing)."""
    if parsed.tools is None:
        return {}
    choice = parsed.tool_choice
    fields = {
        "tools": [tool.for_model() for tool in parsed.tools],
        "tool_choice": choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
        "parallel_tool_calls": parsed.parallel_tool_calls,
    }
    return {name: value for name, value in fields.items() if value is not None}


def read_call(body: Any) -> ChatCall:
    """The ``ChatCall`` of an OpenAI request body; ``BadRequest`` names the field that is wrong or refused."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object; got {type(body).__name__}")
    try:
        parsed = ChatRequest.model_validate(body)
    except ValidationError as error:
        raise BadRequest(*_problem(error, body)) from None
    max_tokens = parsed.max_tokens if parsed.max_tokens is not None else parsed.max_completion_tokens
    settings = {"max_tokens": max_tokens, **{name: getattr(parsed, name) for name in SETTINGS}}
    request = {
        "messages": [message.for_model() for message in parsed.messages],
        **{name: value for name, value in settings.items() if value is not None},
        **_tool_fields(parsed),
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
    completion_id: str,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A ``chat.completion``; ``message``: the assistant's (``tool_replies.Reply.message``)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
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

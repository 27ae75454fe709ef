"""The OpenAI chat-completions request as pydantic models: each field, its type, OpenAI's range, and what is refused.

Every model forbids the fields it does not declare (``extra="forbid"``), as OpenAI does, and names them with what
it accepts. A field this endpoint cannot honour is declared and refused unless it has its default (``REFUSED``),
so the error names it and says why: a validator raises a ``Problem`` that says what is accepted, quoting at most
``SHOWN_CHARS`` characters of a value (``openai_protocol`` makes one message and ``param`` of it).

Messages are a union on ``role``, one model per role (``AnyMessage``). ``tools``, ``tool_choice`` and the tool fields
of messages have their shapes checked here; the rest (a function's name, whether a named function or a call answered
is there, whether the schema compiles) by the model (``tools``, ``tool_prompt``), with the same 400 and ``param``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)

from llmflow.chat_model.chat_protocol import NAME_REFUSED, SHOWN_CHARS, shown

# How a ``Problem`` is told: its text follows the field's path ("stream must be ..."), or names the field itself
# (a refused field), or follows the path of the object that has an unknown field.
AFTER_PATH, OWN_TEXT, UNKNOWN = "after_path", "own_text", "unknown_field"
# The error type of a content that is neither a string nor a list of parts.
CONTENT_ERROR = "llmflow_content"


def _is_default(default: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value == default


# Fields this endpoint cannot honour: accepted only with their default value (what OpenAI does without them).
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_is_default(1), "n > 1 is not supported; this endpoint returns exactly one choice"),
    "logprobs": (_is_default(False), "logprobs are not supported by this endpoint"),
    "top_logprobs": (_is_default(None), "top_logprobs are not supported by this endpoint"),
    "functions": (_is_default(None), "functions (OpenAI's deprecated API) are not supported; use tools"),
    "function_call": (
        lambda value: value in (None, "none"),
        "function_call (OpenAI's deprecated API) is not supported; use tool_choice",
    ),
    "frequency_penalty": (_is_default(0), "frequency_penalty other than 0 is not supported"),
    "presence_penalty": (_is_default(0), "presence_penalty other than 0 is not supported"),
    "logit_bias": (lambda value: not value, "logit_bias is not supported by this endpoint"),
}


# An assistant turn's fields that OpenAI defines and this endpoint cannot honour: accepted only when null or empty,
# as a client sends them back with an answer it got (``refusal: null``).
ASSISTANT_REFUSED = {
    "refusal": "is not supported in the conversation; put the assistant's text in content",
    "function_call": "is not supported by this endpoint (OpenAI's deprecated functions are not; use tool_calls)",
    "audio": "is not supported by this endpoint",
}


class Problem(ValueError):
    """What a validator found wrong, told as ``kind`` says; ``field`` names a field of the model that raises it (its
    path is the model's). Pydantic keeps it as the ``error`` of a ``value_error``, which ``openai_protocol`` reads."""

    def __init__(self, text: str, kind: str = AFTER_PATH, field: str | None = None) -> None:
        super().__init__(text)
        self.text, self.kind, self.field = text, kind, field


class Strict(BaseModel):
    """A part of the request that refuses fields it does not declare, naming them and what it accepts."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            cls._check_fields(data)
        return data

    @classmethod
    def _check_fields(cls, data: dict[Any, Any]) -> None:
        unknown = sorted(str(key) for key in set(data) - set(cls.model_fields))
        if unknown:
            text = f"has unsupported field(s) {shown(unknown)}; accepted: {', '.join(cls.model_fields)}"
            raise Problem(text, UNKNOWN, unknown[0][:SHOWN_CHARS])


class TextPart(Strict):
    """A part of a message's ``content``; only text: this endpoint serves text models."""

    type: Literal["text"]
    text: StrictStr

    @classmethod
    def _check_fields(cls, data: dict[Any, Any]) -> None:
        """The part's type first: an ``image_url`` part is refused as one, not for its unknown field ``image_url``."""
        if "type" in data and data["type"] != "text":
            text = f"must be 'text': this endpoint reads text parts only; got {shown(data['type'])}"
            raise Problem(text, field="type")
        super()._check_fields(data)


def _content_kind(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "parts" if isinstance(value, list) and value else None


# A message's content: a string, or a list of text parts, which are joined (with nothing between them) into one.
Content = Annotated[
    Annotated[StrictStr, Tag("text")] | Annotated[list[TextPart], Tag("parts")],
    Discriminator(
        _content_kind,
        custom_error_type=CONTENT_ERROR,
        custom_error_message="must be a string or a non-empty list of text parts",
    ),
]


class Message(Strict):
    """What every message has; each role's model narrows ``role`` (and a tool or assistant one adds fields)."""

    role: str
    content: Content
    name: StrictStr | None = None

    @field_validator("name")
    @classmethod
    def _no_name(cls, name: str | None) -> None:
        if name is not None:
            raise Problem(f"{NAME_REFUSED}; got {shown(name)}")
        return None

    def for_model(self) -> dict[str, Any]:
        """The message as the model reads it (``chat_protocol``): its role and its text."""
        content = self.content
        text = content if isinstance(content, str) or content is None else "".join(part.text for part in content)
        return {"role": self.role, "content": text}


class SystemMessage(Message):
    """``developer`` is OpenAI's newer name for ``system``; the model reads both as ``system``."""

    role: Literal["system", "developer"]


class UserMessage(Message):
    role: Literal["user"]


class CalledFunction(Strict):
    name: StrictStr
    arguments: StrictStr  # the arguments' JSON text


class ToolCall(Strict):  # a call of an assistant turn, as the endpoint answered it
    id: StrictStr
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(Message):
    """An answer sent back: its text, or its ``tool_calls`` with a null content (OpenAI's null fields accepted)."""

    role: Literal["assistant"]
    content: Content | None = None
    refusal: Any = None
    tool_calls: list[ToolCall] | None = None
    function_call: Any = None
    audio: Any = None

    @field_validator(*ASSISTANT_REFUSED)
    @classmethod
    def _refused(cls, value: Any, info: Any) -> Any:
        if value:
            raise Problem(f"{ASSISTANT_REFUSED[info.field_name]}; got {shown(value)}")
        return value

    @model_validator(mode="after")
    def _content_or_calls(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise Problem("must be a string or a list of text parts unless the turn has tool_calls", field="content")
        return self

    def for_model(self) -> dict[str, Any]:
        """Its role and text, and its calls when it made some (an empty list, as some clients send, is none)."""
        message = super().for_model()
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return message


class ToolMessage(Message):
    """A tool's result: ``content`` answers the call ``tool_call_id`` of an earlier assistant turn."""

    role: Literal["tool"]
    tool_call_id: StrictStr

    def for_model(self) -> dict[str, Any]:
        return {**super().for_model(), "tool_call_id": self.tool_call_id}


AnyMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionSpec(Strict):
    """A function of ``tools``; its name's form and its ``parameters`` schema are the model's to check (``tools``)."""

    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionSpec

    def for_model(self) -> dict[str, Any]:
        """The tool as the model reads it: the fields given, a null one as not given (the schema as it was sent)."""
        function = {name: value for name, value in self.function if value is not None}
        return {"type": self.type, "function": function}


class NamedFunction(Strict):
    name: StrictStr


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


TOOL_CHOICE = """'none', 'auto', 'required' or {"type": "function", "function": {"name": ...}}"""


class StreamOptions(Strict):
    include_usage: StrictBool = False


Number = StrictFloat | StrictInt


class ChatRequest(Strict):
    """A ``POST /v1/chat/completions`` body. A field's description says what it accepts (used in errors)."""

    model: StrictStr | None = Field(None, description="the name of the model served (see GET /v1/models)")
    messages: list[AnyMessage] = Field(min_length=1, description="a non-empty list of {role, content} messages")
    max_tokens: StrictInt | None = Field(None, ge=1, description="a whole number of 1 or more")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, description="a whole number of 1 or more")
    temperature: Number | None = Field(None, ge=0, le=2, description="a number from 0 to 2 (0: greedy)")
    top_p: Number | None = Field(None, gt=0, le=1, description="a number above 0 and at most 1")
    top_k: StrictInt | None = Field(None, ge=1, description="a whole number of 1 or more")
    stop: StrictStr | list[StrictStr] | None = Field(None, description="a string or a list of strings")
    seed: StrictInt | None = Field(None, description="a whole number")
    stream: StrictBool | None = Field(None, description="true or false")
    stream_options: StreamOptions | None = None
    response_format: Any = None  # read by the model (``response_format.guidance_of``), where guidance compiles it
    user: StrictStr | None = Field(None, description="a string")
    n: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    tools: list[Tool] | None = Field(None, min_length=1, description='a non-empty list of {"type": "function", ...}')
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(None, description=TOOL_CHOICE)
    parallel_tool_calls: StrictBool | None = Field(None, description="true or false (one call per answer either way)")
    functions: Any = None
    function_call: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None

    @field_validator(*REFUSED)
    @classmethod
    def _refused(cls, value: Any, info: Any) -> Any:
        harmless, message = REFUSED[info.field_name]
        if not harmless(value):
            raise Problem(f"{message}; got {info.field_name}={shown(value)}", OWN_TEXT)
        return value

    @model_validator(mode="after")
    def _together(self) -> ChatRequest:
        if self.stream_options is not None and not self.stream:
            raise Problem("stream_options is only allowed when stream is true", OWN_TEXT, "stream_options")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            text = "give max_completion_tokens or max_tokens (its older name), not both"
            raise Problem(text, OWN_TEXT, "max_completion_tokens")
        if self.tools is None and self.tool_choice not in (None, "none"):  # "none" without tools: the default
            text = f"tool_choice is only allowed when tools are given; got tool_choice={shown(self.tool_choice)}"
            raise Problem(text, OWN_TEXT, "tool_choice")
        return self

"""The request and response formats of the ONNX chat pyfunc, as pure functions (no model needed).

Logged with the model as part of the ``serving`` package (its ``code_paths``), so, like every file of the package,
it imports only the standard library, mlflow, numpy and pandas. It is over 300 lines because it is the whole
request format, read top to bottom: fields, their checks, the token budget, stop strings and the response shapes.

A request is one or more rows. Each row is either
- a chat request, as for an ``llm/v1/chat`` model: ``messages`` (``system``, ``user`` and ``assistant``
  turns of ``role`` and ``content`` text; ``developer``, OpenAI's newer name for ``system``, is read as ``system``;
  ``tool`` results and ``assistant`` turns with ``tool_calls``, see ``tool_prompt``), with the optional fields
  ``temperature``, ``max_tokens``, ``top_p``, ``top_k``, ``stop``, ``seed``, ``response_format`` (structured
  output, see ``response_format``), ``tools``, ``tool_choice`` (objects or their JSON text, see ``tools``) and
  ``parallel_tool_calls`` (true or false: at most one call is made per answer either way);
  it gets an OpenAI ``chat.completion`` dict back; or
- a raw prompt, the cookbook's form: ``prompt``, text already in the model's chat format; it gets the
  generated string back. It takes the same optional fields.

Generation settings come from the row's fields, else the request's params (``max_new_tokens``,
``temperature``, ``top_p``, ``top_k``, ``response_format``), else the model config. Every bad value raises a
``Refused`` (an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, HTTP 400 when served) that names the field and
what is accepted, with the field's path in ``param``. Its message quotes at most ``SHOWN_CHARS`` characters of the
value, and keeps no copy of the input when MLflow's scoring server would add one (see ``Refused``); an unexpected
error becomes one that names its type only (``internal_errors``), with the traceback in the server's log.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from .response_format import FormatError, guidance_of
from .tool_prompt import ToolPrompt, check_message, prepare
from .tools import ToolsError

logger = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant", "tool")
# The role a chat template gets: templates know system, user and assistant; OpenAI's clients send ``developer``
# instead of ``system`` for newer models, and OpenAI reads it as ``system``.
TEMPLATE_ROLE = {"developer": "system"}
MESSAGE_FIELDS = ("role", "content")
# The fields a message of a role may have beyond role and content (``tool_prompt.check_message`` checks them).
FIELDS_OF_ROLE = {"tool": (*MESSAGE_FIELDS, "tool_call_id"), "assistant": (*MESSAGE_FIELDS, "tool_calls")}
# Why a message's ``name`` is refused rather than dropped: the chat templates served here (Phi-3, SmolLM2, Llama ...)
# render only role and content, and writing the name into the text would be a prompt format of our own.
NAME_REFUSED = (
    "is not supported: the model's chat template has no place for a speaker's name, and it is not written into "
    "the text; put it in content if the model should see it"
)
CHAT, PROMPT = "messages", "prompt"
# Model-config and params names of the generation settings, with the defaults a logged model falls back on.
GENERATION_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 50}
# A row's field for each setting; the chat field ``max_tokens`` is the params' ``max_new_tokens``.
ROW_FIELD_OF_PARAM = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}
RESPONSE_FORMAT = "response_format"
TOOLS, TOOL_CHOICE, PARALLEL_TOOL_CALLS = "tools", "tool_choice", "parallel_tool_calls"
TOOL_FIELDS = (TOOLS, TOOL_CHOICE, PARALLEL_TOOL_CALLS)
ROW_FIELDS = (CHAT, PROMPT, *ROW_FIELD_OF_PARAM.values(), "stop", "seed", RESPONSE_FORMAT, *TOOL_FIELDS)
# Params that are not generation defaults of the model config: ``response_format`` as JSON text, "" for none.
EXTRA_PARAMS: dict[str, Any] = {RESPONSE_FORMAT: ""}


# The most characters of a client's value an error message quotes.
SHOWN_CHARS = 80


class Refused(MlflowException):
    """A request this model does not answer, with a message that is the model's own and stays so, and ``param``: the
    path of the field it names (``messages[1].role``), or ``None``.

    MLflow's scoring server (3.17) rewrites the message of an ``MlflowException`` from ``predict`` into
    ``Failed to predict data '<the whole input>'. Error: <message>``, so a refused 50 KB prompt came back whole in
    the answer. The scoring server sets ``message``; a ``Refused`` keeps the first one it was given.
    """

    param: str | None = None

    @property
    def message(self) -> str:
        return self._own_message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_own_message"):
            self._own_message = value


def invalid(message: str, param: str | None = None) -> Refused:
    """The error for a bad request: ``INVALID_PARAMETER_VALUE``, which the scoring server answers with 400; ``param``
    is the path of the field it names."""
    refused = Refused(message, error_code=INVALID_PARAMETER_VALUE)
    refused.param = param
    return refused


def shown(value: Any) -> str:
    """``repr(value)``, cut to ``SHOWN_CHARS`` characters: an error names a value, it does not copy it."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


@contextmanager
def internal_errors(doing: str) -> Iterator[None]:
    """Within this block an unexpected error becomes a ``Refused`` with ``INTERNAL_ERROR`` (HTTP 500) that names
    only its type; its message and traceback, which may hold server paths, go to the server's log."""
    try:
        yield
    except Refused:
        raise
    except Exception as error:
        logger.exception("internal error while %s", doing)
        raise Refused(
            f"internal error while {doing} ({type(error).__name__}); the server's log has the details",
            error_code=INTERNAL_ERROR,
        ) from None


def _whole(value: Any) -> int | None:
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, Integral):
        return int(value)
    # A number column with a missing cell turns into floats in pandas: 8.0 is 8.
    if isinstance(value, Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _real(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real) or not math.isfinite(value):
        return None
    return float(value)


def _stops(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple | np.ndarray) and all(isinstance(s, str) and s for s in value):
        return tuple(value)
    return None


# setting -> (cast, returning None when the type is wrong; range check; what is accepted)
SETTING_RULES: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool], str]] = {
    "max_tokens": (_whole, lambda v: v >= 1, "a whole number of 1 or more"),
    "max_new_tokens": (_whole, lambda v: v >= 1, "a whole number of 1 or more"),
    "temperature": (_real, lambda v: v >= 0, "a number of 0 (greedy) or more"),
    "top_p": (_real, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (_whole, lambda v: v >= 1, "a whole number of 1 or more"),
    "stop": (_stops, lambda v: len(v) > 0, "a non-empty string or a list of non-empty strings"),
    "seed": (_whole, lambda v: 0 <= v < 2**31, "a whole number from 0 to 2147483647"),
}


def checked(name: str, value: Any, where: str = "") -> Any:
    """``value`` of setting ``name`` cast to its type; raises ``invalid`` naming it and what is accepted."""
    cast, in_range, accepted = SETTING_RULES[name]
    result = cast(value)
    if result is None or not in_range(result):
        raise invalid(f"{where}{name} must be {accepted}; got {shown(value)}", name)
    return result


def generation_options(defaults: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """The request-wide settings: ``params`` over ``defaults`` (the model config), each checked."""
    unknown = sorted(set(params or {}) - set(GENERATION_DEFAULTS) - set(EXTRA_PARAMS))
    if unknown:
        accepted = ", ".join([*GENERATION_DEFAULTS, *EXTRA_PARAMS])
        raise invalid(f"unknown parameter(s) {shown(unknown)}; accepted: {accepted}")
    given = {name: value for name, value in (params or {}).items() if value is not None and name in GENERATION_DEFAULTS}
    merged = {**GENERATION_DEFAULTS, **defaults, **given}
    return {name: checked(name, merged[name], "parameter ") for name in GENERATION_DEFAULTS}


@dataclass(frozen=True)
class Settings:
    """How one row is generated. ``explicit_max_tokens``: the row set ``max_tokens`` itself. ``seed``: the random
    seed of a sampled row, which then runs in a generator of its own so the same seed gives the same answer.
    ``guidance``: the ``(kind, data)`` of onnxruntime-genai's ``set_guidance`` (``response_format``), or ``None``."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: tuple[str, ...] = ()
    explicit_max_tokens: bool = False
    seed: int | None = None
    guidance: tuple[str, str] | None = None

    @property
    def sampling_key(self) -> tuple[float, float, int] | None:
        """Rows with the same key can share one generator; every greedy row shares ``None``."""
        return (self.temperature, self.top_p, self.top_k) if self.temperature > 0 else None

    @property
    def alone(self) -> bool:
        """A seeded sampled row shares no generator: another row would change the random draws it gets. Nor does
        a guided row: onnxruntime-genai 0.18 guides a generator of several rows wrongly (measured: a batch of two
        under one schema gave '{"n"' and then only newlines, where the same row alone gave the object)."""
        return (self.temperature > 0 and self.seed is not None) or self.guidance is not None

    def sampling(self) -> dict[str, Any]:
        """The keyword arguments of ``generation.search_options`` for this row."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}


@dataclass(frozen=True)
class Request:
    """One parsed row: its form (``CHAT`` or ``PROMPT``), its content and its settings. A chat row also has its
    ``tool_prompt`` (the conversation its template gets and its tool plan, see ``tool_prompt.prepare``), and
    ``tool_fields``, the tool fields it gave (a backend without guidance refuses them)."""

    form: str
    messages: tuple[dict[str, Any], ...] | None
    prompt: str | None
    settings: Settings
    tool_prompt: ToolPrompt | None = None
    tool_fields: tuple[str, ...] = ()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (what schema enforcement leaves) as plain Python lists and values."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value.item() if isinstance(value, np.generic) else value


def _expand_prompts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The cookbook's column form ``{"prompt": [p1, p2]}`` as one row per prompt, sharing the other fields.

    Schema enforcement turns a dict into a single row, so a served ``{"inputs": {"prompt": [...]}}``
    arrives as one row holding the list.
    """
    prompts = row.get(PROMPT)
    if not isinstance(prompts, list) or not prompts:
        return [row]
    return [{**row, PROMPT: prompt} for prompt in prompts]


def rows_of(model_input: Any) -> list[dict[str, Any]]:
    """The rows of a request, each a dict without its missing fields.

    Accepts a DataFrame (one row per request), a list of dicts, one request as a dict, or the cookbook's
    column form ``{"prompt": [...]}`` (one row per prompt).
    """
    if isinstance(model_input, pd.DataFrame):
        records = model_input.to_dict(orient="records")
    elif isinstance(model_input, dict):
        records = [model_input]
    elif isinstance(model_input, list) and all(isinstance(row, dict) for row in model_input):
        records = model_input
    else:
        raise invalid(
            f"model input must be a chat request (a dict with 'messages'), a dict with 'prompt', "
            f"a list of those or a DataFrame of them; got {type(model_input).__name__}"
        )
    rows = [{key: _plain(value) for key, value in row.items() if not _missing(value)} for row in records]
    rows = [expanded for row in rows for expanded in _expand_prompts(row)]
    if not rows:
        raise invalid("model input has no rows; expected at least one request")
    return rows


def tools_refused(error: ToolsError, where: str = "") -> Refused:
    """A ``ToolsError`` as a 400; its message starts with the path of the field it names, which is ``param``."""
    return invalid(f"{where}{error}", str(error).split(" ", 1)[0])


def _message(message: Any, number: int, where: str) -> dict[str, Any]:
    at = f"messages[{number}]"
    if not isinstance(message, dict):
        raise invalid(f"{where}{at} must be an object with 'role' and 'content'; got {type(message).__name__}", at)
    if message.get("name") is not None:
        raise invalid(f"{where}{at}.name {NAME_REFUSED}; got {shown(message['name'])}", f"{at}.name")
    role, content = message.get("role"), message.get("content")
    accepted = FIELDS_OF_ROLE.get(role, MESSAGE_FIELDS) if isinstance(role, str) else MESSAGE_FIELDS
    # A field set to null is not given (as ``refusal: null`` in an assistant turn a client sends back).
    unknown = sorted(str(key) for key, value in message.items() if value is not None and key not in accepted)
    if unknown:
        raise invalid(
            f"{where}{at} has unknown field(s) {shown(unknown)}; accepted: {', '.join(accepted)}",
            f"{at}.{unknown[0][:SHOWN_CHARS]}",
        )
    if role not in ROLES:
        raise invalid(
            f"{where}{at}.role {shown(role)} is not accepted; expected one of {', '.join(ROLES)}", f"{at}.role"
        )
    if role == "tool" or message.get("tool_calls") is not None:
        try:
            return check_message(message, number)
        except ToolsError as error:
            raise tools_refused(error, where) from None
    if not isinstance(content, str):
        raise invalid(
            f"{where}{at}.content must be a string; got {type(content).__name__} {shown(content)}", f"{at}.content"
        )
    return {"role": TEMPLATE_ROLE.get(role, role), "content": content}


def _messages(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    """The conversation as the chat template gets it: each message's role (``developer`` as ``system``) and text."""
    if not isinstance(value, list):
        raise invalid(f"{where}messages must be a list of {{role, content}} objects; got {type(value).__name__}", CHAT)
    if not value:
        raise invalid(f"{where}messages must hold at least one message; got an empty list", CHAT)
    return tuple(_message(message, number, where) for number, message in enumerate(value))


def _prompt(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"{where}prompt must be a non-empty string; got {type(value).__name__} {shown(value)}", PROMPT)
    return value


def response_guidance(value: Any, where: str = "", name: str = RESPONSE_FORMAT) -> tuple[str, str] | None:
    """The guidance of a ``response_format`` (a row's field or the param ``name``); raises ``invalid`` naming it."""
    try:
        return guidance_of(value)
    except FormatError as error:
        raise invalid(f"{where}{name} {error}", name) from None


def _tool_prompt(row: dict[str, Any], messages: Any, guidance: Any, native_tools: bool, where: str) -> ToolPrompt:
    """The chat row's ``ToolPrompt`` (its guidance is the row's: tools', or else its ``response_format``'s)."""
    parallel = row.get(PARALLEL_TOOL_CALLS)
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid(f"{where}{PARALLEL_TOOL_CALLS} must be true or false; got {shown(parallel)}", PARALLEL_TOOL_CALLS)
    try:
        return prepare(messages, row.get(TOOLS), row.get(TOOL_CHOICE), native_tools, guidance)
    except ToolsError as error:
        raise tools_refused(error, where) from None


def parse_row(row: dict[str, Any], options: dict[str, Any], where: str = "", native_tools: bool = False) -> Request:
    """One row as a ``Request``; ``options`` are the request-wide settings from ``generation_options`` (with
    ``RESPONSE_FORMAT``, the param's guidance, for rows that do not set their own). ``native_tools``: the model's
    chat template renders tools itself (``tool_prompt.supports_native_tools``)."""
    unknown = sorted(set(row) - set(ROW_FIELDS))
    if unknown:
        raise invalid(f"{where}unknown field(s) {shown(unknown)}; accepted: {', '.join(ROW_FIELDS)}")
    forms = [form for form in (CHAT, PROMPT) if form in row]
    if len(forms) != 1:
        got = "both" if forms else f"neither (fields: {shown(sorted(row)) if row else 'none'})"
        raise invalid(f"{where}a request needs exactly one of 'messages' (chat) or 'prompt' (raw prompt); got {got}")
    [form] = forms
    settings = {
        field: checked(field, row[field], where) if field in row else options[param]
        for param, field in ROW_FIELD_OF_PARAM.items()
    }
    stop = checked("stop", row["stop"], where) if "stop" in row else ()
    seed = checked("seed", row["seed"], where) if "seed" in row else None
    guided = RESPONSE_FORMAT in row
    guidance = response_guidance(row[RESPONSE_FORMAT], where) if guided else options.get(RESPONSE_FORMAT)
    tool_fields = tuple(field for field in TOOL_FIELDS if field in row)
    messages, tool_prompt = None, None
    if form == CHAT:
        messages = _messages(row[CHAT], where)
        tool_prompt = _tool_prompt(row, messages, guidance, native_tools, where)
        guidance = tool_prompt.plan.guidance
    elif tool_fields:
        raise invalid(f"{where}{tool_fields[0]} is only accepted with messages, not with a raw prompt", tool_fields[0])
    return Request(
        form=form,
        messages=messages,
        prompt=_prompt(row[PROMPT], where) if form == PROMPT else None,
        settings=Settings(**settings, stop=stop, explicit_max_tokens="max_tokens" in row, seed=seed, guidance=guidance),
        tool_prompt=tool_prompt,
        tool_fields=tool_fields,
    )


def parse_request(
    model_input: Any, defaults: dict[str, Any], params: dict[str, Any] | None, native_tools: bool = False
) -> list[Request]:
    """Every row of ``model_input``, checked; errors name the row when there are several."""
    options = generation_options(defaults, params)
    options[RESPONSE_FORMAT] = response_guidance((params or {}).get(RESPONSE_FORMAT), "parameter ")
    rows = rows_of(model_input)
    return [
        parse_row(row, options, f"row {number}: " if len(rows) > 1 else "", native_tools)
        for number, row in enumerate(rows)
    ]


def token_budget(request: Request, prompt_tokens: int, context_length: int, where: str = "") -> int:
    """How many tokens the row may generate.

    A ``max_tokens`` the row sets itself must fit in the context with the prompt; a default (or the
    ``max_new_tokens`` param) is cut to what is left of the context.
    """
    room = context_length - prompt_tokens
    if room < 1:
        raise invalid(
            f"{where}{request.form} has {prompt_tokens} tokens; the model's context length is {context_length} "
            f"tokens, so a prompt may have at most {context_length - 1}",
            request.form,
        )
    wanted = request.settings.max_tokens
    if request.settings.explicit_max_tokens and wanted > room:
        raise invalid(
            f"{where}max_tokens {wanted} with a prompt of {prompt_tokens} tokens exceeds the model's context "
            f"length of {context_length} tokens; max_tokens may be at most {room} for this prompt",
            "max_tokens",
        )
    return min(wanted, room)


class StopScanner:
    """Cuts generated text at the first stop sequence, holding back text that may start one.

    ``feed`` returns the text that is safe to show and whether a stop sequence was found (the text
    before it is returned; the sequence is not). ``flush`` returns what is held when generation ends.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buffer = self.held + text
        found = [index for index in (buffer.find(stop) for stop in self.stops) if index >= 0]
        if found:
            self.held = ""
            return buffer[: min(found)], True
        keep = max(
            (
                n
                for stop in self.stops
                for n in range(min(len(stop) - 1, len(buffer)), 0, -1)
                if buffer.endswith(stop[:n])
            ),
            default=0,
        )
        self.held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def find_chat_template(onnx_dir: Path) -> str | None:
    """The chat template shipped in the ONNX folder: ``tokenizer_config.json``'s, else ``chat_template.jinja``."""
    config = onnx_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str) and template:
            return template
    jinja = onnx_dir / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(
    model: str, message: dict[str, Any], finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` with one choice, as the ``llm/v1/chat`` transformers model returns; ``message``
    is the assistant's (``tool_replies.Reply.message``: its ``content``, or ``tool_calls`` and a null content)."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    chunk_id: str,
    created: int,
    model: str,
    content: str = "",
    finish_reason: str | None = None,
    delta: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An OpenAI ``chat.completion.chunk``: ``choices[0].delta`` is ``{"role": "assistant", "content": content}``,
    the next piece of the answer, unless ``delta`` is given (a tool call's, ``tool_replies.ReplyStream``'s)."""
    delta = {"role": "assistant", "content": content} if delta is None else delta
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

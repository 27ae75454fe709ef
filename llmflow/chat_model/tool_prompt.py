"""The conversation a chat template gets for a row with tools: llama.cpp's generic format (see ``tools``).

``prepare`` is what the pyfunc calls per chat row: it checks the tool fields of the messages, reads the row's
``tools`` and ``tool_choice`` into a ``ToolPlan`` (with its guidance) and gives the messages (and, for a template
that renders tools itself, the tools' JSON text) for ``apply_chat_template``. ``supports_native_tools`` probes a
template once, as minja's ``chat_template`` constructor does. Standard library only, like every file of the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .tools import AUTO, EXAMPLE, FUNCTION, SYSTEM_ROLES, ToolPlan, ToolsError, plan, shown

TOOL_CALL_FIELDS = ("id", "type", "function")
CALL_FUNCTION_FIELDS = ("name", "arguments")
# What each mode asks for: llama.cpp's own sentence for ``auto``.
INSTRUCTIONS = {
    AUTO: "Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` reply to the "
    "user's request",
    "required": "Respond in JSON format with `tool_call` (a request to call one of the tools)",
    FUNCTION: "Respond in JSON format with `tool_call` (a request to call the tool `{name}`)",
}


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI's text parts joined by newlines (as llama.cpp joins them)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "\n".join(part["text"] for part in content)
    raise ToolsError(
        f'{where} must be a string or a list of {{"type": "text", "text": ...}} parts; got {shown(content)}'
    )


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type") != "function" or not isinstance(call.get("function"), dict):
        raise ToolsError(
            f'{where} must be an object {{"id", "type": "function", "function": {{"name", "arguments"}}}}; '
            f"got {shown(call)}"
        )
    extra = sorted(set(call) - set(TOOL_CALL_FIELDS)) or sorted(set(call["function"]) - set(CALL_FUNCTION_FIELDS))
    if extra:
        raise ToolsError(f"{where} has unknown field(s) {shown(extra)}; accepted: id, type, function.name, .arguments")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise ToolsError(f"{where}.id must be a non-empty string; got {shown(call.get('id'))}")
    name, arguments = call["function"].get("name"), call["function"].get("arguments")
    if not isinstance(name, str) or not name:
        raise ToolsError(f"{where}.function.name must be a non-empty string; got {shown(name)}")
    if not isinstance(arguments, str):
        raise ToolsError(
            f"{where}.function.arguments must be the arguments' JSON text (a string); got {shown(arguments)}"
        )
    return {"id": call["id"], "type": "function", "function": {"name": name, "arguments": arguments}}


def check_message(message: dict[str, Any], number: int) -> dict[str, Any]:
    """The tool fields of ``messages[number]``, checked: a ``tool`` message's ``tool_call_id`` and ``content``, an
    ``assistant`` message's ``tool_calls`` (then its ``content`` may be null). Other messages come back as they are:
    their roles and contents are ``chat_protocol``'s to check."""
    where = f"messages[{number}]"
    role = message.get("role")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ToolsError(f"{where}.tool_call_id must be the id of the call it answers; got {shown(call_id)}")
        return {"role": "tool", "tool_call_id": call_id, "content": _text(message.get("content"), f"{where}.content")}
    if role != "assistant" or message.get("tool_calls") is None:
        return message
    calls = message["tool_calls"]
    if not isinstance(calls, list) or not calls:
        raise ToolsError(f"{where}.tool_calls must be a non-empty list of tool calls; got {shown(calls)}")
    content = message.get("content")
    checked = [_tool_call(call, f"{where}.tool_calls[{index}]") for index, call in enumerate(calls)]
    text = None if content is None else _text(content, f"{where}.content")
    return {"role": "assistant", "content": text, "tool_calls": checked}


def _names_of_calls(messages: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each tool call's id and function name; refuses a ``tool`` message that answers no earlier call (as OpenAI)."""
    names: dict[str, str] = {}
    for number, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
        if message.get("role") == "tool" and message["tool_call_id"] not in names:
            raise ToolsError(
                f"messages[{number}].tool_call_id {shown(message['tool_call_id'])} answers no tool call of an earlier "
                "assistant message"
            )
    return names


def _arguments(text: str) -> Any:
    """A call's arguments as JSON, or as the text it is when that is not JSON (rendered, not refused, as minja does)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _generic(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """One message as text a template without tools takes: a call as the JSON the model is asked to write (several:
    ``{"tool_calls": [...]}``, as llama.cpp reads them), a tool's result as a ``user`` message."""
    if message.get("role") == "tool":
        result = {"tool": names[message["tool_call_id"]], "tool_call_id": message["tool_call_id"]}
        return {"role": "user", "content": json.dumps({"tool_response": {**result, "content": message["content"]}})}
    calls = message.get("tool_calls")
    if not calls:
        return message
    made = [
        {"name": call["function"]["name"], "arguments": _arguments(call["function"]["arguments"])} for call in calls
    ]
    if len(made) == 1:
        text = json.dumps({"tool_call": made[0]})
    else:
        text = json.dumps({"tool_calls": [{"id": call["id"], **one} for call, one in zip(calls, made, strict=True)]})
    return {"role": "assistant", "content": f"{message['content']}\n{text}" if message.get("content") else text}


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` as the system message: after the conversation's own, with a blank line (minja's ``add_system``)."""
    if messages and messages[0].get("role") in SYSTEM_ROLES:
        first = messages[0]
        return [{**first, "content": f"{_text(first.get('content'), 'messages[0].content')}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def system_text(tool_plan: ToolPlan, native: bool) -> str:
    """What the system message says: the tools and an example call (minja's polyfill, unless the template describes
    the tools itself), then what to answer."""
    instruction = INSTRUCTIONS[tool_plan.mode].format(name=tool_plan.function)
    example = f"Example tool call syntax:\n\n{EXAMPLE}\n\n{instruction}"
    if native:
        return example
    described = json.dumps([function.described() for function in tool_plan.functions])
    return f"You can call any of the following tools to satisfy the user's requests: {described}\n\n{example}"


@dataclass(frozen=True)
class ToolPrompt:
    """What ``apply_chat_template`` gets for a row: ``messages`` (its ``messages`` JSON) and ``tools`` (the JSON text
    for its ``tools=``, set only for a template that renders tools itself), and the row's ``plan``."""

    messages: tuple[dict[str, Any], ...]
    tools: str | None
    plan: ToolPlan


def prepare(
    messages: Sequence[dict[str, Any]],
    tools: Any = None,
    tool_choice: Any = None,
    supports_native: bool = False,
    response_format: tuple[str, str] | None = None,
) -> ToolPrompt:
    """A chat row's tool plan and the conversation its template gets (see the module's docstring and ``tools``).

    ``tools``, ``tool_choice``: the row's fields as the client sent them (or their JSON text). ``supports_native``:
    the template renders tools, tool calls and tool results (``supports_native_tools``). ``response_format``: the
    row's guidance from ``response_format.guidance_of``. Raises ``ToolsError`` naming the field.
    """
    checked = [check_message(message, number) for number, message in enumerate(messages)]
    names = _names_of_calls(checked)
    tool_plan = plan(tools, tool_choice, response_format)
    rendered = checked if supports_native else [_generic(message, names) for message in checked]
    if not tool_plan.calls:
        return ToolPrompt(tuple(rendered), None, tool_plan)
    rendered = _with_system(rendered, system_text(tool_plan, supports_native))
    described = [{"type": "function", "function": function.described()} for function in tool_plan.functions]
    return ToolPrompt(tuple(rendered), json.dumps(described) if supports_native else None, tool_plan)


# Needles of the probes: a tool, a call's arguments and the call's result, each found in the prompt or not.
PROBE_TOOLS = [{"type": "function", "function": {"name": "probe_tool_x7", "parameters": {"type": "object"}}}]
PROBE_CALL = {"name": "probe_call", "arguments": '{"probe_argument": "probe_value_y8"}'}
PROBE_MESSAGES = [
    {"role": "user", "content": "Hey"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": PROBE_CALL}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "probe_result_z9"},
]


def supports_native_tools(render: Callable[[str, str], str]) -> bool:
    """Whether a chat template renders tools, assistant tool calls and tool results itself (minja's probes).

    ``render(messages_json, tools_json)`` is the template applied without a generation prompt, e.g. onnxruntime-genai's
    ``lambda m, t: tokenizer.apply_chat_template(m, template_str=template, tools=t, add_generation_prompt=False)``.
    """
    try:
        with_tools = render(json.dumps(PROBE_MESSAGES[:1]), json.dumps(PROBE_TOOLS))
        history = render(json.dumps(PROBE_MESSAGES), "")
    except Exception:  # whatever the engine raises: the template cannot take these messages
        return False
    return "probe_tool_x7" in with_tools and "probe_value_y8" in history and "probe_result_z9" in history

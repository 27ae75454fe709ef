"""OpenAI tools (function calling) for the ONNX chat pyfunc: the format, the checks of ``tools`` and
``tool_choice``, and the grammar. The prompt is ``tool_prompt``'s (``prepare``, what the pyfunc calls per chat row);
reading the answer back, whole or streamed, is ``tool_replies``'s.

The format is llama.cpp server's "generic" tool format (``common/chat.cpp``: ``common_chat_params_init_generic``,
``common_chat_parse_generic``), the one it uses for chat templates without a tool format of their own:

- The prompt. A system message (merged into the conversation's own, after a blank line, as minja's ``add_system``)
  describes the tools and says how to call one: minja's polyfill for templates without tools
  (``chat-template.hpp``: "You can call any of the following tools ...", an example call), then llama.cpp's
  instruction "Respond in JSON format, either with `tool_call` ... or with `response` ...". A template that renders
  tools itself (``supports_native_tools``) gets the tools through its ``tools`` variable and the conversation as it
  is, and only the example call and the instruction. Otherwise past turns become text every template takes
  (minja's polyfills): an assistant turn with ``tool_calls`` becomes the JSON the model is asked to write, a ``tool``
  message a ``user`` message ``{"tool_response": {"tool", "tool_call_id", "content"}}``.
- The grammar, not lazy: the whole answer is one JSON object. ``auto``: ``anyOf`` a call
  ``{"tool_call": {"name": <const>, "arguments": <that function's parameters>}}`` and a reply ``{"response": "..."}``
  (with a ``response_format``, the reply follows its schema); ``required``: a call to any tool; a named function:
  a call to that one. ``none``: no tools are offered and nothing is guided (llama.cpp still describes them; a small
  model told how to call tools and then not guided writes calls as text). One call per answer: llama.cpp turns
  parallel calls off for a template that cannot render them, which every polyfilled template is.
  Unlike llama.cpp's, the JSON has fixed separators and no free whitespace (llguidance's ``x-guidance``): with free
  whitespace a small model fills the object with newlines (measured on the tiny model), and the answer's first
  characters then tell a call from a reply, which streaming needs. As llama.cpp's grammar does, an object schema
  that does not say ``additionalProperties`` gets no extra keys in the grammar (arguments still validate against the
  client's schema); each schema keeps its own ``$ref``s, rebased under the grammar's ``$defs``.

A lark grammar (onnxruntime-genai's examples: free text not starting with ``{``, or the call) would let ``auto``
reply without the JSON wrapper; llama.cpp's choice is kept: one JSON schema, which ``check_guidance`` compiles and
the reply's streaming (``tool_replies``) decodes as it comes. Standard library only, like every file of the package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
AUTO, NONE, REQUIRED, FUNCTION = "auto", "none", "required", "function"
MODES = (NONE, AUTO, REQUIRED)
TOOL_FIELDS = ("type", "function")
FUNCTION_FIELDS = ("name", "description", "parameters", "strict")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
# Fixed separators and no free whitespace: llguidance's options for the JSON it lets through.
LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
SYSTEM_ROLES = ("system", "developer")
EXAMPLE = json.dumps({"tool_call": {"name": "tool_name", "arguments": {"arg1": "some_value"}}})
SHOWN_CHARS = 80


class ToolsError(ValueError):
    """``tools``, ``tool_choice`` or a tool message this model cannot take; the message names the field path and
    what is accepted (the caller adds which row)."""


def shown(value: Any) -> str:
    """``repr(value)`` cut as ``chat_protocol.shown`` cuts it; not imported from there, which will import this."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


def _json_value(value: Any, field: str) -> Any:
    """A value or its JSON text (a ``/invocations`` column carries objects as strings)."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            raise ToolsError(f"{field} is text that is not JSON; got {shown(value)}") from None
    return value


@dataclass(frozen=True)
class Function:
    """One function of ``tools``; ``parameters`` is the JSON schema of its arguments (an object)."""

    name: str
    description: str | None
    parameters: dict[str, Any]
    strict: bool | None = None

    def described(self) -> dict[str, Any]:
        """How the prompt describes it: OpenAI's ``function`` without ``strict``."""
        described: dict[str, Any] = {"name": self.name}
        if self.description:
            described["description"] = self.description
        return {**described, "parameters": self.parameters}


def _unknown(fields: dict[str, Any], accepted: tuple[str, ...], where: str) -> None:
    extra = sorted(set(fields) - set(accepted))
    if extra:
        raise ToolsError(f"{where} has unknown field(s) {shown(extra)}; accepted: {', '.join(accepted)}")


def _function(tool: Any, where: str) -> Function:
    if not isinstance(tool, dict):
        raise ToolsError(f'{where} must be an object {{"type": "function", "function": {{...}}}}; got {shown(tool)}')
    _unknown(tool, TOOL_FIELDS, where)
    if tool.get("type") != "function":
        raise ToolsError(f"{where}.type must be 'function'; got {shown(tool.get('type'))}")
    spec = tool.get("function")
    if not isinstance(spec, dict):
        raise ToolsError(f"{where}.function must be an object with {', '.join(FUNCTION_FIELDS)}; got {shown(spec)}")
    where = f"{where}.function"
    _unknown(spec, FUNCTION_FIELDS, where)
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ToolsError(f"{where}.name must be 1 to 64 letters, digits, '_' or '-'; got {shown(name)}")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolsError(f"{where}.description must be a string; got {shown(description)}")
    parameters = spec.get("parameters", NO_PARAMETERS)
    if not isinstance(parameters, dict):
        raise ToolsError(f"{where}.parameters must be a JSON schema object; got {shown(parameters)}")
    if parameters.get("type", "object") != "object":
        raise ToolsError(f"{where}.parameters must describe an object (type 'object'); got {shown(parameters)}")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ToolsError(f"{where}.strict must be true or false; got {shown(strict)}")
    return Function(name, description, parameters, strict)


def read_tools(value: Any) -> tuple[Function, ...]:
    """OpenAI's ``tools`` (a list, or its JSON text): its functions, checked; ``None`` gives none."""
    value = _json_value(value, "tools")
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ToolsError(
            f'tools must be a non-empty list of {{"type": "function", "function": ...}}; got {shown(value)}'
        )
    functions = [_function(tool, f"tools[{number}]") for number, tool in enumerate(value)]
    first: dict[str, int] = {}
    for number, function in enumerate(functions):
        if function.name in first:
            raise ToolsError(
                f"tools[{number}].function.name {function.name!r} is already the name of tools[{first[function.name]}]"
            )
        first[function.name] = number
    return tuple(functions)


def read_tool_choice(value: Any, functions: tuple[Function, ...]) -> tuple[str, str | None]:
    """OpenAI's ``tool_choice`` as ``(mode, function name)``: ``auto`` when absent and there are tools, else ``none``;
    a named function gives ``("function", name)``."""
    value = _json_value(value, "tool_choice")
    if value is None:
        return (AUTO if functions else NONE), None
    if not functions:
        raise ToolsError(f"tool_choice is only accepted with tools; got {shown(value)} and no tools")
    if value in MODES:
        return value, None
    accepted = """'none', 'auto', 'required' or {"type": "function", "function": {"name": ...}}"""
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(value.get("function"), dict):
        raise ToolsError(f"tool_choice must be {accepted}; got {shown(value)}")
    _unknown(value, TOOL_FIELDS, "tool_choice")
    _unknown(value["function"], ("name",), "tool_choice.function")
    name = value["function"].get("name")
    names = [function.name for function in functions]
    if name not in names:
        raise ToolsError(f"tool_choice.function.name {shown(name)} is not among the tools ({', '.join(names)})")
    return FUNCTION, name


def _subschemas(schema: Any, visit: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """``schema`` with ``visit`` applied to it and to every schema inside it, bottom up; data (``const``, ``enum``,
    ``default``, ``examples``) is left alone, and so is a property whose name is a keyword."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas") and isinstance(
            value, dict
        ):
            out[key] = {name: _subschemas(item, visit) for name, item in value.items()}
        elif key in ("anyOf", "allOf", "oneOf", "prefixItems") and isinstance(value, list):
            out[key] = [_subschemas(item, visit) for item in value]
        elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"):
            out[key] = [_subschemas(i, visit) for i in value] if isinstance(value, list) else _subschemas(value, visit)
    return visit(out)


def _rebased(schema: dict[str, Any], base: str) -> dict[str, Any]:
    """``schema`` to be placed at JSON pointer ``base`` of the grammar: its local ``$ref``s ("#...") follow it."""

    def visit(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return {**node, "$ref": base + ref[1:]} if isinstance(ref, str) and ref.startswith("#") else node

    return _subschemas(schema, visit)


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` on each object schema that lists properties and does not say."""
    return _subschemas(schema, lambda node: {"additionalProperties": False, **node} if "properties" in node else node)


def _only(key: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: schema}, "required": [key], "additionalProperties": False}


def tool_guidance(
    functions: Iterable[Function], with_reply: bool, response_schema: dict[str, Any] | None = None
) -> tuple[str, str]:
    """The ``(kind, data)`` of ``set_guidance``: a call to one of ``functions``, or, ``with_reply``, that or a reply
    ``{"response": ...}`` (a string, or a value of ``response_schema``)."""
    defs: dict[str, Any] = {}
    calls = []
    for function in functions:
        key = f"tool-{function.name}"
        defs[key] = _rebased(_closed(function.parameters), f"#/$defs/{key}")
        call = {"name": {"const": function.name}, "arguments": {"$ref": f"#/$defs/{key}"}}
        calls.append({"type": "object", "properties": call, "required": list(call), "additionalProperties": False})
    root = _only("tool_call", calls[0] if len(calls) == 1 else {"anyOf": calls})
    if with_reply:
        reply: dict[str, Any] = {"type": "string"}
        if response_schema is not None:
            defs["response_format"] = _rebased(response_schema, "#/$defs/response_format")
            reply = {"$ref": "#/$defs/response_format"}
        root = {"anyOf": [root, _only("response", reply)]}
    return "json_schema", json.dumps({**root, "$defs": defs, "x-guidance": LAYOUT})


@dataclass(frozen=True)
class ToolPlan:
    """How one chat row uses tools. ``mode``: ``none``, ``auto``, ``required`` or ``function`` (then ``function`` is
    the name). ``functions``: the tools offered (none with ``none``). ``guidance``: for ``set_guidance``, or ``None``
    (``none``: the ``response_format``'s own, if any). ``structured``: a reply is a JSON value (``response_format``)."""

    mode: str
    functions: tuple[Function, ...] = ()
    function: str | None = None
    guidance: tuple[str, str] | None = None
    structured: bool = False

    @property
    def calls(self) -> bool:
        """Whether the answer is read as the generic JSON format: a tool call, or ``{"response": ...}``."""
        return self.mode != NONE


def plan(tools: Any, tool_choice: Any = None, response_format: tuple[str, str] | None = None) -> ToolPlan:
    """The row's plan from its ``tools`` and ``tool_choice`` and the guidance of its ``response_format`` (as
    ``response_format.guidance_of`` gives it). The guidance is not compiled here: see ``generation.check_guidance``."""
    functions = read_tools(tools)
    mode, name = read_tool_choice(tool_choice, functions)
    if mode == NONE:
        return ToolPlan(NONE, guidance=response_format, structured=response_format is not None)
    schema = None
    if response_format is not None:
        kind, data = response_format
        if kind != "json_schema":
            raise ToolsError(f"response_format with tools must be a JSON schema; got guidance of kind {kind!r}")
        schema = json.loads(data)
    callable_ = [f for f in functions if f.name == name] if mode == FUNCTION else functions
    guidance = tool_guidance(callable_, with_reply=mode == AUTO, response_schema=schema)
    return ToolPlan(mode, functions, name, guidance, structured=schema is not None)

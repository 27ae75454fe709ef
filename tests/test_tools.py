"""OpenAI tools (``tools``, ``tool_choice``): checks, prompt, grammar and the answer read back, not yet served.

The unit tier checks each function without a model. The integration tier renders conversations through the tiny
model's real chat template (transformers' and onnxruntime-genai's) and generates under the plan's guidance on the
tiny model exported to int4: a random model sampled with several seeds, so what passes is the grammar's doing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import onnxruntime_genai as og
import pytest

from llmflow.chat_model import generation
from llmflow.chat_model.chat_protocol import find_chat_template
from llmflow.chat_model.response_format import guidance_of
from llmflow.chat_model.tool_prompt import prepare, supports_native_tools, system_text
from llmflow.chat_model.tool_replies import Reply, ReplyStream, call_id, parse
from llmflow.chat_model.tools import NO_PARAMETERS, Function, ToolsError, plan, read_tool_choice, read_tools

# Bounded arguments (a short string, an enum behind a $ref): a random model ends them within the budget.
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
}
CLOCK_PARAMETERS = {
    "type": "object",
    "properties": {"zone": {"$ref": "#/$defs/Zone"}},
    "required": ["zone"],
    "$defs": {"Zone": {"enum": ["UTC", "CET"]}},
}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": WEATHER_PARAMETERS}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": CLOCK_PARAMETERS}}
PARAMETERS = {"weather": WEATHER_PARAMETERS, "clock": CLOCK_PARAMETERS}
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
HISTORY = [
    {"role": "system", "content": "Be brief."},
    *QUESTION,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, light rain"},
]


RESULT = {"tool": "weather", "tool_call_id": "call_1"}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def schema_of(tool_plan: Any) -> dict[str, Any]:
    kind, data = tool_plan.guidance
    assert kind == "json_schema"
    return json.loads(data)


# --- unit tier: checks ------------------------------------------------------------------------------------------


def test_tools_are_read_with_their_defaults_from_a_list_or_its_json_text():
    functions = read_tools([WEATHER, {"type": "function", "function": {"name": "ping", "description": "Ping."}}])
    assert functions == (Function("weather", None, WEATHER_PARAMETERS), Function("ping", "Ping.", NO_PARAMETERS))
    assert read_tools(json.dumps([WEATHER])) == functions[:1]
    assert read_tools(None) == ()


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([], r"tools must be a non-empty list"),
        (WEATHER, r"tools must be a non-empty list"),
        ("[not json", r"tools is text that is not JSON"),
        (["weather"], r"tools\[0\] must be an object"),
        ([{"type": "custom", "function": {}}], r"tools\[0\]\.type must be 'function'; got 'custom'"),
        ([{**WEATHER, "extra": 1}], r"tools\[0\] has unknown field\(s\) \['extra'\]; accepted: type, function"),
        ([{"type": "function"}], r"tools\[0\]\.function must be an object with name, description, parameters"),
        ([named("get weather")], r"tools\[0\]\.function\.name must be 1 to 64 letters, digits, '_' or '-'"),
        ([named("x" * 65)], r"tools\[0\]\.function\.name must be 1 to 64"),
        ([{"type": "function", "function": {}}], r"tools\[0\]\.function\.name must be .*; got None"),
        ([WEATHER, named("f" * 200)], r"tools\[1\]\.function\.name .*got 'fffff.*\.\.\. \(202 characters\)"),
        (
            [{"type": "function", "function": {"name": "f", "description": 3}}],
            r"tools\[0\]\.function\.description must be a string; got 3",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "object"}}],
            r"tools\[0\]\.function\.parameters must be a JSON schema object",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            r"tools\[0\]\.function\.parameters must describe an object \(type 'object'\)",
        ),
        (
            [{"type": "function", "function": {"name": "f", "strict": "yes"}}],
            r"tools\[0\]\.function\.strict must be true or false; got 'yes'",
        ),
        (
            [{"type": "function", "function": {"name": "f", "returns": {}}}],
            r"tools\[0\]\.function has unknown field\(s\) \['returns'\]",
        ),
        ([WEATHER, CLOCK, WEATHER], r"tools\[2\]\.function\.name 'weather' is already the name of tools\[0\]"),
    ],
)
def test_bad_tools_are_refused_naming_the_field(tools: Any, message: str):
    with pytest.raises(ToolsError, match=message):
        read_tools(tools)


def test_tool_choice_modes_default_and_a_named_function():
    functions = read_tools([WEATHER, CLOCK])
    assert read_tool_choice(None, functions) == ("auto", None)
    assert read_tool_choice(None, ()) == ("none", None)
    for mode in ("none", "auto", "required"):
        assert read_tool_choice(mode, functions) == (mode, None)
    assert read_tool_choice(named("clock"), functions) == ("function", "clock")
    assert read_tool_choice(json.dumps(named("clock")), functions) == ("function", "clock")


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("any", r"tool_choice must be 'none', 'auto', 'required' or \{\"type\": \"function\".*; got 'any'"),
        ({"type": "function", "name": "clock"}, r"tool_choice must be .*; got \{'type': 'function', 'name'"),
        (named("alarm"), r"tool_choice\.function\.name 'alarm' is not among the tools \(weather, clock\)"),
        ({**named("clock"), "strict": True}, r"tool_choice has unknown field\(s\) \['strict'\]"),
        ({"type": "function", "function": {"name": "clock", "x": 1}}, r"tool_choice\.function has unknown field"),
    ],
)
def test_a_bad_tool_choice_is_refused_naming_the_field(choice: Any, message: str):
    with pytest.raises(ToolsError, match=message):
        read_tool_choice(choice, read_tools([WEATHER, CLOCK]))


def test_a_tool_choice_without_tools_is_refused_as_openai_does():
    with pytest.raises(ToolsError, match="tool_choice is only accepted with tools; got 'required' and no tools"):
        plan(None, "required")


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "tool", "content": "18 C"}, r"messages\[1\]\.tool_call_id must be the id of the call it answers"),
        ({"role": "tool", "tool_call_id": "c", "content": 18}, r"messages\[1\]\.content must be a string or a list"),
        ({"role": "assistant", "tool_calls": []}, r"messages\[1\]\.tool_calls must be a non-empty list"),
        (
            {"role": "assistant", "tool_calls": [{**CALL, "id": ""}]},
            r"messages\[1\]\.tool_calls\[0\]\.id must be a non-empty string",
        ),
        (
            {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "weather", "arguments": {}}}]},
            r"messages\[1\]\.tool_calls\[0\]\.function\.arguments must be the arguments' JSON text",
        ),
        (
            {"role": "assistant", "tool_calls": [{**CALL, "type": "custom"}]},
            r"messages\[1\]\.tool_calls\[0\] must be an object \{\"id\", \"type\": \"function\"",
        ),
        (
            {"role": "assistant", "tool_calls": [{**CALL, "index": 0}]},
            r"messages\[1\]\.tool_calls\[0\] has unknown field\(s\) \['index'\]",
        ),
        (
            {"role": "tool", "tool_call_id": "call_9", "content": "x"},
            r"messages\[1\]\.tool_call_id 'call_9' answers no",
        ),
    ],
)
def test_bad_tool_messages_are_refused_naming_the_field(message: dict[str, Any], error: str):
    with pytest.raises(ToolsError, match=error):
        prepare([*QUESTION, message], [WEATHER])


# --- unit tier: the grammar -------------------------------------------------------------------------------------


def test_auto_guides_a_call_of_any_tool_or_a_reply_and_required_only_a_call():
    auto = schema_of(plan([WEATHER, CLOCK], "auto"))
    call, reply = auto["anyOf"]
    assert reply == {
        "type": "object",
        "properties": {"response": {"type": "string"}},
        "required": ["response"],
        "additionalProperties": False,
    }
    calls = call["properties"]["tool_call"]["anyOf"]
    assert [c["properties"]["name"] for c in calls] == [{"const": "weather"}, {"const": "clock"}]
    assert [c["properties"]["arguments"] for c in calls] == [
        {"$ref": "#/$defs/tool-weather"},
        {"$ref": "#/$defs/tool-clock"},
    ]
    assert auto["x-guidance"] == {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
    required = schema_of(plan([WEATHER, CLOCK], "required"))
    assert "anyOf" not in required and required["properties"]["tool_call"] == call["properties"]["tool_call"]


def test_a_named_function_guides_a_call_of_that_one_and_none_guides_nothing():
    only = schema_of(plan([WEATHER, CLOCK], named("clock")))
    assert only["properties"]["tool_call"]["properties"]["name"] == {"const": "clock"}
    none = plan([WEATHER, CLOCK], "none")
    assert (none.mode, none.functions, none.guidance, none.calls) == ("none", (), None, False)
    # With none, a response_format guides as it does without tools.
    city = guidance_of({"type": "json_object"})
    assert plan([WEATHER], "none", city).guidance == city


def test_parameters_keep_their_refs_rebased_and_get_no_extra_keys_unless_they_say():
    parameters = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "string"}}},
            "loose": {"type": "object", "properties": {}, "additionalProperties": True},
            "zone": {"$ref": "#/$defs/Zone"},
            "data": {"const": {"$ref": "#/not/a/schema", "properties": 1}},
        },
        "$defs": {"Zone": {"enum": ["UTC"]}},
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    defs = schema_of(plan([tool], "required"))["$defs"]["tool-f"]
    assert defs["additionalProperties"] is False
    assert defs["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in defs["properties"]["properties"]["properties"]  # a property, not a schema
    assert defs["properties"]["loose"]["additionalProperties"] is True
    assert defs["properties"]["zone"] == {"$ref": "#/$defs/tool-f/$defs/Zone"}
    assert defs["properties"]["data"] == parameters["properties"]["data"]  # data is not rewritten


def test_with_a_response_format_auto_replies_with_its_schema_and_content_is_its_json():
    city = {"type": "object", "properties": {"city": {"$ref": "#/$defs/Name"}}, "$defs": {"Name": {"type": "string"}}}
    response_format = guidance_of({"type": "json_schema", "json_schema": {"name": "c", "schema": city}})
    tool_plan = plan([WEATHER], "auto", response_format)
    schema = schema_of(tool_plan)
    assert schema["anyOf"][1]["properties"]["response"] == {"$ref": "#/$defs/response_format"}
    assert schema["$defs"]["response_format"]["properties"]["city"] == {"$ref": "#/$defs/response_format/$defs/Name"}
    reply = parse('{"response": {"city": "Paris"}}', tool_plan, "stop")
    assert reply == Reply('{"city": "Paris"}', (), "stop")


# --- unit tier: the prompt --------------------------------------------------------------------------------------


def test_the_generic_prompt_describes_the_tools_in_the_system_message_merged_with_the_own():
    prompt = prepare(HISTORY, [WEATHER, CLOCK], "auto")
    system = prompt.messages[0]
    assert system["role"] == "system" and prompt.tools is None
    own, described = system["content"].split("\n\n", 1)
    assert own == "Be brief."
    assert described.startswith("You can call any of the following tools to satisfy the user's requests: [")
    assert json.dumps(read_tools([WEATHER])[0].described()) in described
    assert '{"tool_call": {"name": "tool_name", "arguments": {"arg1": "some_value"}}}' in described
    assert described.endswith(
        "either with `tool_call` (a request to call tools) or with `response` reply to the user's request"
    )
    assert prepare(QUESTION, [WEATHER, CLOCK], "auto").messages[0] == {"role": "system", "content": described}


def test_the_generic_prompt_renders_calls_and_results_as_text():
    messages = prepare(HISTORY, [WEATHER], "required").messages
    assert messages[1:] == (
        QUESTION[0],
        {"role": "assistant", "content": '{"tool_call": {"name": "weather", "arguments": {"city": "Paris"}}}'},
        {"role": "user", "content": json.dumps({"tool_response": {**RESULT, "content": "18 C, light rain"}})},
    )
    assert "call one of the tools" in messages[0]["content"]
    assert "call the tool `clock`" in prepare(QUESTION, [WEATHER, CLOCK], named("clock")).messages[0]["content"]


def test_several_calls_with_content_keep_their_ids_and_text_and_none_renders_history_without_tools():
    second = {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": "not json"}}
    turn = {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, second]}
    messages = prepare([*QUESTION, turn], [WEATHER, CLOCK], "none").messages
    calls = [
        {"id": "call_1", "name": "weather", "arguments": {"city": "Paris"}},
        {"id": "call_2", "name": "clock", "arguments": "not json"},
    ]
    assert messages == (
        QUESTION[0],
        {"role": "assistant", "content": "Let me look.\n" + json.dumps({"tool_calls": calls})},
    )
    # Without tools at all, a conversation that used them still renders.
    assert prepare(HISTORY).messages[2]["content"].startswith('{"tool_call": ')


def test_a_template_with_tools_gets_them_and_the_conversation_as_it_is():
    prompt = prepare(HISTORY, [WEATHER], "auto", supports_native=True)
    assert json.loads(prompt.tools) == [
        {"type": "function", "function": {"name": "weather", "parameters": WEATHER_PARAMETERS}}
    ]
    assert list(prompt.messages[1:]) == HISTORY[1:]
    assert prompt.messages[0]["content"].startswith("Be brief.\n\nExample tool call syntax:")
    assert "You can call" not in prompt.messages[0]["content"]
    assert system_text(prompt.plan, native=True) in prompt.messages[0]["content"]
    assert prepare(HISTORY, [WEATHER], "none", supports_native=True).tools is None


def test_a_developer_message_takes_the_tools_as_a_system_message_would():
    messages = prepare([{"role": "developer", "content": "Be brief."}, *QUESTION], [WEATHER]).messages
    assert messages[0]["role"] == "developer" and messages[0]["content"].startswith("Be brief.\n\nYou can call")


# --- unit tier: the answer read back ----------------------------------------------------------------------------


def streamed(text: str, tool_plan: Any, finish_reason: str, size: int = 1) -> tuple[str, str, Reply, list[Any]]:
    """Feed ``text`` in pieces of ``size``: the content and arguments the deltas join to, the reply, the deltas."""
    stream = ReplyStream(tool_plan)
    deltas = [delta for i in range(0, len(text), size) for delta in stream.feed(text[i : i + size])]
    last, reply = stream.close(finish_reason)
    deltas += last
    content = "".join(delta.get("content", "") for delta in deltas)
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d)
    return content, arguments, reply, deltas


def test_a_call_is_read_into_openais_shape_with_a_fresh_id():
    tool_plan = plan([WEATHER, CLOCK], "auto")
    reply = parse('{"tool_call": {"name": "clock", "arguments": {"zone": "CET"}}}', tool_plan, "stop")
    [call] = reply.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call == {"id": call["id"], "type": "function", "function": {"name": "clock", "arguments": '{"zone": "CET"}'}}
    assert reply.message() == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert reply.finish_reason == "tool_calls"
    assert len({call_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_a_streamed_reply_joins_to_the_parsed_one_whatever_the_pieces(size: int):
    tool_plan = plan([WEATHER], "auto")
    text = json.dumps({"response": 'Il fait 18 °C\n"pluie" \\ 🌧 ok'}, ensure_ascii=True)
    content, arguments, reply, _ = streamed(text, tool_plan, "stop", size)
    assert content == reply.content == 'Il fait 18 °C\n"pluie" \\ 🌧 ok' and arguments == ""
    call = '{"tool_call": {"name": "weather", "arguments": {"city": "Nice \\u00e9"}}}'
    content, arguments, reply, deltas = streamed(call, tool_plan, "stop", size)
    assert content == "" and arguments == reply.tool_calls[0]["function"]["arguments"] == '{"city": "Nice \\u00e9"}'
    first = deltas[0]["tool_calls"][0]
    assert first == {"index": 0, "id": reply.tool_calls[0]["id"], "type": "function",
                     "function": {"name": "weather", "arguments": ""}}  # fmt: skip


def test_a_text_cut_short_is_read_as_far_as_it_goes():
    tool_plan = plan([WEATHER], "auto")
    content, _, reply, _ = streamed('{"response": "Il pleut \\u00e', tool_plan, "length")
    assert content == reply.content == "Il pleut " and reply.finish_reason == "length"
    _, arguments, reply, _ = streamed(
        '{"tool_call": {"name": "weather", "arguments": {"city": "Pa', tool_plan, "length"
    )
    assert arguments == reply.tool_calls[0]["function"]["arguments"] == '{"city": "Pa'
    assert reply.finish_reason == "length"
    content, _, reply, _ = streamed('{"tool_call": {"name": "wea', tool_plan, "length")
    assert content == reply.content == '{"tool_call": {"name": "wea' and reply.tool_calls == ()


def test_without_a_plan_for_calls_the_text_is_the_content_as_it_comes():
    tool_plan = plan([WEATHER], "none")
    text = '{"tool_call": {"name": "weather", "arguments": {}}}'
    content, _, reply, deltas = streamed(text, tool_plan, "stop", 5)
    assert content == reply.content == text and reply.tool_calls == () and reply.finish_reason == "stop"
    assert len(deltas) == len(range(0, len(text), 5))  # each piece is sent as it comes


# --- integration tier: the tiny model's template and guided generation -----------------------------------------


@pytest.fixture(scope="module")
def tiny(onnx_dir: Path) -> tuple[og.Model, og.Tokenizer, str]:
    model = og.Model(str(onnx_dir))
    return model, og.Tokenizer(model), find_chat_template(onnx_dir)


def og_prompt(tiny: tuple[og.Model, og.Tokenizer, str], messages: Any, tools: str | None = None) -> str:
    _, tokenizer, template = tiny
    return tokenizer.apply_chat_template(json.dumps(list(messages)), template_str=template, tools=tools or "")


def test_the_generic_prompt_goes_through_the_tiny_models_template_in_transformers_and_og(tiny, tiny_model_dir: Path):
    from transformers import AutoTokenizer

    messages = prepare(HISTORY, [WEATHER], "auto").messages
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = hf.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    assert text == og_prompt(tiny, messages)
    assert text.startswith("<|system|>\nBe brief.\n\nYou can call any of the following tools")
    assert '<|assistant|>\n{"tool_call": {"name": "weather", "arguments": {"city": "Paris"}}}<|end|>\n' in text
    assert '<|user|>\n{"tool_response": {"tool": "weather", "tool_call_id": "call_1", "content": "18 C' in text
    assert text.endswith("<|assistant|>\n")
    # Left as they are, the tiny template prints the call's null content as None and drops the tool message (og;
    # transformers raises on the null content).
    raw = og_prompt(tiny, HISTORY)
    assert "18 C" not in raw and "<|assistant|>\nNone<|end|>" in raw


def test_only_a_template_that_renders_tools_calls_and_results_is_native(tiny):
    model, tokenizer, template = tiny

    def probe(source: str) -> bool:
        return supports_native_tools(
            lambda m, t: tokenizer.apply_chat_template(m, template_str=source, tools=t, add_generation_prompt=False)
        )

    smollm2 = Path("build/smollm2-135m-instruct/chat_template.jinja")
    assert not probe(template)
    if smollm2.is_file():
        assert not probe(smollm2.read_text(encoding="utf-8"))
    native = (
        "{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}{% for m in messages %}{{ m.role }}: "
        "{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
    )
    assert probe(native)
    assert not probe(native.replace("{{ m.tool_calls | tojson }}", "calls"))
    prompt = prepare(QUESTION, [WEATHER], "auto", supports_native=True)
    rendered = tokenizer.apply_chat_template(json.dumps(list(prompt.messages)), template_str=native, tools=prompt.tools)
    assert rendered.startswith('Tools: [{"type": "function", "function": {"name": "weather"')


def generate(tiny, prompt: Any, seed: int | None) -> tuple[list[str], str]:
    """The pieces of text the tiny model generates for ``prompt`` under its plan's guidance, decoded token by token
    as the pyfunc decodes them, and the finish_reason."""
    model, tokenizer, _ = tiny
    ids = tokenizer.encode(og_prompt(tiny, prompt.messages, prompt.tools))
    budget = 512 - len(ids)  # the tiny model's context
    assert budget >= 64, f"the prompt takes {len(ids)} of the tiny model's 512 tokens"
    sampling = {} if seed is None else {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "seed": seed}
    generator = generation.start(model, [ids], tokenizer.pad_token_id, budget, prompt.plan.guidance, **sampling)
    eos, decoder = set(tokenizer.eos_token_ids.tolist()), tokenizer.create_stream()
    tokens = [token for [token] in generation.steps(generator) if token not in eos]
    return [decoder.decode(token) for token in tokens], "length" if len(tokens) >= budget else "stop"


def check_call(reply: Reply, names: set[str]) -> None:
    [call] = reply.tool_calls
    assert reply.finish_reason == "tool_calls" and reply.content is None
    assert call["function"]["name"] in names
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMETERS[call["function"]["name"]])


@pytest.mark.parametrize("choice", ["required", named("clock"), named("weather")], ids=["required", "clock", "weather"])
def test_required_or_a_named_function_always_gives_a_call_whose_arguments_validate(tiny, choice: Any):
    prompt = prepare(QUESTION, [WEATHER, CLOCK], choice)
    assert generation.check_guidance(tiny[0], prompt.plan.guidance) is None
    names = {"weather", "clock"} if choice == "required" else {choice["function"]["name"]}
    made = set()
    for seed in [None, *range(8)]:
        pieces, finish_reason = generate(tiny, prompt, seed)
        reply = parse("".join(pieces), prompt.plan, finish_reason)
        check_call(reply, names)
        made.add(reply.tool_calls[0]["function"]["name"])
    assert made == names  # with required, these seeds call each tool


def test_auto_gives_a_call_that_validates_or_a_reply_and_streams_what_it_parses(tiny):
    prompt = prepare(QUESTION, [WEATHER], "auto")
    kinds = []
    for seed in range(8):
        pieces, finish_reason = generate(tiny, prompt, seed)
        text = "".join(pieces)
        reply = parse(text, prompt.plan, finish_reason)
        if reply.tool_calls:
            check_call(reply, {"weather"})
        elif finish_reason == "stop":
            assert reply.content == json.loads(text)["response"]
        else:  # cut by the budget inside the reply's string: its text so far (the unit tier checks the decoding)
            assert text.startswith('{"response": "') and reply.finish_reason == "length"
        kinds.append("call" if reply.tool_calls else "reply")
        # The same text as it came, token by token, read as the endpoint will stream it.
        stream = ReplyStream(prompt.plan)
        deltas = [delta for piece in pieces for delta in stream.feed(piece)]
        last, streamed_reply = stream.close(finish_reason)
        joined = "".join(delta.get("content", "") for delta in [*deltas, *last])
        assert joined == (streamed_reply.content or "") == (reply.content or "")
    # Both are open to the model: these seeds give each (the tiny model and og's sampling are deterministic).
    assert set(kinds) == {"call", "reply"}


def test_none_offers_no_tools_and_its_answer_is_never_a_call(tiny):
    prompt = prepare(QUESTION, [WEATHER], "none")
    assert prompt.plan.guidance is None and og_prompt(tiny, prompt.messages) == og_prompt(tiny, QUESTION)
    for seed in [None, 0, 1, 2]:
        pieces, finish_reason = generate(tiny, prompt, seed)
        text = "".join(pieces)
        assert parse(text, prompt.plan, finish_reason) == Reply(text, (), finish_reason)


def test_a_parameters_schema_guidance_cannot_compile_is_named_by_check_guidance(tiny):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "$ref": "#/$defs/missing"}}}
    problem = generation.check_guidance(tiny[0], plan([bad], "auto").guidance)
    assert problem is not None and "missing" in problem

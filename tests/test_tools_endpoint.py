"""OpenAI tools served: through the endpoint (``tools``, ``tool_choice``, ``tool`` messages, calls whole and
streamed) and through the pyfunc's ``predict`` with its logged signature (what ``/invocations`` enforces).

Before: the endpoint answered ``tools`` with a 400 ("tools are not supported by this endpoint"), and the pyfunc
refused a ``tool`` message. The unit tier runs the app in-process over a model that writes a scripted answer, to
check the shapes and the 400s; the integration tier runs the tiny Phi-3 exported to int4 (a random model, so what
parses is the guidance's doing) behind the same app, with the official ``openai`` client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import mlflow
import openai
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow.pyfunc import PythonModelContext

from llmflow.chat_model import chat_protocol as protocol
from llmflow.chat_model.rows import Row
from llmflow.serving.app import Limits, create_app
from llmflow.serving.holder import ModelHolder, Served, Target
from llmflow.serving.metrics import Metrics
from llmflow.serving.openai_protocol import read_call
from llmflow.serving.scheduler import BatchScheduler
from llmflow.serving.tracing import Tracer
from llmflow.serving.transformers_chat import TransformersChat
from tests.servers import log_chat_model

NAME, KEY = "tiny-chat", "tools-key"
DEFAULTS = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 50}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}},
    "required": ["city"],
}
CLOCK_PARAMETERS = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "clock": CLOCK_PARAMETERS}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": CLOCK_PARAMETERS}}
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ANSWERED = [
    *PARIS,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, light rain"},
]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


class CharDecoder:
    def decode(self, token: int) -> str:
        return chr(token)


class ScriptedChat:
    """A chat backend that writes ``SCRIPT`` (a call of the first tool offered, or a reply), one character a token,
    after the model's own checks (``chat_protocol``); ``last`` is the last request it took."""

    context_length = 4096
    model_name = "scripted"
    last: protocol.Request | None = None

    def prepare(self, model_input: Any, params: dict[str, Any] | None) -> list[Row]:
        rows = []
        for request in protocol.parse_request(model_input, DEFAULTS, params):
            budget = protocol.token_budget(request, 4, self.context_length)
            rows.append(Row(request, [0] * 4, budget, CharDecoder(), protocol.StopScanner(request.settings.stop)))
            self.last = request
        return rows

    def generate_steps(self, batch: list[Row]) -> Iterator[list[tuple[int, str]]]:
        for index, row in enumerate(batch):
            plan = row.request.tool_prompt.plan
            if plan.calls and plan.mode != "auto":
                name = plan.function or plan.functions[0].name
                text = json.dumps({"tool_call": {"name": name, "arguments": {"city": "Paris \u00e9"}}})
            else:
                text = json.dumps({"response": "It rains."}) if plan.calls else "It rains."
            for char in text:
                if row.finish_reason is None and (piece := row.push(ord(char), frozenset())):
                    yield [(index, piece)]
            if row.finish_reason is None and (piece := row.push(-1, frozenset({-1}))):
                yield [(index, piece)]


def serve(model: Any) -> tuple[TestClient, ModelHolder]:
    """The endpoint's app over ``model``, in-process."""
    metrics = Metrics()
    holder = ModelHolder(
        f"models:/{NAME}@champion", NAME, metrics, lambda m, v: BatchScheduler(m, 4, 8, metrics, v), 0.0
    )
    holder.current = Served(Target(f"models:/{NAME}/1", "1", None), NAME, model, holder.make_scheduler(model, "1"))
    app = create_app(holder, metrics, (KEY.encode(),), Limits(1_048_576, 120.0, 1), Tracer(0.0))
    return TestClient(app, raise_server_exceptions=False), holder


def client_of(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, max_retries=0, http_client=http)


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[TestClient, ScriptedChat]]:
    model = ScriptedChat()
    http, holder = serve(model)
    yield http, model
    holder.current.scheduler.close()


def post(http: TestClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    return response.status_code, response.json()


def streamed_call(stream: Any) -> tuple[dict[str, Any] | None, str, str | None]:
    """What an OpenAI stream joins to, as a client accumulates it: the call (from ``delta.tool_calls`` by
    ``index``), the content and the last ``finish_reason``."""
    call, content, finish_reason = None, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        finish_reason = choice.finish_reason or finish_reason
        for delta in choice.delta.tool_calls or ():
            assert delta.index == 0  # one call per answer
            if delta.id is not None:
                assert call is None and delta.type == "function" and delta.function.arguments == ""
                call = {"id": delta.id, "type": "function", "function": {"name": delta.function.name, "arguments": ""}}
            else:
                assert delta.function.name is None and call is not None
                call["function"]["arguments"] += delta.function.arguments
    return call, content, finish_reason


def check_call(call: Any, names: set[str]) -> None:
    """An OpenAI tool call whose arguments parse and validate against its function's parameters."""
    call = call if isinstance(call, dict) else call.model_dump()
    assert call["id"].startswith("call_") and call["type"] == "function" and call["function"]["name"] in names
    jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMETERS[call["function"]["name"]])


# --- unit tier: the request read, the answer's shapes and the 400s ------------------------------------------------


def test_the_endpoint_forwards_tools_and_tool_choice_and_drops_the_default_none_without_tools():
    body = {"messages": ANSWERED, "tools": [WEATHER], "tool_choice": named("get_weather"), "parallel_tool_calls": False}
    request = read_call(body).request
    assert request["messages"] == ANSWERED
    assert (request["tools"], request["tool_choice"], request["parallel_tool_calls"]) == (
        [WEATHER],
        named("get_weather"),
        False,
    )
    assert read_call({"messages": PARIS, "tool_choice": "none"}).request == {"messages": PARIS}
    # A null field of a function is not given (the model then uses its default, no parameters).
    bare = read_call(
        {"messages": PARIS, "tools": [{"type": "function", "function": {"name": "f", "parameters": None}}]}
    )
    assert bare.request["tools"] == [named("f")]


def test_a_call_is_answered_in_openais_shape(scripted: tuple[TestClient, ScriptedChat]):
    http, _ = scripted
    status, answer = post(http, {"messages": PARIS, "tools": [WEATHER], "tool_choice": "required"})
    assert status == 200, answer
    [choice] = answer["choices"]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert call == {
        "id": call["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris \\u00e9"}'},
    }
    check_call(call, {"get_weather"})
    # auto: this script replies; the reply's text is the content, not its JSON wrapper.
    status, answer = post(http, {"messages": PARIS, "tools": [WEATHER]})
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "It rains."}
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_a_call_streams_its_id_and_name_then_its_arguments(scripted: tuple[TestClient, ScriptedChat]):
    http, _ = scripted
    client = client_of(http)
    stream = client.chat.completions.create(
        model=NAME, messages=PARIS, tools=[WEATHER, CLOCK], tool_choice=named("clock"), stream=True
    )
    call, content, finish_reason = streamed_call(stream)
    assert (content, finish_reason) == ("", "tool_calls")
    assert call["function"] == {"name": "clock", "arguments": '{"city": "Paris \\u00e9"}'}
    whole = client.chat.completions.create(
        model=NAME, messages=PARIS, tools=[WEATHER, CLOCK], tool_choice=named("clock")
    )
    assert whole.choices[0].message.tool_calls[0].function.model_dump() == call["function"]
    stream = client.chat.completions.create(model=NAME, messages=PARIS, tools=[WEATHER], stream=True)
    assert streamed_call(stream) == (None, "It rains.", "stop")


def test_the_openai_client_round_trip_reaches_the_model(scripted: tuple[TestClient, ScriptedChat]):
    """Tools -> a call -> the assistant turn as the client got it and the tool's result -> a final answer."""
    http, model = scripted
    client = client_of(http)
    messages: list[Any] = list(PARIS)
    first = client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], tool_choice="required")
    message = first.choices[0].message
    [call] = message.tool_calls
    messages += [message, {"role": "tool", "tool_call_id": call.id, "content": "18 C, light rain"}]
    final = client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], tool_choice="none")
    assert final.choices[0].message.content == "It rains." and final.choices[0].message.tool_calls is None
    sent = model.last.tool_prompt.messages  # the conversation the template got: the call and the result as text
    assert sent[1] == {"role": "assistant", "content": '{"tool_call": {"name": "get_weather", "arguments": '
                                                      '{"city": "Paris \\u00e9"}}}'}  # fmt: skip
    result = {"tool": "get_weather", "tool_call_id": call.id, "content": "18 C, light rain"}
    assert json.loads(sent[2]["content"]) == {"tool_response": result} and sent[2]["role"] == "user"


BAD = {
    "a name the model refuses": (
        {"tools": [named("get weather")]},
        "tools[0].function.name",
        "tools[0].function.name must be 1 to 64 letters, digits, '_' or '-'; got 'get weather'",
    ),
    "parameters that are no object schema": (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        "tools[0].function.parameters",
        "must describe an object (type 'object')",
    ),
    "a tool that is no function": ({"tools": [{"type": "custom"}]}, "tools[0].type", "tools[0].type must be"),
    "an unknown field of a function": (
        {"tools": [{"type": "function", "function": {"name": "f", "returns": {}}}]},
        "tools[0].function.returns",
        "tools[0].function has unsupported field(s) ['returns']",
    ),
    "an unknown named function": (
        {"tools": [WEATHER], "tool_choice": named("clock")},
        "tool_choice.function.name",
        "tool_choice.function.name 'clock' is not among the tools (get_weather)",
    ),
    "a tool_choice that is no mode": ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice", "'required' or"),
    "a tool_choice without tools": ({"tool_choice": named("clock")}, "tool_choice", "only allowed when tools"),
    "a tool message answering no call": (
        {"messages": [*PARIS, {"role": "tool", "tool_call_id": "call_9", "content": "18 C"}]},
        "messages[1].tool_call_id",
        "messages[1].tool_call_id 'call_9' answers no tool call of an earlier assistant message",
    ),
    "a tool message without its call's id": (
        {"messages": [*PARIS, {"role": "tool", "content": "18 C"}]},
        "messages[1].tool_call_id",
        "messages[1].tool_call_id is required",
    ),
    "a call whose arguments are an object": (
        {
            "messages": [
                *PARIS,
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "messages[1].tool_calls[0].function.arguments must be a string; got dict {}",
    ),
    "an assistant turn with neither content nor calls": (
        {"messages": [*PARIS, {"role": "assistant", "content": None}]},
        "messages[1].content",
        "unless the turn has tool_calls",
    ),
    "parallel_tool_calls that is no boolean": (
        {"tools": [WEATHER], "parallel_tool_calls": "yes"},
        "parallel_tool_calls",
        "parallel_tool_calls must be true or false",
    ),
    "the deprecated functions": ({"functions": [{"name": "f"}]}, "functions", "deprecated API) are not supported"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tools_are_a_400_whose_param_names_the_field(scripted: tuple[TestClient, ScriptedChat], case: str):
    fields, param, says = BAD[case]
    status, answer = post(scripted[0], {"messages": PARIS, **fields})
    assert status == 400, answer
    assert answer["error"]["param"] == param and says in answer["error"]["message"], answer


def test_the_model_reads_tools_as_json_text_and_refuses_them_with_a_raw_prompt():
    """What ``/invocations`` carries: ``tools`` and ``tool_choice`` as JSON text in string columns."""
    row = {"messages": PARIS, "tools": json.dumps([WEATHER]), "tool_choice": json.dumps(named("get_weather"))}
    [request] = protocol.parse_request(pd.DataFrame([row]), DEFAULTS, None)
    assert (
        request.tool_prompt.plan.mode == "function" and request.settings.guidance == request.tool_prompt.plan.guidance
    )
    assert request.settings.alone and request.tool_fields == ("tools", "tool_choice")
    with pytest.raises(protocol.Refused, match="row 1: tools is text that is not JSON") as caught:
        protocol.parse_request([row, {**row, "tools": "[{"}], DEFAULTS, None)
    assert caught.value.param == "tools"
    with pytest.raises(protocol.Refused, match="tools is only accepted with messages, not with a raw prompt"):
        protocol.parse_request({"prompt": "p", "tools": json.dumps([WEATHER])}, DEFAULTS, None)


def test_the_transformers_backend_refuses_tools_by_name():
    backend = TransformersChat.__new__(TransformersChat)  # the checks come before the pipeline is used
    backend.defaults, backend.context_length = dict(DEFAULTS), 512
    for fields in ({"tools": [WEATHER]}, {"tools": [WEATHER], "tool_choice": "none"}):
        with pytest.raises(protocol.Refused, match="tools is not supported by the transformers backend") as caught:
            backend.prepare({"messages": PARIS, **fields}, None)
        assert caught.value.param == "tools"


# --- integration tier: the tiny model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(onnx_dir: Path) -> Any:
    from llmflow.chat_model.onnx_chat_model import OnnxChatModel

    model = OnnxChatModel()
    model.load_context(PythonModelContext(artifacts={"onnx": str(onnx_dir)}, model_config=DEFAULTS))
    return model


@pytest.fixture(scope="module")
def client(tiny: Any) -> Iterator[openai.OpenAI]:
    http, holder = serve(tiny)
    yield client_of(http)
    holder.current.scheduler.close()


@pytest.mark.parametrize(
    "choice", ["required", named("clock"), named("get_weather")], ids=["required", "clock", "weather"]
)
def test_required_or_a_named_function_gives_a_call_that_validates_whole_and_streamed(
    client: openai.OpenAI, choice: Any
):
    names = set(PARAMETERS) if choice == "required" else {choice["function"]["name"]}
    whole = client.chat.completions.create(model=NAME, messages=PARIS, tools=[WEATHER, CLOCK], tool_choice=choice)
    [call] = whole.choices[0].message.tool_calls
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    check_call(call, names)
    stream = client.chat.completions.create(
        model=NAME, messages=PARIS, tools=[WEATHER, CLOCK], tool_choice=choice, stream=True
    )
    streamed, content, finish_reason = streamed_call(stream)
    assert (content, finish_reason) == ("", "tool_calls")
    assert streamed["function"] == call.function.model_dump()  # greedy: the same call, with an id of its own
    sampled = client.chat.completions.create(
        model=NAME, messages=PARIS, tools=[WEATHER, CLOCK], tool_choice=choice, temperature=1.0, seed=3
    )
    check_call(sampled.choices[0].message.tool_calls[0], names)


def test_none_never_calls(client: openai.OpenAI):
    for seed in (0, 1, 2):
        answer = client.chat.completions.create(
            model=NAME, messages=PARIS, tools=[WEATHER], tool_choice="none", temperature=1.0, seed=seed, max_tokens=32
        )
        assert answer.choices[0].message.tool_calls is None and isinstance(answer.choices[0].message.content, str)
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_round_trip_with_the_openai_client_is_answered(client: openai.OpenAI):
    messages: list[Any] = list(PARIS)
    first = client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], tool_choice="required")
    message = first.choices[0].message
    [call] = message.tool_calls
    messages += [message, {"role": "tool", "tool_call_id": call.id, "content": "18 C, light rain"}]
    final = client.chat.completions.create(
        model=NAME, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=16
    )
    # The tiny model was trained on short answers: its text may be empty, but it is text, not a call.
    assert final.choices[0].message.tool_calls is None and final.choices[0].message.content is not None
    assert final.choices[0].finish_reason in ("stop", "length")
    # auto after the result: a reply or another call, each in OpenAI's shape.
    auto = client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER]).choices[0]
    if auto.message.tool_calls:
        check_call(auto.message.tool_calls[0], {"get_weather"})
    else:
        assert isinstance(auto.message.content, str) and auto.finish_reason in ("stop", "length")


def test_the_pyfunc_with_its_signature_takes_tools_as_json_text(onnx_dir: Path, tmp_path: Path):
    """The ``/invocations`` path: the logged model's signature enforced on a DataFrame of requests whose ``tools``
    and ``tool_choice`` are JSON text and whose conversation holds a call and its result."""
    from llmflow.log_pyfunc import build_signature

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("tools", artifact_location=(tmp_path / "artifacts").as_uri())
        config = {**DEFAULTS, "model_name": "tiny"}
        model_uri = log_chat_model(onnx_dir, experiment, config, signature=build_signature(DEFAULTS))
        loaded = mlflow.pyfunc.load_model(model_uri)
        tools, weather = json.dumps([WEATHER, CLOCK]), json.dumps([WEATHER])  # the tiny model's context: 512 tokens
        rows = pd.DataFrame(
            [
                {"messages": PARIS, "tools": tools, "tool_choice": json.dumps(named("get_weather")), "max_tokens": 64},
                {
                    "messages": ANSWERED,
                    "tools": weather,
                    "tool_choice": "required",
                    "parallel_tool_calls": False,
                    "max_tokens": 64,
                },
                {"messages": ANSWERED, "tools": weather, "tool_choice": "none", "max_tokens": 8},
            ]
        )
        named_call, required, none = loaded.predict(rows)
        for completion in (named_call, required):
            [choice] = completion["choices"]
            assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
            check_call(choice["message"]["tool_calls"][0], {"get_weather"})
        assert (
            "tool_calls" not in none["choices"][0]["message"] and none["choices"][0]["message"]["content"] is not None
        )
        # The body /invocations takes, converted and enforced as the scoring server does.
        body = {"dataframe_records": [{"messages": ANSWERED, "tools": weather, "tool_choice": "required"}]}
        [served] = mlflow.models.validate_serving_input(model_uri, json.dumps(body))
        check_call(served["choices"][0]["message"]["tool_calls"][0], {"get_weather"})
        chunks = list(loaded.predict_stream({"messages": PARIS, "tools": tools, "tool_choice": "required"}))
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
        arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
        assert deltas[0]["tool_calls"][0]["function"]["arguments"] == "" and json.loads(arguments)
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    finally:
        mlflow.set_tracking_uri(None)

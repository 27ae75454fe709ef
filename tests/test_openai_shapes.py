"""The request shapes of the OpenAI endpoint, in-process: the app over a model that answers with the conversation it
was given (as JSON), so a test sees what reached the model. The ``openai`` client talks to the same app through
Starlette's test client. tests/test_openai_server.py runs the same protocol on a real server and the tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from llmflow.chat_model import chat_protocol as protocol
from llmflow.chat_model.rows import Row
from llmflow.serving.app import Limits, create_app
from llmflow.serving.holder import ModelHolder, Served, Target, served_names
from llmflow.serving.metrics import Metrics
from llmflow.serving.openai_protocol import BadRequest, read_call
from llmflow.serving.scheduler import BatchScheduler
from llmflow.serving.tracing import Tracer

KEY = "shapes-key"
URI, NAME, VERSION, OWN_NAME = "models:/tiny-chat@champion", "tiny-chat", "3", "local/echo"
SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]
SYSTEM = {"role": "system", "content": "Answer briefly."}
DEFAULTS = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "top_k": 50}
BIG = "What is the capital of Spain? " * 1700  # 51 KB


class CharDecoder:
    def decode(self, token: int) -> str:
        return chr(token)


class EchoChat:
    """A chat backend (``prepare``, ``generate_steps``, ``context_length``) whose answer is the conversation it was
    given, after the model's own checks (``chat_protocol``): what reached the model, as JSON."""

    context_length = 4096
    model_name = OWN_NAME

    def prepare(self, model_input: Any, params: dict[str, Any] | None) -> list[Row]:
        rows = []
        for request in protocol.parse_request(model_input, DEFAULTS, params):
            budget = protocol.token_budget(request, 4, self.context_length)
            rows.append(Row(request, [0] * 4, budget, CharDecoder(), protocol.StopScanner(request.settings.stop)))
        return rows

    def generate_steps(self, batch: list[Row]) -> Iterator[list[tuple[int, str]]]:
        for index, row in enumerate(batch):
            for char in json.dumps(list(row.request.messages)):
                if row.finish_reason is None and (text := row.push(ord(char), frozenset())):
                    yield [(index, text)]
            if row.finish_reason is None and (text := row.push(-1, frozenset({-1}))):
                yield [(index, text)]


def build(
    keys: tuple = (KEY.encode(),), max_queue: int = 8, max_body: int = 1_048_576, loaded: bool = True
) -> tuple[TestClient, ModelHolder]:
    metrics = Metrics()
    holder = ModelHolder(
        URI, NAME, metrics, lambda model, version: BatchScheduler(model, 4, max_queue, metrics, version)
    )
    if loaded:
        model = EchoChat()
        holder.current = Served(
            Target(f"models:/{NAME}/{VERSION}", VERSION, None), NAME, model, holder.make_scheduler(model, VERSION)
        )
    app = create_app(holder, metrics, keys, Limits(max_body, 30.0, 2), Tracer(0.0))
    return TestClient(app, raise_server_exceptions=False), holder


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    client, holder = build()
    yield client
    holder.current.scheduler.close()


@pytest.fixture(scope="module")
def client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, max_retries=0, http_client=http)


def post(http: TestClient, body: Any, key: str | None = KEY, **kwargs: Any) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = http.post("/v1/chat/completions", json=body, headers=headers, **kwargs)
    return response.status_code, response.json()


def said(answer: dict) -> list[dict[str, str]]:
    """The conversation the echo model was given, from its answer."""
    return json.loads(answer["choices"][0]["message"]["content"])


def error(answer: dict) -> dict:
    """OpenAI's error object: exactly these four fields, and nothing else in the body."""
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}, answer
    return answer["error"]


# --- what reaches the model ---------------------------------------------------------------------------------------


def test_the_developer_role_is_answered_as_system_would_be(http: TestClient):
    status, developer = post(http, {"messages": [{**SYSTEM, "role": "developer"}, *SPAIN]})
    assert status == 200
    assert said(developer) == said(post(http, {"messages": [SYSTEM, *SPAIN]})[1]) == [SYSTEM, *SPAIN]


def test_the_openai_client_sends_the_developer_role_and_gets_the_system_answer(client: openai.OpenAI):
    def ask(role: str) -> str:
        messages = [{"role": role, "content": "Answer briefly."}, *SPAIN]
        return client.chat.completions.create(model=NAME, messages=messages).choices[0].message.content

    assert ask("developer") == ask("system")
    assert json.loads(ask("developer"))[0] == SYSTEM


def test_text_parts_are_joined_into_the_plain_string(http: TestClient, client: openai.OpenAI):
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of Spain?"}]
    status, answer = post(http, {"messages": [{"role": "user", "content": parts}]})
    assert status == 200 and said(answer) == SPAIN
    system_parts = {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]}
    reply = client.chat.completions.create(model=NAME, messages=[system_parts, *SPAIN])
    assert json.loads(reply.choices[0].message.content) == [SYSTEM, *SPAIN]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, "messages[0].content[1].type"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "messages[0].content[1].type"),
        ({"type": "text"}, "messages[0].content[1].text"),
        ({"type": "text", "text": "x", "cache_control": {}}, "messages[0].content[1].cache_control"),
    ],
)
def test_a_part_that_is_not_text_is_a_400_naming_it(http: TestClient, part: dict, param: str):
    content = [{"type": "text", "text": "What is in this picture?"}, part]
    status, answer = post(http, {"messages": [{"role": "user", "content": content}]})
    assert status == 400 and error(answer)["param"] == param
    assert error(answer)["message"].startswith("messages[0].content[1]")


def test_a_name_is_refused_by_name_not_dropped(http: TestClient):
    status, answer = post(http, {"messages": [{**SPAIN[0], "name": "ann"}]})
    assert status == 400 and error(answer)["param"] == "messages[0].name"
    assert "has no place for a speaker's name" in error(answer)["message"]
    # A null name is no name.
    assert post(http, {"messages": [{**SPAIN[0], "name": None}]})[0] == 200


def test_an_assistant_turn_sent_back_as_the_client_got_it_is_accepted(http: TestClient):
    """The openai client sends an answer's message back as it parsed it, with OpenAI's null fields."""
    answered = {"role": "assistant", "content": "Madrid", "refusal": None, "tool_calls": None, "function_call": None}
    status, answer = post(http, {"messages": [*SPAIN, answered, *SPAIN]})
    assert status == 200 and said(answer) == [*SPAIN, {"role": "assistant", "content": "Madrid"}, *SPAIN]
    # A turn that called a tool reaches the model with its call and a null content (tests/test_tools_endpoint.py).
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    status, answer = post(http, {"messages": [*SPAIN, {**answered, "content": None, "tool_calls": [call]}]})
    assert status == 200 and said(answer)[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    legacy = {**answered, "function_call": {"name": "f", "arguments": "{}"}}
    status, answer = post(http, {"messages": [*SPAIN, legacy, *SPAIN]})
    assert status == 400 and error(answer)["param"] == "messages[1].function_call"
    assert "OpenAI's deprecated functions are not; use tool_calls" in error(answer)["message"]


# --- the model name -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [NAME, URI, "tiny-chat@champion", f"{NAME}:{VERSION}", OWN_NAME, None])
def test_every_name_the_model_is_served_under_is_accepted(http: TestClient, name: str | None):
    body = {"messages": SPAIN} | ({"model": name} if name else {})
    status, answer = post(http, body)
    assert status == 200 and answer["model"] == f"{NAME}:{VERSION}"


@pytest.mark.parametrize("name", ["gpt-4o", "tiny-chat@challenger", f"{NAME}:2", "models:/other@champion", ""])
def test_another_model_is_a_404_model_not_found(http: TestClient, name: str):
    status, answer = post(http, {"model": name, "messages": SPAIN})
    assert status == 404
    assert error(answer) | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert "this endpoint serves 'tiny-chat'" in error(answer)["message"]


def test_the_openai_client_gets_not_found_for_another_model(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=SPAIN)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_served_names_follow_the_uri_form():
    assert served_names("models:/chat/4", "models:/chat/4", None) == {"models:/chat/4", "chat/4", "chat"}
    assert served_names("models:/m-0123", "models:/m-0123", None) == {"models:/m-0123", "m-0123"}
    assert served_names(URI, "mine", None) == {"mine", URI, "tiny-chat@champion", "tiny-chat"}


# --- OpenAI's ranges and field errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 4, "max_completion_tokens": 4}, "max_completion_tokens"),
        ({"top_k": 0}, "top_k"),
        ({"seed": "7"}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"user": 5}, "user"),
        ({"model": 5}, "model"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": ["hello"]}, "messages[0]"),
        ({"messages": [*SPAIN, {"role": "wizard", "content": "hi"}]}, "messages[1].role"),
        ({"messages": [*SPAIN, {"role": "tool", "content": "hi"}]}, "messages[1].tool_call_id"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_a_field_error_is_a_400_whose_param_names_the_field(http: TestClient, fields: dict, param: str):
    status, answer = post(http, {"messages": SPAIN, **fields})
    assert status == 400, answer
    assert error(answer)["type"] == "invalid_request_error"
    assert error(answer)["param"] == param
    assert param.split("[")[0].split(".")[0] in error(answer)["message"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": 2.5}, "temperature must be a number from 0 to 2 (0: greedy); got 2.5"),
        ({"top_p": 0}, "top_p must be a number above 0 and at most 1; got 0"),
        ({"max_completion_tokens": 0}, "max_completion_tokens must be a whole number of 1 or more; got 0"),
        ({"n": 2}, "n > 1 is not supported; this endpoint returns exactly one choice; got n=2"),
        ({"tools": []}, 'tools must be a non-empty list of {"type": "function", ...}; got list []'),
        ({"tool_choice": "required"}, "tool_choice is only allowed when tools are given; got tool_choice='required'"),
        ({"function_call": "auto"}, "function_call (OpenAI's deprecated API) is not supported; use tool_choice"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role must be one of 'system', 'developer'"),
        ({"stream": True, "stream_options": {"x": 1}}, "stream_options has unsupported field(s) ['x']; accepted:"),
    ],
)
def test_a_field_error_says_what_is_accepted(http: TestClient, fields: dict, message: str):
    status, answer = post(http, {"messages": SPAIN, **fields})
    assert status == 400 and error(answer)["message"].startswith(message), answer


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"top_p": 1},
        {"max_completion_tokens": 1},
        {"n": 1, "logprobs": False, "tool_choice": "none", "frequency_penalty": 0, "logit_bias": {}},
        {"stream": False, "user": "u-1", "seed": 7, "top_k": 3, "stop": ["\n"]},
    ],
)
def test_values_at_the_ends_of_openais_ranges_and_defaults_are_accepted(http: TestClient, fields: dict):
    status, answer = post(http, {"messages": SPAIN, **fields})
    assert status == 200, answer


def test_an_unknown_field_is_refused_by_its_name(http: TestClient):
    status, answer = post(http, {"messages": SPAIN, "best_of": 3})
    assert status == 400 and error(answer)["param"] == "best_of"
    assert error(answer)["message"].startswith("the request has unsupported field(s) ['best_of']; accepted: model,")
    status, answer = post(http, {"messages": [{**SPAIN[0], "tone": "dry"}]})
    assert status == 400 and error(answer)["param"] == "messages[0].tone"
    assert error(answer)["message"] == "messages[0] has unsupported field(s) ['tone']; accepted: role, content, name"


@pytest.mark.parametrize(
    "body",
    [
        {"messages": SPAIN, "stream": BIG},
        {"messages": SPAIN, BIG: 1},
        {"messages": [{"role": BIG, "content": "hi"}]},
        {"messages": [{"role": "user", "content": [{"type": BIG}]}]},
        {"messages": [{"role": "user", "content": "hi", "name": BIG}]},
        {"messages": SPAIN, "model": BIG},
    ],
)
def test_an_error_names_a_large_value_without_copying_it(http: TestClient, body: dict):
    status, answer = post(http, body)
    assert status in (400, 404)
    assert len(json.dumps(answer)) < 1000 and BIG[:200] not in json.dumps(answer)
    assert "What is the capital of Spain? What is" in error(answer)["message"]  # quoted, up to 80 characters


def test_read_call_raises_bad_request_with_the_param():
    with pytest.raises(BadRequest, match="request body must be a JSON object; got list") as caught:
        read_call([SPAIN])
    assert caught.value.param is None
    with pytest.raises(BadRequest) as caught:
        read_call({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert caught.value.param == "messages[0].content[0].type"


# --- OpenAI's error object on every error path --------------------------------------------------------------------


def test_an_unknown_path_is_a_404_error_object(http: TestClient):
    response = http.get("/v1/completions")
    assert response.status_code == 404
    assert error(response.json())["message"].startswith("no such route: GET '/v1/completions'; this endpoint answers")
    assert http.post("/" + "x" * 5000).status_code == 404 and len(http.post("/" + "x" * 5000).text) < 1000


def test_a_wrong_method_is_a_405_error_object(http: TestClient):
    response = http.get("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert error(response.json())["message"].startswith("method not allowed: GET '/v1/chat/completions'")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"messages": [', "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object; got list"),
        (b'"hello"', "request body must be a JSON object; got str"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400_error_object(http: TestClient, raw: bytes, message: str):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = http.post("/v1/chat/completions", content=raw, headers=headers)
    assert response.status_code == 400 and error(response.json())["message"] == message


def test_auth_413_503_429_and_500_are_error_objects(monkeypatch: pytest.MonkeyPatch):
    client, _ = build(max_body=2048)
    status, answer = post(client, {"messages": SPAIN}, key=None)
    assert status == 401 and error(answer)["code"] == "invalid_api_key"
    status, answer = post(client, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert status == 413 and "2048" in error(answer)["message"]
    loading, _ = build(loaded=False)
    status, answer = post(loading, {"messages": SPAIN})
    assert status == 503 and error(answer)["type"] == "service_unavailable"
    full, holder = build(max_queue=0)
    status, answer = post(full, {"messages": SPAIN})
    assert status == 429 and error(answer)["type"] == "rate_limit_error"
    holder.current.scheduler.close()
    broken, holder = build()
    holder.current.scheduler.close()
    # A bug on the request's way: the answer names its type, with no traceback.
    monkeypatch.setattr(ModelHolder, "current", property(lambda self: 1 / 0), raising=False)
    status, answer = post(broken, {"messages": SPAIN})
    assert status == 500 and error(answer)["message"] == (
        "internal error (ZeroDivisionError); the server's log has the details"
    )

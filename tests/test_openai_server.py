"""The OpenAI-compatible endpoint, called by the official ``openai`` client against a real server process.

One server (with two API keys, traces of every request and a small body limit) answers the protocol tests here;
tests/test_serving_limits.py covers the queue, the timeout and disconnects on a slowed model.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import openai
import pytest
from servers import Server, endpoint_command, free_port, metric, started

from llmflow.serving.openai_protocol import read_call
from llmflow.serving.openai_server import BadRequest, model_request

# The protocol's pure functions are tested here too, beside the server that speaks it.
pytestmark = pytest.mark.integration

KEY, FILE_KEY = "test-key-1", "test-key-2"
NAME = "tiny-phi3-onnx"  # --served-name: a request that names another model gets a 404

SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]


def test_request_mapping_keeps_the_conversation_and_renames_max_completion_tokens():
    body = {
        "model": "x",
        "messages": [{"role": "system", "content": "Be brief."}, *SPAIN],
        "max_completion_tokens": 8,
        "temperature": 0.0,
        "stop": ["\n"],
        "stream": False,
        "top_p": None,
    }
    assert model_request(body) == {
        "messages": body["messages"],
        "max_tokens": 8,
        "temperature": 0.0,
        "stop": ["\n"],
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [({"max_tokens": 8}, "messages"), ({"messages": SPAIN, "n": 2}, "n"), ({"messages": SPAIN, "tools": []}, "tools")],
)
def test_requests_the_endpoint_cannot_honour_are_refused(body: dict, param: str):
    with pytest.raises(BadRequest) as excinfo:
        model_request(body)
    assert excinfo.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": SPAIN, "logprobs": True}, "logprobs"),
        ({"messages": SPAIN, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": SPAIN, "tool_choice": "auto"}, "tool_choice"),
        ({"messages": SPAIN, "presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": SPAIN, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_not_ignored(body: dict, param: str):
    with pytest.raises(BadRequest) as excinfo:
        read_call(body)
    assert excinfo.value.param == param
    assert param in str(excinfo.value)


def test_fields_at_their_default_are_accepted_and_seed_reaches_the_model():
    body = {"messages": SPAIN, "n": 1, "logprobs": False, "response_format": {"type": "text"}, "seed": 3}
    call = read_call({**body, "stream": True, "stream_options": {"include_usage": True}})
    assert call.request == {"messages": SPAIN, "seed": 3, "response_format": {"type": "text"}}
    assert (call.stream, call.include_usage) == (True, True)


@pytest.fixture(scope="module")
def server(logged_onnx_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    tracking_uri, model_uri = logged_onnx_model
    folder = Path(tmp_path_factory.mktemp("openai"))
    (folder / "keys.txt").write_text(f"# one key a line\n{FILE_KEY}\n")
    port = free_port()
    command = endpoint_command(model_uri, "--port", str(port))
    command += ["--served-name", NAME, "--api-key", KEY, "--api-key-file", str(folder / "keys.txt")]
    command += ["--trace-ratio", "1", "--max-body-bytes", "4096"]
    # The server inherits another experiment (the store's Default): its traces must still go to the model's.
    env = {"MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false", "MLFLOW_EXPERIMENT_ID": "0"}
    with started(command, port, tracking_uri, folder / "server.log", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0, timeout=60)


def post(base: str, raw: bytes, key: str | None = KEY) -> tuple[int, dict, dict]:
    """POST ``raw`` to the chat route; (status, JSON body, headers)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=raw, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_health_was_503_while_loading_then_names_the_model(server: Server, logged_onnx_model: tuple[str, str]):
    assert server.health_seen[0] == 503 and server.health_seen[-1] == 200
    with urllib.request.urlopen(f"{server.base}/health", timeout=10) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok"
    assert health["model_uri"] == logged_onnx_model[1]
    assert health["model_id"] == logged_onnx_model[1].removeprefix("models:/")


def test_a_key_is_needed_except_for_health_and_metrics(server: Server, client: openai.OpenAI):
    body = json.dumps({"messages": SPAIN, "max_tokens": 8}).encode()
    status, answer, headers = post(server.base, body, key=None)
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert post(server.base, body, key="wrong")[0] == 401
    assert post(server.base, body, key=FILE_KEY)[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()
    with urllib.request.urlopen(f"{server.base}/metrics", timeout=10) as response:
        assert b"llmflow_requests_total" in response.read()


def test_a_body_over_the_limit_is_a_413(server: Server):
    raw = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    status, answer, _ = post(server.base, raw)
    assert status == 413 and "4096" in answer["error"]["message"]


def test_a_prompt_longer_than_the_context_is_a_400_before_it_takes_a_place(server: Server):
    prompt_tokens = metric(server.base, "llmflow_prompt_tokens_total")
    raw = json.dumps({"messages": [{"role": "user", "content": "Spain " * 600}]}).encode()
    status, answer, _ = post(server.base, raw)
    assert status == 400 and "context length is 512" in answer["error"]["message"]
    assert metric(server.base, "llmflow_prompt_tokens_total") == prompt_tokens


def test_chat_completion_with_usage(client: openai.OpenAI):
    response = client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=16, temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content.strip() == "Madrid"
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert [m.id for m in client.models.list().data] == [NAME]
    assert response.model == NAME  # a logged model without a registered version


def test_multi_turn_history_reaches_the_model(client: openai.OpenAI):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "What is the capital of Spain?"},
    ]
    response = client.chat.completions.create(model=NAME, messages=messages, max_tokens=16)
    single = client.chat.completions.create(model=NAME, messages=messages[-1:], max_tokens=16)
    # A longer history means more prompt tokens: the whole conversation was templated, not just one turn.
    assert response.usage.prompt_tokens > single.usage.prompt_tokens
    assert response.choices[0].message.content.strip() == "Madrid"


def test_streaming_joins_to_the_whole_answer(client: openai.OpenAI):
    whole = client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=16)
    stream = client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=16, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content


def test_bad_requests_are_400_and_the_server_keeps_serving(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=NAME, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=NAME, messages=[])
    response = client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=16)
    assert response.choices[0].message.content.strip() == "Madrid"


def test_concurrent_clients_get_their_own_answers(client: openai.OpenAI):
    questions = {
        "What is the capital of Spain?": "Madrid",
        "Who painted the Mona Lisa?": "Leonardo da Vinci",
        "What is the largest planet in the solar system?": "Jupiter",
        "How many legs does a spider have?": "Eight",
    }

    def ask(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return client.chat.completions.create(model=NAME, messages=messages, max_tokens=16).choices[0].message.content

    asked = list(questions) * 4
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, asked))
    assert [a.strip() for a in answers] == [questions[q] for q in asked]


def test_usage_is_streamed_only_when_asked_in_a_last_chunk_without_choices(client: openai.OpenAI):
    plain = list(client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=16, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in plain)
    asked = list(
        client.chat.completions.create(
            model=NAME, messages=SPAIN, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in asked[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in asked[:-1]).strip() == "Madrid"


def test_the_same_seed_gives_the_same_sampled_answer(client: openai.OpenAI):
    def sampled(seed: int) -> str:
        response = client.chat.completions.create(
            model=NAME, messages=SPAIN, max_tokens=24, temperature=1.8, seed=seed, extra_body={"top_k": 400}
        )
        return response.choices[0].message.content

    assert sampled(7) == sampled(7) == sampled(7)
    assert len({sampled(seed) for seed in range(8)}) > 1


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ],
)
def test_the_client_gets_a_400_naming_a_refused_field(client: openai.OpenAI, extra: dict, param: str):
    with pytest.raises(openai.BadRequestError, match=param):
        client.chat.completions.create(model=NAME, messages=SPAIN, max_tokens=8, **extra)


def test_the_developer_role_and_text_parts_get_the_answers_of_system_and_a_string(client: openai.OpenAI):
    def answer(system: dict, question: dict) -> tuple[str, int]:
        messages = [system, question]
        response = client.chat.completions.create(model=NAME, messages=messages, max_tokens=16)
        return response.choices[0].message.content, response.usage.prompt_tokens

    system, question = {"role": "system", "content": "Answer briefly."}, SPAIN[0]
    developer = {**system, "role": "developer"}
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of Spain?"}],
    }
    expected = answer(system, question)
    assert expected[0].strip() == "Madrid"
    assert answer(developer, question) == expected
    assert answer(developer, parts) == expected


def test_another_model_name_is_a_404_model_not_found(client: openai.OpenAI, logged_onnx_model: tuple[str, str]):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=SPAIN, max_tokens=8)
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (404, "model_not_found", "model")
    assert caught.value.type == "invalid_request_error"
    # The URI it serves is one of its names too.
    response = client.chat.completions.create(model=logged_onnx_model[1], messages=SPAIN, max_tokens=16)
    assert response.choices[0].message.content.strip() == "Madrid"


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("GET", "/v1/nothing-here", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/chat/completions", b'{"messages": [', 400),
        ("POST", "/v1/chat/completions", b'{"messages": [], "temperature": 9}', 400),
    ],
)
def test_every_error_is_openais_error_object(server: Server, method: str, path: str, raw: bytes | None, status: int):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{server.base}{path}", data=raw, headers=headers, method=method)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    body = json.loads(caught.value.read())
    assert caught.value.code == status
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


def test_every_request_is_a_trace_linked_to_the_logged_model(client: openai.OpenAI, logged_onnx_model: tuple[str, str]):
    tracking_uri, model_uri = logged_onnx_model
    marker = "Trace me: what is the capital of Spain?"
    client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": marker}], max_tokens=8)
    mlflow.set_tracking_uri(tracking_uri)
    model_id = model_uri.removeprefix("models:/")
    try:
        experiment_id = mlflow.MlflowClient().get_logged_model(model_id).experiment_id
        found = []
        for _ in range(50):  # the server writes its traces synchronously; allow for the store's commit
            traces = mlflow.search_traces(experiment_ids=[experiment_id], model_id=model_id, return_type="list")
            found = [t for t in traces if marker in json.dumps(t.data.spans[0].inputs)]
            if found:
                break
            time.sleep(0.2)
    finally:
        mlflow.set_tracking_uri(None)
    assert len(found) == 1
    assert found[0].info.experiment_id == experiment_id != "0"
    assert found[0].data.spans[0].outputs["choices"][0]["message"]["content"]

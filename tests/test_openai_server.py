"""The OpenAI-compatible endpoint, called by the official ``openai`` client against a real server process."""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path

import openai
import pytest
from servers import free_port, running

from llmflow.serving.openai_server import BadRequest, model_request

# Every test here starts a real server process.
pytestmark = pytest.mark.integration

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


@pytest.fixture(scope="module")
def client(logged_onnx_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    tracking_uri, model_uri = logged_onnx_model
    port = free_port()
    command = [sys.executable, "-m", "llmflow.serving.openai_server", "--model-uri", model_uri, "--port", str(port)]
    command += ["--served-name", "tiny-phi3-onnx"]
    log = Path(tmp_path_factory.mktemp("openai")) / "server.log"
    with running(command, port, tracking_uri, log) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_chat_completion_with_usage(client: openai.OpenAI):
    response = client.chat.completions.create(model="tiny-phi3-onnx", messages=SPAIN, max_tokens=16, temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content.strip() == "Madrid"
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert [m.id for m in client.models.list().data] == ["tiny-phi3-onnx"]


def test_multi_turn_history_reaches_the_model(client: openai.OpenAI):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "What is the capital of Spain?"},
    ]
    response = client.chat.completions.create(model="tiny-phi3-onnx", messages=messages, max_tokens=16)
    single = client.chat.completions.create(model="tiny-phi3-onnx", messages=messages[-1:], max_tokens=16)
    # A longer history means more prompt tokens: the whole conversation was templated, not just one turn.
    assert response.usage.prompt_tokens > single.usage.prompt_tokens
    assert response.choices[0].message.content.strip() == "Madrid"


def test_streaming_joins_to_the_whole_answer(client: openai.OpenAI):
    whole = client.chat.completions.create(model="tiny-phi3-onnx", messages=SPAIN, max_tokens=16)
    stream = client.chat.completions.create(model="tiny-phi3-onnx", messages=SPAIN, max_tokens=16, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.choices[0].message.content


def test_bad_requests_are_400_and_the_server_keeps_serving(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny-phi3-onnx", messages=SPAIN, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny-phi3-onnx", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny-phi3-onnx", messages=[])
    response = client.chat.completions.create(model="tiny-phi3-onnx", messages=SPAIN, max_tokens=16)
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
        return client.chat.completions.create(model="m", messages=messages, max_tokens=16).choices[0].message.content

    asked = list(questions) * 4
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, asked))
    assert [a.strip() for a in answers] == [questions[q] for q in asked]

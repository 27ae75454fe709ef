"""The transformers llm/v1/chat model served offline: by the project's endpoint, with the ONNX model's checks, and by
`mlflow models serve`, whose `stop` loads a tokenizer by the model's recorded name (here from a cache of its own).

Before: `mlflow models serve` answered `stop` with a 400 holding a traceback (`OSError: We couldn't connect to
'https://huggingface.co'`), an empty `messages` with a 500, and an unknown role, `max_tokens` 0 and a prompt of
6,009 tokens against a context of 512 with a 200; the endpoint did not load a transformers model at all.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request

import mlflow
import pytest
from servers import endpoint as serve
from servers import free_port, started

pytestmark = pytest.mark.integration

SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]
QUESTIONS = {"What is the capital of Spain?": "Madrid", "Who painted the Mona Lisa?": "Leonardo da Vinci"}
LONG = "What is the capital of Spain? " * 600


def post(url: str, body: dict) -> tuple[int, dict | list]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def endpoint(logged_transformers_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    with serve(logged_transformers_model, tmp_path_factory.mktemp("transformers-endpoint"), timeout=120) as server:
        yield f"{server.base}/v1/chat/completions"


def content(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


def test_the_endpoint_answers_as_the_model_does(endpoint: str):
    for question, expected in QUESTIONS.items():
        status, answer = post(endpoint, {"messages": [{"role": "user", "content": question}], "max_tokens": 16})
        assert status == 200, answer
        assert (content(answer), answer["choices"][0]["finish_reason"]) == (expected, "stop")
        assert answer["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(("stop", "expected"), [(["dr"], "Ma"), ("ad", "M"), (["xyz", "id"], "Madr")])
def test_stop_is_cut_from_the_answer_offline(endpoint: str, stop: str | list[str], expected: str):
    status, answer = post(endpoint, {"messages": SPAIN, "max_tokens": 16, "stop": stop})
    assert status == 200, answer
    assert (content(answer), answer["choices"][0]["finish_reason"]) == (expected, "stop")


BAD_INPUTS = {
    # The endpoint's own request check (pydantic) words these two; the model's checks the rest.
    "empty messages": ({"messages": []}, "messages", "must be a non-empty list"),
    "unknown role": (
        {"messages": [{"role": "wizard", "content": "hi"}]},
        "messages[0].role",
        "must be one of 'system', 'developer', 'user', 'assistant', 'tool'; got 'wizard'",
    ),
    "max_tokens zero": ({"messages": SPAIN, "max_tokens": 0}, "max_tokens", "1 or more; got 0"),
    "over the context": (
        {"messages": [{"role": "user", "content": LONG}], "max_tokens": 8},
        "context",
        "the model's context length is 512 tokens",
    ),
    "bad stop": ({"messages": SPAIN, "stop": [""]}, "stop", "non-empty"),
    "unknown field": ({"messages": SPAIN, "best_of": 2}, "best_of", "unsupported field(s) ['best_of']"),
    "tools": (
        {"messages": SPAIN, "tools": [{"type": "function", "function": {"name": "weather"}}]},
        "tools",
        "not supported by the transformers backend (it has no guided generation); serve the ONNX model",
    ),
    "json output": (
        {"messages": SPAIN, "response_format": {"type": "json_object"}},
        "response_format",
        "not supported by the transformers backend; serve the ONNX model",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_400_naming_the_field(endpoint: str, case: str):
    body, field, says = BAD_INPUTS[case]
    status, answer = post(endpoint, body)
    assert status == 400, answer
    message = answer["error"]["message"]
    assert field in message and says in message
    assert len(json.dumps(answer)) < 1000 and "Traceback" not in message


def test_a_prompt_of_thousands_of_tokens_is_refused_with_its_count(endpoint: str):
    status, answer = post(endpoint, {"messages": [{"role": "user", "content": LONG}]})
    assert status == 400
    prompt_tokens = int(re.search(r"messages has (\d+) tokens", answer["error"]["message"])[1])
    assert prompt_tokens > 6000


def test_the_same_seed_gives_the_same_sampled_answer(endpoint: str):
    def sampled(seed: int) -> str:
        body = {"messages": SPAIN, "max_tokens": 24, "temperature": 1.8, "top_k": 400, "seed": seed}
        status, answer = post(endpoint, body)
        assert status == 200, answer
        return content(answer)

    assert sampled(7) == sampled(7) == sampled(7)
    assert len({sampled(seed) for seed in range(8)}) > 1


def test_stock_mlflow_still_loads_the_stop_tokenizer_by_the_recorded_name(logged_transformers_model: tuple[str, str]):
    """Why `llmflow.stop_tokenizer` exists: drop it, and this test, when MLflow uses the pipeline's own tokenizer."""
    tracking_uri, model_uri = logged_transformers_model
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert content(model.predict({"messages": SPAIN})[0]) == "Madrid"
    with pytest.raises(OSError, match="huggingface.co"):
        model.predict({"messages": SPAIN, "stop": ["ad"]})


@pytest.fixture(scope="module")
def invocations(logged_transformers_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    """`mlflow models serve` on the transformers model, offline, with the model's tokenizer under its recorded name."""
    from llmflow.stop_tokenizer import fill

    tracking_uri, model_uri = logged_transformers_model
    folder = tmp_path_factory.mktemp("transformers-serve")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        fill(model_uri, folder / "hf")
    finally:
        mlflow.set_tracking_uri(None)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(folder / "hf")}
    with started(command, port, tracking_uri, folder / "server.log", timeout=120, env=env) as server:
        yield f"{server.base}/invocations"


def test_mlflow_models_serve_stops_offline_from_the_models_own_tokenizer(invocations: str):
    status, [answer] = post(invocations, {"messages": SPAIN, "max_tokens": 16})
    assert (status, content(answer)) == (200, "Madrid")
    status, [answer] = post(invocations, {"messages": SPAIN, "max_tokens": 16, "stop": ["ad"]})
    assert status == 200, answer
    # MLflow's stop matches tokens and keeps the stop text: "Mad" (the endpoint answers "M").
    assert content(answer) != "Madrid" and "Madrid".startswith(content(answer))
    assert answer["choices"][0]["finish_reason"] == "stop"

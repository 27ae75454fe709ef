"""The champion as users serve it: ``mlflow models serve`` in a real process on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, running

# Every test here starts a real server process.
pytestmark = pytest.mark.integration

SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]
PROMPT = "<|user|>\nWhat is the capital of Spain?<|end|>\n<|assistant|>\n"
QUESTIONS = {
    "What is the capital of Spain?": "Madrid",
    "Who painted the Mona Lisa?": "Leonardo da Vinci",
    "What is the largest planet in the solar system?": "Jupiter",
    "How many legs does a spider have?": "Eight",
}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("serve")) / "server.log"


@pytest.fixture(scope="module")
def server(logged_onnx_model: tuple[str, str], server_log: Path):
    tracking_uri, model_uri = logged_onnx_model
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "2"]
    with running(command, port, tracking_uri, server_log) as base:
        yield base


def post(base: str, body: object, raw: bytes | None = None) -> tuple[int, object]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/invocations", data=data, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_chat_request_gets_a_chat_completion(server: str):
    status, body = post(server, {"messages": SPAIN, "max_tokens": 16})
    assert status == 200
    completion = body[0]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Madrid"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_prompt_request_gets_strings(server: str):
    status, body = post(server, {"inputs": {"prompt": [PROMPT]}, "params": {"max_new_tokens": 16}})
    assert (status, body) == (200, {"predictions": ["Madrid"]})


def test_several_rows_in_one_request(server: str):
    records = [{"messages": [{"role": "user", "content": q}], "max_tokens": 16} for q in QUESTIONS]
    status, body = post(server, {"dataframe_records": records})
    assert status == 200
    assert [c["choices"][0]["message"]["content"] for c in body["predictions"]] == list(QUESTIONS.values())


LONG = " ".join(["What is the capital of Spain?"] * 60)
BAD_INPUTS = {
    "context length": ({"messages": [{"role": "user", "content": LONG}], "max_tokens": 200}, "context length"),
    "max_tokens zero": ({"messages": SPAIN, "max_tokens": 0}, "max_tokens"),
    "max_tokens negative": ({"messages": SPAIN, "max_tokens": -3}, "max_tokens"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    "empty messages": ({"inputs": {"messages": [], "max_tokens": 8}}, "messages"),
    "non-string content": ({"messages": [{"role": "user", "content": 42}]}, "content"),
    "missing field": ({"inputs": {"temperature": 0.5}}, "messages"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_400_naming_the_field(server: str, case: str):
    body, field = BAD_INPUTS[case]
    status, error = post(server, body)
    assert status == 400, error
    assert field in error["message"]


def test_seed_reaches_the_model_through_invocations(server: str, server_log: Path):
    """`/invocations` drops what the signature does not declare; `seed` was dropped, so one seed gave two answers."""

    def sampled(seed: int) -> str:
        body = {"messages": SPAIN, "max_tokens": 24, "temperature": 1.8, "top_k": 400, "seed": seed}
        status, answer = post(server, body)
        assert status == 200, answer
        return answer[0]["choices"][0]["message"]["content"]

    assert sampled(7) == sampled(7) == sampled(7)
    assert len({sampled(seed) for seed in range(8)}) > 1
    assert not dropped(server_log, "seed")


def dropped(log: Path, field: str) -> list[str]:
    """The server log's warnings that ``field`` was dropped: it is not in the model's signature."""
    lines = log.read_text().splitlines()
    return [line for line in lines if "not defined in the model signature" in line and f"'{field}'" in line]


def test_a_field_the_model_does_not_know_is_dropped_with_a_warning_in_the_log(server: str, server_log: Path):
    """What `/invocations` does with an unknown field (the README says it): MLflow drops it and answers."""
    status, body = post(server, {"messages": SPAIN, "max_tokens": 16, "best_of": 3})
    assert status == 200 and body[0]["choices"][0]["message"]["content"] == "Madrid"
    assert dropped(server_log, "best_of")


def test_a_50_kb_prompt_is_refused_by_name_without_a_copy_of_it(server: str):
    """MLflow's scoring server put the whole input into its error message (48 KB for a long prompt)."""
    long_prompt = "What is the capital of Spain? " * 1700
    assert len(long_prompt) > 50_000
    status, error = post(server, {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 8})
    assert status == 400
    assert "context length is 512 tokens" in error["message"]
    assert len(json.dumps(error)) < 1000 and "capital of Spain" not in json.dumps(error)
    assert "stack_trace" not in error


def test_malformed_json_is_a_400_and_the_server_keeps_serving(server: str):
    status, _ = post(server, None, raw=b'{"messages": [')
    assert status == 400
    status, body = post(server, {"messages": SPAIN, "max_tokens": 16})
    assert status == 200 and body[0]["choices"][0]["message"]["content"] == "Madrid"


def test_sixteen_concurrent_requests_get_their_own_answers(server: str):
    asked = list(QUESTIONS) * 4

    def ask(question: str) -> str:
        status, body = post(server, {"messages": [{"role": "user", "content": question}], "max_tokens": 16})
        assert status == 200
        return body[0]["choices"][0]["message"]["content"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, asked))
    assert answers == [QUESTIONS[q] for q in asked]

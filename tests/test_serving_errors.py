"""Error answers that name, not echo: a model whose generation fails, served by `mlflow models serve` and by the
project's endpoint. Each answer names the error's type and says where the details are; none carries a traceback,
a server path or a copy of the input.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from servers import endpoint as serve
from servers import free_port, log_chat_model, new_store, running

from llmflow import PROJECT_ROOT

pytestmark = pytest.mark.integration

SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]
LONG_PROMPT = "What is the capital of Spain? " * 1700  # 51 KB


@pytest.fixture(scope="module")
def broken_model(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory, _empty_store: Path) -> tuple[str, str]:
    """(tracking URI, model URI) of tests/broken_chat_model.py over the tiny ONNX model, in a store of its own."""
    uri, experiment = new_store(_empty_store, tmp_path_factory.mktemp("broken"), "broken")
    try:
        model_uri = log_chat_model(onnx_dir, experiment, {}, PROJECT_ROOT / "tests" / "broken_chat_model.py")
    finally:
        mlflow.set_tracking_uri(None)
    return uri, model_uri


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_names_without_echo(raw: str) -> None:
    assert len(raw) < 1000, raw[:300]
    for leaked in ("Traceback", "stack_trace", "model.onnx.data", "/tmp", "site-packages", LONG_PROMPT[:200]):
        assert leaked not in raw


@pytest.fixture(scope="module")
def mlflow_server(broken_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    tracking_uri, model_uri = broken_model
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = tmp_path_factory.mktemp("broken-serve") / "server.log"
    with running(command, port, tracking_uri, log) as base:
        yield base, log


def test_invocations_answer_an_internal_error_with_its_type_only(mlflow_server: tuple[str, Path]):
    base, log = mlflow_server
    status, raw = post(f"{base}/invocations", {"messages": SPAIN, "max_tokens": 8})
    assert status == 500
    assert json.loads(raw)["message"] == "internal error while generating (OSError); the server's log has the details"
    assert_names_without_echo(raw)
    assert "model.onnx.data: input/output error" in log.read_text()  # the details are where the answer says


def test_invocations_refuse_a_50_kb_prompt_by_name(mlflow_server: tuple[str, Path]):
    base, _ = mlflow_server
    status, raw = post(f"{base}/invocations", {"messages": [{"role": "user", "content": LONG_PROMPT}]})
    assert status == 400
    assert "context length is 512 tokens" in json.loads(raw)["message"]
    assert_names_without_echo(raw)


@pytest.fixture(scope="module")
def endpoint(broken_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory):
    with serve(broken_model, tmp_path_factory.mktemp("broken-endpoint")) as server:
        yield server.base


def test_the_endpoint_answers_an_internal_error_with_its_type_only(endpoint: str):
    status, raw = post(f"{endpoint}/v1/chat/completions", {"messages": SPAIN, "max_tokens": 8})
    assert status == 500
    assert json.loads(raw)["error"]["type"] == "server_error"
    assert "OSError" in json.loads(raw)["error"]["message"]
    assert_names_without_echo(raw)


def test_the_endpoint_refuses_a_50_kb_prompt_and_a_50_kb_value_by_name(endpoint: str):
    status, raw = post(f"{endpoint}/v1/chat/completions", {"messages": [{"role": "user", "content": LONG_PROMPT}]})
    assert status == 400 and "context length is 512 tokens" in json.loads(raw)["error"]["message"]
    assert_names_without_echo(raw)
    status, raw = post(f"{endpoint}/v1/chat/completions", {"messages": SPAIN, "stream": LONG_PROMPT})
    assert status == 400 and json.loads(raw)["error"]["param"] == "stream"
    assert "stream must be true or false; got 'What is the capital" in raw  # named, and quoted up to 80 characters
    assert_names_without_echo(raw)

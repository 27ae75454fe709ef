"""Limits and backpressure of the OpenAI endpoint, on a real server over a slowed copy of the tiny model.

The model (tests/slow_chat_model.py) waits 0.5 s after each piece of text, so "Madrid" (4 pieces) takes about 2 s:
long enough to fill the queue, pass the 1.2 s timeout and leave mid-answer. The server runs one request at a time
with one place in the queue.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import openai
import pytest
from servers import Server, endpoint_command, free_port, idle, log_chat_model, metric, new_store, started

from llmflow import PROJECT_ROOT

pytestmark = pytest.mark.integration

SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]
TOKENS = "llmflow_generation_tokens_total"


@pytest.fixture(scope="module")
def server(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory, _empty_store: Path):
    root = tmp_path_factory.mktemp("limits")
    uri, experiment = new_store(_empty_store, root, "limits")
    try:
        model_uri = log_chat_model(
            onnx_dir, experiment, {"model_name": "slow", "delay_s": 0.5}, PROJECT_ROOT / "tests" / "slow_chat_model.py"
        )
    finally:
        mlflow.set_tracking_uri(None)
    port = free_port()
    command = endpoint_command(model_uri, "--port", str(port))
    command += ["--max-concurrent", "1", "--max-queue", "1", "--request-timeout", "1.2"]
    command += ["--retry-after", "3"]
    with started(command, port, uri, root / "server.log") as running:
        yield running


@dataclass
class Answer:
    status_code: int
    body: dict
    headers: dict

    def json(self) -> dict:
        return self.body


def ask(base: str) -> Answer:
    raw = json.dumps({"messages": SPAIN, "max_tokens": 16}).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", raw, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, json.loads(response.read()), {})
    except urllib.error.HTTPError as error:
        return Answer(error.code, json.loads(error.read()), {k.lower(): v for k, v in error.headers.items()})


def test_a_full_queue_answers_429_with_retry_after(server: Server):
    assert idle(server.base)
    answers: list[Answer] = []

    def one() -> None:
        answers.append(ask(server.base))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in order: one runs, one waits, the rest find the queue full
    for thread in threads:
        thread.join()
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 2
    assert all(a.headers["retry-after"] == "3" and a.json()["error"]["type"] == "rate_limit_error" for a in refused)
    assert all(a.status_code in (200, 429, 504) for a in answers)
    assert idle(server.base)


def test_a_request_past_the_timeout_ends_with_504_and_frees_its_place(server: Server):
    assert idle(server.base)
    tokens = metric(server.base, TOKENS)
    answer = ask(server.base)
    assert answer.status_code == 504
    assert answer.json()["error"]["type"] == "timeout"
    assert "--request-timeout" in answer.json()["error"]["message"]
    assert idle(server.base)
    # 1.2 s at 0.5 s a piece: it was stopped after at most 3 of "Madrid"'s 4 pieces (the EOS step never ran).
    assert metric(server.base, TOKENS) - tokens <= 3


def test_a_streaming_client_that_leaves_stops_its_generation_within_a_token(server: Server):
    assert idle(server.base)
    tokens = metric(server.base, TOKENS)
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=30)
    stream = client.chat.completions.create(model="slow", messages=SPAIN, max_tokens=16, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stream.close()  # the first piece of text: leave now
            break
    assert idle(server.base)
    assert metric(server.base, TOKENS) - tokens <= 2
    assert metric(server.base, 'llmflow_requests_total{status="499"}') >= 1


def test_a_client_that_leaves_a_plain_request_stops_its_generation_within_a_token(server: Server):
    assert idle(server.base)
    tokens = metric(server.base, TOKENS)
    body = json.dumps({"messages": SPAIN, "max_tokens": 16}).encode()
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.6)  # the first piece is out; the model waits before the next
    assert idle(server.base)
    assert metric(server.base, TOKENS) - tokens <= 2


def test_the_server_still_answers_after_all_that(server: Server):
    assert idle(server.base)
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=30)
    stream = client.chat.completions.create(model="slow", messages=SPAIN, max_tokens=1, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "M"
    assert metric(server.base, "llmflow_requests_running") == 0

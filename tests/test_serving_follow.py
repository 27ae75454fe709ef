"""The endpoint follows ``champion``: the alias moves in a real store while a real server answers a steady client."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import openai
import pytest
from servers import endpoint_command, free_port, log_chat_model, new_store, started

pytestmark = pytest.mark.integration

NAME = "tiny-follow"
SPAIN = [{"role": "user", "content": "What is the capital of Spain?"}]


def test_the_server_switches_to_the_new_champion_without_failing_a_request(
    onnx_dir: Path, tmp_path: Path, _empty_store: Path
):
    uri, experiment = new_store(_empty_store, tmp_path, "follow")
    registry = mlflow.MlflowClient(tracking_uri=uri)
    try:
        versions = [
            mlflow.register_model(log_chat_model(onnx_dir, experiment, {"model_name": NAME}), NAME) for _ in range(2)
        ]
    finally:
        mlflow.set_tracking_uri(None)
    registry.set_registered_model_alias(NAME, "champion", versions[0].version)

    port = free_port()
    command = endpoint_command(f"models:/{NAME}@champion", "--port", str(port), "--poll-interval", "0.5")
    log = tmp_path / "server.log"
    with started(command, port, uri, log) as server:
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=60)
        seen: list[tuple[str, str, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def steady() -> None:
            while not stop.is_set():
                try:
                    raw = client.chat.completions.with_raw_response.create(model=NAME, messages=SPAIN, max_tokens=8)
                    reply = raw.parse()
                    seen.append((reply.model, raw.headers["x-model-version"], reply.choices[0].message.content))
                except openai.OpenAIError as error:
                    failures.append(repr(error))

        thread = threading.Thread(target=steady)
        thread.start()
        try:
            while len(seen) < 5:
                time.sleep(0.1)
            registry.set_registered_model_alias(NAME, "champion", versions[1].version)
            deadline = time.monotonic() + 300
            while sum(model == f"{NAME}:2" for model, _, _ in seen) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join()
        with urllib.request.urlopen(f"{server.base}/health", timeout=10) as response:
            health = json.loads(response.read())
    assert failures == []
    models = [model for model, _, _ in seen]
    assert models[0] == f"{NAME}:1" and models[-1] == f"{NAME}:2"
    first_new = models.index(f"{NAME}:2")
    assert set(models[:first_new]) == {f"{NAME}:1"} and set(models[first_new:]) == {f"{NAME}:2"}
    assert all(model == f"{NAME}:{header}" for model, header, _ in seen)
    assert {answer for _, _, answer in seen} == {"Madrid"}
    assert health["version"] == "2" and health["model_id"] == versions[1].source.removeprefix("models:/")
    text = log.read_text()
    assert "now serving version 2 (was 1)" in text
    assert "generation thread generation-1 ended" in text  # the old model's thread ended after its requests

"""Load and soak on loopback: 200 requests from 16 clients, a fifth of them bad, a tenth leaving mid-stream.

The queue is small (2 running, 2 waiting), so some requests get 429 (with 4 and 4, one full run saw none).
Expected: no 5xx; every good request that is answered gets the answer it gets alone; nothing runs or waits at the
end; the server's RSS is within 10% of its RSS after the warm-up. Bounded: 200 requests, each with a 60 s client
timeout.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from servers import endpoint_command, free_port, idle, metric, rss_mb, started

from llmflow import PROJECT_ROOT

pytestmark = pytest.mark.integration

QA = [json.loads(line) for line in (PROJECT_ROOT / "data" / "qa.jsonl").read_text().splitlines()][:8]
REQUESTS, CLIENTS = 200, 16
BAD_BODIES = [
    b"{not json",
    json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(),
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}).encode(),
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}).encode(),
    json.dumps({"prompt": "hi"}).encode(),
]


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def raw_post(base: str, body: bytes) -> int:
    request = urllib.request.Request(f"{base}/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def one(client: openai.OpenAI, base: str, number: int, model: str) -> tuple[str, int, str | None, str | None]:
    """Request ``number`` of the plan: (kind, status, question, answer)."""
    question = QA[number % len(QA)]["question"]
    if number % 5 == 0:
        return "bad", raw_post(base, BAD_BODIES[number // 5 % len(BAD_BODIES)]), None, None
    try:
        if number % 10 == 1:  # leave after the first piece of the answer
            stream = client.chat.completions.create(model=model, messages=ask(question), max_tokens=16, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            stream.close()
            return "left", 200, question, None
        if number % 2:
            stream = client.chat.completions.create(model=model, messages=ask(question), max_tokens=16, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return "good", 200, question, text
        reply = client.chat.completions.create(model=model, messages=ask(question), max_tokens=16)
        return "good", 200, question, reply.choices[0].message.content
    except openai.APIStatusError as error:
        return "good", error.status_code, question, None


def test_two_hundred_requests_from_sixteen_clients(logged_onnx_model: tuple[str, str], tmp_path: Path):
    tracking_uri, model_uri = logged_onnx_model
    port = free_port()
    command = endpoint_command(model_uri, "--port", str(port))
    command += ["--max-concurrent", "2", "--max-queue", "2", "--log-level", "warning"]
    with started(command, port, tracking_uri, tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=60)
        alone: dict[str, str] = {}
        for _ in range(3):  # warm-up, and each question's answer alone
            for item in QA:
                reply = client.chat.completions.create(model=model_uri, messages=ask(item["question"]), max_tokens=16)
                alone[item["question"]] = reply.choices[0].message.content
        warm_rss = rss_mb(server.proc.pid)
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            results = list(pool.map(lambda n: one(client, server.base, n, model_uri), range(REQUESTS)))
        assert idle(server.base)
        running = metric(server.base, "llmflow_requests_running")
        end_rss = rss_mb(server.proc.pid)
    statuses = [status for _, status, _, _ in results]
    assert [s for s in statuses if s >= 500] == []
    assert statuses.count(429) > 0
    assert {status for kind, status, _, _ in results if kind == "bad"} <= {400}
    answered = [(question, text) for kind, status, question, text in results if kind == "good" and status == 200]
    assert len(answered) >= 20
    assert all(text == alone[question] for question, text in answered)
    assert running == 0
    assert end_rss <= 1.10 * warm_rss, (warm_rss, end_rss)
    print(
        f"\nsoak: {statuses.count(200)} ok, {statuses.count(429)} x 429, {statuses.count(400)} x 400; "
        f"RSS {warm_rss:.0f} MiB after warm-up, {end_rss:.0f} MiB at the end"
    )

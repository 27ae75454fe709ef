"""The ONNX pyfunc served by ``mlflow models serve`` and timed over HTTP from this process.

The server runs in its own process group, which is ended when the measurement ends, also on error. Its peak
memory is the ``VmHWM`` of the scoring server process (the one that holds the model), read before it ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.machine import OtherLoad, process_cpu_seconds
from bench.workers import chat_reply, chat_request, request_record

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600
# In the command line of the process that runs MLflow's scoring server (uvicorn with mlflow's app).
SERVER_MARK = "mlflow.pyfunc.scoring_server"
NO_STREAM_REASON = "MLflow's scoring server answers /invocations with one JSON body; it has no streaming endpoint"


class ServeError(RuntimeError):
    """The model server did not start or did not answer."""


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from ``/proc/<pid>/task/*/children``."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = task / "children"
            if children.is_file():
                todo.extend(int(c) for c in children.read_text().split())
    return tree


def _status_field(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_peaks(pid: int) -> list[dict[str, Any]]:
    """``VmHWM`` (MiB) and command line of every process in the tree of ``pid``."""
    peaks = []
    for member in _process_tree(pid):
        try:
            command = Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        peaks.append({"pid": member, "vmhwm_mb": (_status_field(member, "VmHWM") or 0) / 1024, "command": command})
    return peaks


def tree_cpu_seconds(pid: int) -> float:
    return sum(process_cpu_seconds(member) for member in _process_tree(pid))


def server_peak(peaks: list[dict[str, Any]]) -> dict[str, Any]:
    """The scoring server's own process (the one that loads the model), not the ``mlflow`` CLI that started it."""
    serving_processes = [p for p in peaks if SERVER_MARK in p["command"]]
    return max(serving_processes or peaks, key=lambda p: p["vmhwm_mb"])


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def post_json(url: str, payload: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ServeError(f"POST {url} answered {exc.code}: {exc.read()[:500]!r}") from None


@contextmanager
def serving(model_uri: str, log: Path) -> Iterator[Server]:
    """``mlflow models serve`` on a free local port, with this environment's bin folder first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = shutil.which("mlflow", path=env["PATH"])
    if mlflow_cli is None:
        raise ServeError(f"no 'mlflow' command in {bin_dir} or on PATH; install mlflow in this environment")
    port = free_port()
    command = [mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "-p", str(port)], env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process.pid, log)
    try:
        _wait_healthy(server, process)
        yield server
    finally:
        _stop(process)


def _wait_healthy(server: Server, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(f"mlflow models serve exited with {process.returncode}:\n{_log_tail(server.log)}")
        try:
            if _get(f"{server.url}/health") == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise ServeError(f"mlflow models serve not healthy after {HEALTH_TIMEOUT_S} s:\n{_log_tail(server.log)}")


def _stop(process: subprocess.Popen) -> None:
    """End the server's process group (it was started in a session of its own)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def run_served(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Serve ``spec["model_uri"]``, warm it up, and time one request per prompt in the model's input form."""
    form, max_new_tokens = spec["form"], spec["max_new_tokens"]
    prompts = spec["prompts"][: spec["timed_prompts"]]
    logger.info("measuring served: mlflow models serve -m %s ...", spec["model_uri"])
    started = time.perf_counter()
    with serving(spec["model_uri"], log) as server:
        start_seconds = time.perf_counter() - started
        url = f"{server.url}/invocations"

        def call(prompt: dict[str, Any]) -> dict[str, Any]:
            began = time.perf_counter()
            if form == "chat":
                reply = post_json(url, chat_request(prompt, max_new_tokens, spec.get("chat_extra", {})))
                text, tokens = chat_reply(reply.get("predictions", reply) if isinstance(reply, dict) else reply)
                return request_record(time.perf_counter() - began, text, tokens, "usage.completion_tokens")
            payload = {"inputs": {"prompt": [prompt["templated"]]}, "params": {"max_new_tokens": max_new_tokens}}
            (text,) = post_json(url, payload)["predictions"]
            return request_record(time.perf_counter() - began, text, None, None)

        call(prompts[0])
        # The server's processes are not waited for, so their CPU is read from /proc for the other-load figure.
        meter, server_cpu = OtherLoad(), tree_cpu_seconds(server.pid)
        requests = [call(p) for p in prompts]
        other = meter.cores(unaccounted_own=tree_cpu_seconds(server.pid) - server_cpu)
        peaks = tree_peaks(server.pid)
    peak = server_peak(peaks)
    return {
        "form": form,
        "start_seconds": start_seconds,
        "requests": requests,
        "stream": {"available": False, "reason": NO_STREAM_REASON},
        "peak_rss_mb": peak["vmhwm_mb"],
        "peak_rss_source": f"VmHWM of the scoring server process: {peak['command'][:160]}",
        "process_tree_peaks": peaks,
        "other_cpu_cores": other,
    }

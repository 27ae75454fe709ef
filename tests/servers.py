"""Start and stop real server processes on loopback for the serving tests."""

from __future__ import annotations

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmflow import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A started server: its base URL, its process and the ``/health`` statuses seen while it started."""

    base: str
    proc: subprocess.Popen
    health_seen: list[int] = field(default_factory=list)


@contextmanager
def running(command: list[str], port: int, tracking_uri: str, log: Path, timeout: float = 180) -> Iterator[str]:
    """Run ``command`` until it answers ``GET /health`` on ``port``; yield its base URL; always stop it."""
    with started(command, port, tracking_uri, log, timeout) as server:
        yield server.base


@contextmanager
def started(
    command: list[str], port: int, tracking_uri: str, log: Path, timeout: float = 180, env: dict | None = None
) -> Iterator[Server]:
    """Run ``command`` until ``GET /health`` on ``port`` answers 200; yield the ``Server``; always stop it."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **(env or {}),
    }
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        # A session of its own, so that stopping it also stops the workers it starts.
        proc = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = Server(base, proc)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                        server.health_seen.append(response.status)
                        if response.status == 200:
                            break
                except urllib.error.HTTPError as error:
                    server.health_seen.append(error.code)
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield server
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started: TERM, then KILL."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` now, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def metric(base: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels, as written) in the server's ``/metrics``."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def idle(base: str, timeout: float = 60) -> bool:
    """Wait until no request runs or waits; whether that happened within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(base, "llmflow_requests_running") == 0 and metric(base, "llmflow_requests_waiting") == 0:
            return True
        time.sleep(0.1)
    return False


def log_chat_model(
    onnx_dir: Path, experiment_id: str, model_config: dict, python_model: Path | None = None, **logged: Any
) -> str:
    """Log the ONNX chat pyfunc (or another ``python_model`` of that shape) over ``onnx_dir`` in a new run of
    ``experiment_id`` (of the current tracking URI), as log_pyfunc packs it (``logged``: more arguments of
    ``log_model``, e.g. its signature); return its ``models:/m-...`` URI."""
    import mlflow

    from llmflow.log_pyfunc import MODEL_CODE, MODEL_PACKAGE

    with mlflow.start_run(experiment_id=experiment_id):
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(python_model or MODEL_CODE),
            code_paths=[str(MODEL_PACKAGE)],
            artifacts={"onnx": str(onnx_dir)},
            model_config={"max_new_tokens": 16, "temperature": 0.0, **model_config},
            **logged,
        ).model_uri


@contextmanager
def endpoint(model: tuple[str, str], root: Path, *flags: str, timeout: float = 180) -> Iterator[Server]:
    """The project's endpoint serving ``model`` (tracking URI, model URI) on a free port, its log in ``root``."""
    tracking_uri, model_uri = model
    port = free_port()
    command = endpoint_command(model_uri, "--port", str(port), *flags)
    with started(command, port, tracking_uri, root / "server.log", timeout=timeout) as server:
        yield server


def endpoint_command(model_uri: str, *flags: str) -> list[str]:
    """The command that serves ``model_uri`` with the project's OpenAI-compatible endpoint, with ``flags``."""
    return [sys.executable, "-m", "llmflow.serving.openai_server", "--model-uri", model_uri, *flags]


def new_store(empty_store: Path, root: Path, experiment: str) -> tuple[str, str]:
    """A tracking store in ``root`` (a copy of the session's empty one) with ``experiment`` in it, its artifacts in
    ``root/artifacts``, made the current tracking URI; return the URI and the experiment id."""
    import mlflow

    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id = mlflow.MlflowClient(tracking_uri=uri).create_experiment(experiment, (root / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    return uri, experiment_id

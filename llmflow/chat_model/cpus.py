"""How many threads onnxruntime may use to generate: the CPUs this process is given, not what the default guesses.

onnxruntime's default intra-op pool counted one of this machine's two cores: generation kept one core busy (CPU time
over wall time 1.00) and decoded SmolLM2's int4 export at 48.6 tokens/s; with ``intra_op_num_threads=2`` it used both
and decoded at 82.7 (``python -m bench.llamacpp_real``, docs/speed.md). So the model is loaded with a thread count:

- ``model_config`` ``intra_op_num_threads`` when the loader gives one (``mlflow.pyfunc.load_model(uri,
  model_config={"intra_op_num_threads": 4})``);
- else the environment variable ``LLMFLOW_INTRA_OP_THREADS`` (for a process that loads the model itself, like the
  endpoint, or for processes that share their CPUs: the test suite sets 1 when it runs two workers);
- inside a Spark task, the CPUs Spark gave the task (``spark.task.cpus``), so that concurrent tasks of one executor
  do not spin their threads on each other's cores;
- otherwise the CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota (a container's
  ``--cpus``, a Kubernetes CPU limit), rounded up.

A ``genai_config.json`` that sets ``intra_op_num_threads`` itself keeps its value. Written here, not taken from a
library: ``os.process_cpu_count`` (Python 3.13) reads the affinity but not the quota, and psutil reads neither quota.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

THREADS_KEY = "intra_op_num_threads"
THREADS_ENV = "LLMFLOW_INTRA_OP_THREADS"
CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``2.5`` for ``--cpus 2.5``), or ``None`` when unlimited.

    cgroup v2's ``cpu.max`` ("<quota> <period>" or "max <period>"), else v1's ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``. Inside a container the namespace's root is the container's own group.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def available_cpus(root: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's quota rounded up; at least 1."""
    found = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        found = min(found, math.ceil(limit))
    return max(1, found)


def spark_task_cpus() -> int | None:
    """The CPUs Spark gave the task this code runs in, or ``None`` outside a Spark task (pyspark not imported
    by this process, or no task running)."""
    if "pyspark" not in sys.modules:
        return None
    from pyspark import TaskContext

    context = TaskContext.get()
    return None if context is None else int(context.cpus())


def _count(given: Any, where: str) -> int | None:
    """A thread count as given (``None``, ``""`` and 0 mean automatic); a bad one is named with where it came from."""
    if given in (None, "", 0, "0"):
        return None
    try:
        number = float(given)
    except (TypeError, ValueError):
        number = 0.0
    if not number.is_integer() or number < 1:
        raise ValueError(f"{where} {given!r} is not accepted; expected a positive whole number, or 0 for automatic")
    return int(number)


def generation_threads(config: dict[str, Any]) -> int:
    """The intra-op thread count to generate with, for a model loaded with ``config`` (its ``model_config``)."""
    return (
        _count(config.get(THREADS_KEY), f"model_config {THREADS_KEY}")
        or _count(os.environ.get(THREADS_ENV), f"environment variable {THREADS_ENV}")
        or spark_task_cpus()
        or available_cpus()
    )


def load_og_model(onnx_dir: Path, threads: int | None = None) -> Any:
    """The onnxruntime-genai model of ``onnx_dir``, its decoder session given ``threads`` intra-op threads
    (default: ``generation_threads`` without a model config) unless its ``genai_config.json`` sets a count itself."""
    import onnxruntime_genai as og

    threads = generation_threads({}) if threads is None else threads

    config = og.Config(str(onnx_dir))
    genai_config = json.loads((Path(onnx_dir) / "genai_config.json").read_text(encoding="utf-8"))
    session_options = genai_config.get("model", {}).get("decoder", {}).get("session_options", {})
    if THREADS_KEY not in session_options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {THREADS_KEY: threads}}}}))
    return og.Model(config)

"""The ONNX model generates with the CPUs its process is given (``llmflow.chat_model.cpus``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from llmflow.chat_model import cpus
from llmflow.chat_model.onnx_chat_model import OnnxChatModel


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_is_read_in_cpus(tmp_path: Path, files: dict[str, str], limit: float | None):
    assert cpus.cgroup_cpu_limit(_cgroup(tmp_path, files)) == limit


def test_a_quota_caps_the_affinity_rounded_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert cpus.available_cpus(_cgroup(tmp_path / "none", {})) == 8
    assert cpus.available_cpus(_cgroup(tmp_path / "v2", {"cpu.max": "250000 100000"})) == 3
    assert cpus.available_cpus(_cgroup(tmp_path / "small", {"cpu.max": "10000 100000"})) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert cpus.available_cpus(_cgroup(tmp_path / "wide", {"cpu.max": "400000 100000"})) == 1


def test_the_model_config_then_the_environment_set_the_count_and_a_bad_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(cpus, "available_cpus", lambda: 6)
    monkeypatch.delenv(cpus.THREADS_ENV, raising=False)
    assert cpus.generation_threads({"intra_op_num_threads": 3}) == 3
    assert cpus.generation_threads({"intra_op_num_threads": "2"}) == 2
    assert cpus.generation_threads({"intra_op_num_threads": 0}) == 6
    assert cpus.generation_threads({}) == 6
    monkeypatch.setenv(cpus.THREADS_ENV, "1")
    assert cpus.generation_threads({}) == 1
    assert cpus.generation_threads({"intra_op_num_threads": 4}) == 4
    with pytest.raises(ValueError, match=r"model_config intra_op_num_threads -2 is not accepted; expected a positive"):
        cpus.generation_threads({"intra_op_num_threads": -2})
    monkeypatch.setenv(cpus.THREADS_ENV, "two")
    with pytest.raises(ValueError, match=r"environment variable LLMFLOW_INTRA_OP_THREADS 'two' is not accepted"):
        cpus.generation_threads({})


def test_in_a_spark_task_the_task_s_cpus_are_used(monkeypatch: pytest.MonkeyPatch):
    class Task:
        @staticmethod
        def cpus() -> int:
            return 2

    fake = types.ModuleType("pyspark")
    fake.TaskContext = types.SimpleNamespace(get=lambda: Task())
    monkeypatch.setitem(sys.modules, "pyspark", fake)
    monkeypatch.setattr(cpus, "available_cpus", lambda: 16)
    monkeypatch.delenv(cpus.THREADS_ENV, raising=False)
    assert cpus.generation_threads({}) == 2
    fake.TaskContext = types.SimpleNamespace(get=lambda: None)  # the driver: no task
    assert cpus.generation_threads({}) == 16


def _threads() -> int:
    return len(list(Path("/proc/self/task").iterdir()))


def _threads_added(load) -> int:  # noqa: ANN001
    before = _threads()
    model = load()
    added = _threads() - before
    del model
    return added


def test_the_count_reaches_onnxruntime_unless_the_export_sets_its_own(
    onnx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """onnxruntime starts an intra-op pool of (count - 1) threads with each session; the export's own count wins.
    (Its default here is one thread: the second model below, loaded without a count, starts none.)"""
    import onnxruntime_genai as og

    warm = cpus.load_og_model(onnx_dir, 1)  # onnxruntime-genai's own threads start with its first model
    assert _threads_added(lambda: cpus.load_og_model(onnx_dir, 1)) == 0
    assert _threads_added(lambda: cpus.load_og_model(onnx_dir, 4)) == 3
    assert _threads_added(lambda: og.Model(str(onnx_dir))) == 0
    monkeypatch.setenv(cpus.THREADS_ENV, "3")  # without a count, as the smoke test and perplexity load it
    assert _threads_added(lambda: cpus.load_og_model(onnx_dir)) == 2
    pinned = tmp_path / "pinned"
    shutil.copytree(onnx_dir, pinned)
    config = json.loads((pinned / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = 2
    (pinned / "genai_config.json").write_text(json.dumps(config))
    assert _threads_added(lambda: cpus.load_og_model(pinned, 4)) == 1
    del warm


def test_the_pyfunc_loads_with_the_count_of_its_model_config(onnx_dir: Path):
    model = OnnxChatModel()
    context = types.SimpleNamespace(artifacts={"onnx": str(onnx_dir)}, model_config={"intra_op_num_threads": 3})
    model.load_context(context)
    assert model.threads == 3
    answer = model.predict(None, [{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}])
    assert answer[0]["choices"][0]["message"]["content"] is not None


def test_the_endpoint_sets_the_thread_count_the_model_loads_with(monkeypatch: pytest.MonkeyPatch, capsys):
    from llmflow.serving import openai_server

    monkeypatch.delenv(cpus.THREADS_ENV, raising=False)  # and back as it was after the test
    parser = openai_server.build_parser()
    args = parser.parse_args(["--model-uri", "models:/m@champion", "--threads", "3"])
    openai_server.check(args, parser)
    openai_server.use_threads(args.threads)
    assert cpus.generation_threads({}) == 3
    with pytest.raises(SystemExit):
        openai_server.check(parser.parse_args(["--model-uri", "m", "--threads", "0"]), parser)
    assert "--threads 0 is not accepted; expected 1 or more" in capsys.readouterr().err

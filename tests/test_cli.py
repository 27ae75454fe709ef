"""Step scripts: flags, defaults and the MLproject commands agree; errors are one line."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
import yaml

from llmflow.cli import PROJECT_ROOT, StepParser, mlproject_parameters, whole_number

MLPROJECT = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
ENTRY_POINTS = [
    "download",
    "export_onnx",
    "log_transformers",
    "log_pyfunc",
    "register",
    "evaluate",
    "rollback",
    "reproduce",
    "main",
]


def test_mlproject_declares_every_entry_point():
    assert set(MLPROJECT["entry_points"]) == set(ENTRY_POINTS)
    assert MLPROJECT["conda_env"] == "conda.yaml"


def _parser_of(entry_point: str, monkeypatch: pytest.MonkeyPatch) -> StepParser:
    module = importlib.import_module(f"steps.{entry_point}")
    captured: dict[str, StepParser] = {}
    monkeypatch.setattr(module, "run_step", lambda step, parser, argv=None: captured.update(parser=parser))
    module.main([])
    return captured["parser"]


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_step_flags_are_the_mlproject_parameters(entry_point: str, monkeypatch: pytest.MonkeyPatch):
    parser = _parser_of(entry_point, monkeypatch)
    dests = {a.dest for a in parser.parser._actions if a.dest != "help"}
    assert dests == set(mlproject_parameters(entry_point))
    for action in parser.parser._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help text"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_each_flag_is_also_accepted_as_written_in_mlproject(entry_point: str, monkeypatch: pytest.MonkeyPatch):
    """``mlflow run -P key=value`` appends a parameter its entry point does not declare as ``--key value``."""
    parser = _parser_of(entry_point, monkeypatch)
    for action in parser.parser._actions:
        if action.dest != "help":
            assert f"--{action.dest}" in action.option_strings
            assert f"--{action.dest.replace('_', '-')}" == action.option_strings[0], "kebab-case stays first in help"


def test_snake_case_and_kebab_case_flags_parse_the_same(monkeypatch: pytest.MonkeyPatch):
    parser = _parser_of("export_onnx", monkeypatch)
    values = {"download_run_id": "abc123", "precision": "int8", "int4_block_size": "64", "int4_accuracy_level": "0"}
    kebab = parser.parse([w for k, v in values.items() for w in (f"--{k.replace('_', '-')}", v)])
    snake = parser.parse([w for k, v in values.items() for w in (f"--{k}", v)])
    assert snake == kebab == {**values, "execution_provider": "cpu", "int4_block_size": 64, "int4_accuracy_level": 0}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_mlproject_command_passes_each_parameter_to_its_flag(entry_point: str):
    command = MLPROJECT["entry_points"][entry_point]["command"]
    assert command.startswith(f"python -m steps.{entry_point} ")
    pairs = dict(re.findall(r"--([a-z0-9-]+) \{(\w+)\}", command))
    assert {flag.replace("-", "_"): param for flag, param in pairs.items()} == {
        p: p for p in mlproject_parameters(entry_point)
    }


def test_main_defaults_match_the_steps_it_chains():
    main = mlproject_parameters("main")
    for step in ENTRY_POINTS[:-1]:
        for name, spec in mlproject_parameters(step).items():
            if name in main and "default" in spec:
                assert str(main[name]["default"]) == str(spec["default"]), f"{step}.{name}"


@pytest.mark.parametrize(("text", "value"), [("32", 32), ("32.0", 32), ("4", 4)])
def test_whole_number_accepts_mlflow_float_params(text: str, value: int):
    assert whole_number(text) == value


@pytest.mark.parametrize("text", ["32.5", "abc"])
def test_whole_number_rejects_others(text: str):
    with pytest.raises(Exception, match=text):
        whole_number(text)


def test_conda_env_pins_exactly_the_requirements():
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    requirements = [
        line.strip()
        for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pip_deps == requirements
    assert all("==" in r for r in requirements)
    # An exact Python: MLflow's virtualenv and uv managers install the version it names (pyproject allows 3.11).
    assert "python=3.11.7" in conda["dependencies"]


def test_bad_input_prints_one_line_and_exits_2(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "HF_HUB_OFFLINE": "1", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "steps.download", "--model", str(tmp_path / "missing")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: download: local model folder '{tmp_path / 'missing'}' not found; "
        "expected a folder saved with save_pretrained (config.json, *.safetensors, tokenizer "
        "files) or a hub repo id"
    ]
    assert "Traceback" not in proc.stderr

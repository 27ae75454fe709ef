"""Each step's options: one declaration per parameter, a parser built from it, MLproject in agreement."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import subprocess
import sys

import pytest
import yaml
from mlproject import MLPROJECT, mlproject_parameters

from llmflow import PROJECT_ROOT
from llmflow.cli import options_class
from llmflow.errors import InputError
from llmflow.main import MainOptions
from llmflow.options import (
    StepOptions,
    build,
    build_parser,
    defaults,
    leaf_fields,
    names,
    param_text,
    parse,
    replace,
    whole_number,
)

ENTRY_POINTS = [
    "download",
    "export_onnx",
    "log_transformers",
    "log_pyfunc",
    "register",
    "evaluate",
    "rollback",
    "reproduce",
    "promote",
    "main",
    "batch_predict",
]
SCRIPT = re.compile(r"from llmflow\.(?P<module>(?!cli\b)\w+) import (?P<function>\w+)  # noqa: E402\n")


def step_options(entry_point: str) -> type[StepOptions]:
    """The options class of the function that ``steps/<entry_point>.py`` runs."""
    match = SCRIPT.search((PROJECT_ROOT / "steps" / f"{entry_point}.py").read_text())
    assert match, f"steps/{entry_point}.py does not import its step function from llmflow"
    return options_class(getattr(importlib.import_module(f"llmflow.{match['module']}"), match["function"]))


def test_mlproject_declares_every_entry_point():
    assert set(MLPROJECT["entry_points"]) == set(ENTRY_POINTS)
    assert MLPROJECT["conda_env"] == "conda.yaml"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_options_are_the_mlproject_parameters_with_the_same_defaults(entry_point: str):
    cls = step_options(entry_point)
    declared = mlproject_parameters(entry_point)
    assert set(names(cls)) == set(declared)
    kinds = {"string": (str, bool), "float": (int, float)}
    for field, kind in leaf_fields(cls):
        spec = declared[field.name]
        assert field.metadata["help"], f"{entry_point}: {field.name} has no help text"
        default = defaults(cls).get(field.name, dataclasses.MISSING)
        if "default" in spec:
            assert default is not dataclasses.MISSING, f"{entry_point}: {field.name} has no default in its options"
            # MLflow passes numbers as floats: 32 in the options is 32 (or 32.0) in MLproject.
            if kind is bool:
                assert spec["default"] == param_text(default), field.name  # "true"/"false", as the parser reads
            else:
                assert str(spec["default"]) == str(default) or float(spec["default"]) == float(default), field.name
        else:
            assert default is dataclasses.MISSING, f"{entry_point}: {field.name} has a default MLproject lacks"
        assert kind in kinds[spec["type"]], f"{entry_point}: {field.name} is {kind}, MLproject says {spec['type']}"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_each_flag_is_kebab_case_and_also_as_written_in_mlproject(entry_point: str):
    """``mlflow run -P key=value`` appends a parameter its entry point does not declare as ``--key value``."""
    parser = build_parser(step_options(entry_point), entry_point, "test")
    for action in parser._actions:
        if action.dest != "help":
            assert f"--{action.dest}" in action.option_strings
            assert f"--{action.dest.replace('_', '-')}" == action.option_strings[0], "kebab-case stays first in help"


def test_snake_case_and_kebab_case_flags_parse_the_same():
    cls = step_options("export_onnx")
    values = {"download_run_id": "abc123", "precision": "int8", "int4_block_size": "64", "int4_accuracy_level": "0"}
    parser = build_parser(cls, "export_onnx", "test")
    kebab = vars(parser.parse_args([w for k, v in values.items() for w in (f"--{k.replace('_', '-')}", v)]))
    snake = vars(parser.parse_args([w for k, v in values.items() for w in (f"--{k}", v)]))
    assert (
        snake
        == kebab
        == {
            **values,
            "execution_provider": "cpu",
            "int4_block_size": 64,
            "int4_accuracy_level": 0,
            "int4_algo": "gptq",
            "int4_mixed_precision": "last_matmul,mixed_layers,qkv",
            "int4_symmetric": False,
            "int4_clip": "none",
            "onnx_source": "export",
        }
    )


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_mlproject_command_runs_the_script_and_passes_each_parameter_to_its_flag(entry_point: str):
    command = MLPROJECT["entry_points"][entry_point]["command"]
    assert command.startswith(f"python steps/{entry_point}.py ")
    pairs = dict(re.findall(r"--([a-z0-9-]+) \{(\w+)\}", command))
    assert {flag.replace("-", "_"): param for flag, param in pairs.items()} == {
        p: p for p in mlproject_parameters(entry_point)
    }


def test_main_composes_the_steps_groups_without_repeating_their_fields():
    """main's own fields are its name and rerun_from; the rest are the steps' own options classes."""
    groups = {f.name: f.type for f in dataclasses.fields(MainOptions)}
    own = [f.name for f in dataclasses.fields(MainOptions) if f.name in ("registered_model_name", "rerun_from")]
    assert own == ["registered_model_name", "rerun_from"]
    assert len(groups) - len(own) == 6
    for step, group in (
        ("download", "source"),
        ("export_onnx", "export"),
        ("log_transformers", "transformers"),
        ("log_pyfunc", "pyfunc"),
        ("evaluate", "evaluation"),
    ):
        assert issubclass(step_options(step), type(getattr(MainOptions(), group))), step


def test_main_defaults_match_the_steps_it_chains():
    main = mlproject_parameters("main")
    for step in ENTRY_POINTS[:-1]:
        for name, spec in mlproject_parameters(step).items():
            if name in main and "default" in spec:
                assert str(main[name]["default"]) == str(spec["default"]), f"{step}.{name}"


def test_build_fills_groups_from_flat_values_and_refuses_unknown_ones():
    options = build(MainOptions, {"model": "x/y", "precision": "fp32", "eval_max_new_tokens": 8})
    assert (options.source.model, options.export.precision, options.evaluation.eval_max_new_tokens) == (
        "x/y",
        "fp32",
        8,
    )
    assert options.params()["int4_block_size"] == 32
    assert replace(options, max_new_tokens=7).generation.max_new_tokens == 7
    with pytest.raises(InputError, match=r"unknown parameter\(s\) \['colour'\]; accepted: "):
        build(MainOptions, {"colour": "red"})


@pytest.mark.parametrize(("text", "value"), [("32", 32), ("32.0", 32), ("4", 4)])
def test_whole_number_accepts_mlflow_float_params(text: str, value: int):
    assert whole_number(text) == value


@pytest.mark.parametrize("text", ["32.5", "abc"])
def test_whole_number_rejects_others(text: str):
    with pytest.raises(argparse.ArgumentTypeError, match=text):
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


@pytest.mark.integration
def test_a_step_script_runs_as_a_plain_file_and_reports_bad_input_in_one_line(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "HF_HUB_OFFLINE": "1", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "steps/download.py", "--model", str(tmp_path / "missing")],
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


def test_a_misspelt_parameter_is_one_line_that_names_the_nearest(capsys: pytest.CaptureFixture):
    from llmflow.export_onnx import ExportOptions
    from llmflow.options import parse

    with pytest.raises(SystemExit) as info:
        parse(ExportOptions, "export_onnx", "", ["--download-run-id", "r", "--precison", "int4"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "steps/export_onnx.py: unknown parameter 'precison'; did you mean 'precision'? (--help lists the parameters)"
    ]
    with pytest.raises(SystemExit):
        parse(ExportOptions, "export_onnx", "", ["--download-run-id", "r", "--zzz=1", "stray"])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("steps/export_onnx.py: unknown parameter 'zzz'; accepted: precision, execution_provider,")
    with pytest.raises(SystemExit):
        parse(ExportOptions, "export_onnx", "", ["--precision", "int4"])
    assert capsys.readouterr().err.splitlines() == [
        "steps/export_onnx.py: the following arguments are required: --download-run-id/--download_run_id "
        "(--help lists the parameters)"
    ]


@pytest.mark.parametrize(("text", "value"), [("true", True), ("FALSE", False), (" True ", True)])
def test_a_bool_parameter_reads_true_or_false_in_any_case(text: str, value: bool):
    options = parse(
        step_options("log_transformers"), "log_transformers", "", ["--download-run-id", "d", "--save-pretrained", text]
    )
    assert options.save_pretrained is value
    assert build(type(options), {"download_run_id": "d", "save_pretrained": text}).save_pretrained is value
    assert param_text(value) == text.strip().lower()


@pytest.mark.parametrize("text", ["yes", "1", ""])
def test_a_bool_parameter_refuses_anything_else_in_one_line(text: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit):
        parse(
            step_options("log_transformers"),
            "log_transformers",
            "",
            ["--download-run-id", "d", "--save-pretrained", text],
        )
    error = capsys.readouterr().err.strip()
    assert f"'{text}' is not accepted; expected true or false" in error and "\n" not in error
    with pytest.raises(InputError, match=f"^save_pretrained '{text}' is not accepted; expected true or false$"):
        build(step_options("log_transformers"), {"download_run_id": "d", "save_pretrained": text}).check()

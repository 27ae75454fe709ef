"""MLproject, deploy/databricks/MLproject and the README's parameter table are written from the options classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.projects._project_spec import load_project

from llmflow import PROJECT_ROOT, project_files
from llmflow.cli import options_class
from llmflow.options import names


def test_the_committed_files_are_what_the_options_classes_give(capsys: pytest.CaptureFixture):
    assert project_files.main(["--check"]) == 0, capsys.readouterr().out


def test_mlflow_reads_every_entry_point_with_one_flag_per_parameter():
    project = load_project(str(PROJECT_ROOT))
    for name, function in project_files.ENTRY_POINTS.items():
        entry = project.get_entry_point(name)
        params = set(names(options_class(function)))
        assert set(entry.parameters) == params, name
        assert entry.command.startswith(f"python steps/{name}.py ")
        assert sorted(part for part in entry.command.split() if part.startswith("--")) == sorted(
            f"--{param.replace('_', '-')}" for param in params
        )


def test_every_parameter_has_a_row_in_the_readme_table():
    table = project_files.parameter_table()
    for params in project_files.entry_parameters().values():
        for param in params:
            assert f"`{param.name}`" in table
    assert table.count("\n| `") == len(project_files.ENTRY_POINTS)  # one first row per entry point


def test_a_changed_default_is_caught_and_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    for name in ("MLproject", "README.md", "requirements.txt"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    (tmp_path / "deploy" / "databricks").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "deploy" / "databricks" / "MLproject", tmp_path / "deploy" / "databricks")
    mlproject = tmp_path / "MLproject"
    mlproject.write_text(mlproject.read_text().replace("default: 32}", "default: 64}", 1))
    monkeypatch.setattr(project_files, "PROJECT_ROOT", tmp_path)

    assert project_files.main(["--check"]) == 1
    assert capsys.readouterr().out.strip() == (
        "MLproject differs from what the options classes give: run python -m llmflow.project_files"
    )
    assert project_files.main([]) == 0
    assert yaml.safe_load(mlproject.read_text())["entry_points"]["export_onnx"]["parameters"]["int4_block_size"] == {
        "type": "float",
        "default": 32,
    }
    assert project_files.main(["--check"]) == 0

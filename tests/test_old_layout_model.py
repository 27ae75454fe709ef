"""A model logged by the layout before ``llmflow/serving`` existed still loads and serves with today's code.

Before the move (commit 84a1e5f) ``log_pyfunc`` logged ``llmflow/onnx_chat_model.py`` as the model's code and
``llmflow/chat_protocol.py`` as its one code path. Models from code carry their own code, so such a model does not
need today's files; this test checks it, by logging one the old way and serving it next to one logged today.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

from llmflow import PROJECT_ROOT
from llmflow.log_pyfunc import MODEL_CODE, SERVING_PACKAGE

OLD_COMMIT = "84a1e5f"
OLD_FILES = ("llmflow/onnx_chat_model.py", "llmflow/chat_protocol.py")
CONFIG = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 50, "model_name": "tiny"}
ASK = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}


def old_files(folder: Path) -> tuple[Path, Path]:
    """The pyfunc file and the protocol file of the old layout, read from git."""
    paths = []
    for name in OLD_FILES:
        shown = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:{name}"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
        )
        assert shown.returncode == 0, f"git cannot show {name} at {OLD_COMMIT} (a clone with history is needed)"
        path = folder / Path(name).name
        path.write_text(shown.stdout)
        paths.append(path)
    return paths[0], paths[1]


def log(python_model: Path, code_path: Path, onnx_dir: Path, importable: Path | None = None) -> str:
    """Log as ``log_pyfunc`` does; ``importable``: a folder on ``sys.path`` while logging only.

    Logging a model from code imports its file. In the old layout its fallback ``from llmflow import chat_protocol``
    found the project's module; today the old protocol file's folder stands in for it while logging, and is gone
    again before the model is loaded, so the loaded model can only use the copy logged with it.
    """
    if importable is not None:
        sys.path.insert(0, str(importable))
    try:
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(python_model),
                code_paths=[str(code_path)],
                artifacts={"onnx": str(onnx_dir)},
                model_config=CONFIG,
            )
    finally:
        if importable is not None:
            sys.path.remove(str(importable))
            sys.modules.pop("chat_protocol", None)
    return info.model_uri


def answer(model_uri: str) -> dict[str, Any]:
    [completion] = mlflow.pyfunc.load_model(model_uri).predict(ASK)
    return completion


def test_a_model_logged_by_the_old_layout_answers_as_one_logged_today(
    tracking_uri: str, onnx_dir: Path, tmp_path: Path
):
    old_model, old_protocol = old_files(tmp_path)
    assert "import chat_protocol as protocol" in old_model.read_text()
    old = answer(log(old_model, old_protocol, onnx_dir, importable=tmp_path))
    assert Path(sys.modules["chat_protocol"].__file__).parent.name == "code"
    new = answer(log(MODEL_CODE, SERVING_PACKAGE, onnx_dir))
    assert old["choices"] == new["choices"]
    assert old["usage"] == new["usage"]
    assert new["choices"][0]["message"]["content"] == "Madrid"


@pytest.mark.parametrize("name", OLD_FILES)
def test_the_old_files_are_not_todays(name: str, tmp_path: Path):
    """The test above would prove nothing if the old layout's files were today's."""
    old = dict(zip(OLD_FILES, old_files(tmp_path), strict=True))[name]
    today = SERVING_PACKAGE / old.name
    assert old.read_text() != today.read_text()

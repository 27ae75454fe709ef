"""An ONNX model logged before its code left ``llmflow/serving/`` still loads and answers as one logged today.

The fixture, ``fixtures/onnx-model-before-split.tar.gz``, is such a model saved by ``log_pyfunc``'s own code at commit
77e6419 (``mlflow.pyfunc.save_model`` with that commit's ``MODEL_CODE`` and code path, the tiny Phi-3's int4 export
as its ``onnx`` artifact), without the ONNX files, which the test puts back from its own export of the same model.
Its code is ``code/serving/`` (the whole package then, endpoint included) and imports ``serving.*``; today's model
carries ``code/chat_model/``. A model from code carries its own code, so the old one must not need today's files.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import mlflow
import pytest

from llmflow.log_pyfunc import MODEL_CODE, MODEL_PACKAGE

FIXTURE = Path(__file__).parent / "fixtures" / "onnx-model-before-split.tar.gz"
CONFIG = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 50, "model_name": "tiny"}
ASK = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]}


@pytest.fixture
def old_model(onnx_dir: Path, tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    model = tmp_path / "onnx-model-before-split"
    shutil.copytree(onnx_dir, model / "artifacts" / "onnx")
    return model


def answer(model: str) -> dict[str, Any]:
    [completion] = mlflow.pyfunc.load_model(model).predict(ASK)
    return completion


def test_the_fixture_is_the_layout_before_the_split(old_model: Path):
    """The test below would prove nothing if the fixture's code were today's."""
    code = old_model / "code"
    assert {path.name for path in code.iterdir()} == {"serving"}
    assert "from serving import chat_protocol as protocol" in (code / "serving" / "onnx_chat_model.py").read_text()
    assert (code / "serving" / "openai_server.py").is_file()
    assert not (Path(MODEL_PACKAGE).parent / "serving" / "onnx_chat_model.py").exists()


def test_a_model_logged_before_the_split_answers_as_one_logged_today(old_model: Path, onnx_dir: Path, tmp_path: Path):
    old = answer(str(old_model))
    # It ran its own copy of the protocol, not the project's.
    assert Path(sys.modules["serving.chat_protocol"].__file__).is_relative_to(old_model)
    today = tmp_path / "today"
    mlflow.pyfunc.save_model(
        path=str(today),
        python_model=str(MODEL_CODE),
        code_paths=[str(MODEL_PACKAGE)],
        artifacts={"onnx": str(onnx_dir)},
        model_config=CONFIG,
    )
    assert {path.name for path in (today / "code").iterdir()} == {"chat_model"}
    new = answer(str(today))
    assert old["choices"] == new["choices"]
    assert old["usage"] == new["usage"]
    assert new["choices"][0]["message"]["content"] == "Madrid"

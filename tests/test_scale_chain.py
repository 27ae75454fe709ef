"""The scale benchmark charges each process of ``main``'s tree to the step it runs (``bench.scale.chain.step_key``)."""

from __future__ import annotations

import pytest

from bench.scale.chain import step_key


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("python steps/export_onnx.py --download-run-id abc --precision int4", "export_onnx"),
        ("/venv/bin/python steps/evaluate.py --registered-model-name phi3-scale-onnx --qa-path q", "evaluate:onnx"),
        (
            "python steps/register.py --model-uri models:/m-1 --registered-model-name x-transformers",
            "register:transformers",
        ),
        ("python -m steps.log_pyfunc --export-run-id abc", "log_pyfunc"),
        ("python -m steps.main --model /work/build/phi3-real-shape", None),
        ("python steps/main.py --model m", None),
        ("python -m mlflow run . -e main", None),
    ],
)
def test_each_step_command_form_is_named_after_its_step(command: str, key: str | None):
    assert step_key(command) == key

"""The project's ONNX chat pyfunc with a generation that fails, for the tests of error answers (logged from code).

It reads and checks requests as the real model does (bad input is still a 400 naming the field), then fails in
generation with an error whose message holds a server path, as an unreadable weights file would: the answer must
name the error's type and carry neither that message nor a traceback.
"""

from collections.abc import Iterator
from typing import Any

import mlflow

try:
    from chat_model.onnx_chat_model import OnnxChatModel
except ModuleNotFoundError:
    from llmflow.chat_model.onnx_chat_model import OnnxChatModel


class BrokenChatModel(OnnxChatModel):
    def generate_steps(self, batch: list[Any]) -> Iterator[list[tuple[int, str]]]:
        raise OSError(f"cannot read {self.onnx_dir / 'model.onnx.data'}: input/output error")
        yield  # a generator, as the real one


mlflow.models.set_model(BrokenChatModel())

"""The project's ONNX chat pyfunc, slowed down, for the serving tests (logged from code like the real one).

The tiny test model answers in a few milliseconds, faster than a client can leave or a timeout can pass. This
model waits ``delay_s`` (model config) after each step that yields text, so a test can disconnect, time out or
fill the queue while a request runs. Everything else is the real model: the same loop, rows and answers.
"""

import time
from collections.abc import Iterator
from typing import Any

import mlflow

try:
    from chat_model.onnx_chat_model import OnnxChatModel
except ModuleNotFoundError:
    from llmflow.chat_model.onnx_chat_model import OnnxChatModel


class SlowChatModel(OnnxChatModel):
    def load_context(self, context: Any) -> None:
        super().load_context(context)
        self.delay_s = float((context.model_config or {}).get("delay_s", 0.2))

    def generate_steps(self, batch: list[Any]) -> Iterator[list[tuple[int, str]]]:
        for texts in super().generate_steps(batch):
            yield texts
            if texts:
                time.sleep(self.delay_s)


mlflow.models.set_model(SlowChatModel())

"""What goes to a person's console, shared by every layer: printed lines moved to the debug log."""

from __future__ import annotations

import io
import logging


class DebugLines(io.TextIOBase):
    """A text stream whose non-blank lines go to ``logger`` at DEBUG, each after ``prefix``.

    For ``contextlib.redirect_stdout`` around a library that prints what a person does not need: the onnxruntime-genai
    builder (a line per layer read and file written), ``mlflow.genai.evaluate`` (ten lines when it ends).
    """

    def __init__(self, logger: logging.Logger, prefix: str) -> None:
        super().__init__()
        self.logger, self.prefix = logger, prefix

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.logger.debug("%s%s", self.prefix, line)
        return len(text)

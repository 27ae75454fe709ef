"""MLflow traces of served requests (``--trace-ratio``): one trace per sampled request, linked to its logged model.

A request's trace starts when it has a place and ends with its answer, which for a stream is after the last
chunk, in another task. That is why this uses ``mlflow.start_span_no_context`` and not ``@mlflow.trace``, which
needs one function call to hold the whole request. The trace's ``mlflow.modelId`` metadata is the logged model
of the version that answered, so ``mlflow.search_traces(model_id=...)`` finds it and the MLflow UI shows it on
that model; the trace goes to that logged model's experiment (the active one when the model is not a logged
model of the store).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import mlflow
from mlflow.entities import SpanStatusCode, SpanType
from mlflow.tracing.constant import TraceMetadataKey

logger = logging.getLogger(__name__)


class _Untraced:
    def end(self, outputs: Any, error: str | None) -> None:
        pass


class _Traced:
    def __init__(self, span: Any) -> None:
        self.span = span
        self.ended = False

    def end(self, outputs: Any, error: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            status = SpanStatusCode.ERROR if error else SpanStatusCode.OK
            if error:
                self.span.set_attribute("error", error)
            self.span.end(outputs=outputs, status=status)
        except Exception:  # a trace must never fail the request it describes
            logger.exception("could not end the trace of a request")


class Tracer:
    """Starts a trace for a share ``ratio`` (0 to 1) of the requests; 0 traces none."""

    def __init__(self, ratio: float, seed: int | None = None) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"trace ratio {ratio} must be from 0 to 1")
        self.ratio = ratio
        self.random = random.Random(seed)

    def start(self, served: Any, request: dict[str, Any]) -> _Traced | _Untraced:
        if self.ratio == 0 or self.random.random() >= self.ratio:
            return _Untraced()
        metadata = {TraceMetadataKey.MODEL_ID: served.target.model_id} if served.target.model_id else {}
        try:
            span = mlflow.start_span_no_context(
                "chat.completions",
                span_type=SpanType.CHAT_MODEL,
                inputs=request,
                attributes={"model": served.label, "model_uri": served.target.load_uri},
                metadata=metadata,
                experiment_id=served.target.experiment_id,
            )
        except Exception:
            logger.exception("could not start the trace of a request")
            return _Untraced()
        return _Traced(span)

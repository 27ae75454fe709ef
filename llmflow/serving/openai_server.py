"""An OpenAI-compatible ``/v1/chat/completions`` endpoint in front of a registered chat model.

Why this exists: neither of MLflow's own serving paths speaks the OpenAI protocol faithfully for a
custom pyfunc. ``mlflow models serve`` answers only ``/invocations`` and cannot stream. The AI
gateway's ``mlflow-model-serving`` provider forwards only the first message's content (so multi-turn
chats are rejected or lose their history) and returns ``usage`` as nulls. This module is the
thinnest adapter that does: it loads the model once with ``mlflow.pyfunc.load_model`` and maps the
OpenAI request onto the model's own chat request, which already has the OpenAI shape. Streaming uses
the model's ``predict_stream`` and Server-Sent Events, as the official ``openai`` client expects.

Run it with ``python -m llmflow.serving.openai_server --model-uri models:/<name>@champion``.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import logging
from collections.abc import Iterator
from typing import Any

import mlflow
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from mlflow.exceptions import MlflowException
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

logger = logging.getLogger(__name__)

# OpenAI request fields passed on to the model; `max_completion_tokens` is the newer name of `max_tokens`.
FORWARDED = ("messages", "max_tokens", "temperature", "top_p", "top_k", "stop")
RENAMED = {"max_completion_tokens": "max_tokens"}
# Accepted and ignored: one model is served, so `model` only names it; the rest do not change the answer.
IGNORED = (
    "model",
    "stream",
    "stream_options",
    "n",
    "user",
    "seed",
    "logprobs",
    "frequency_penalty",
    "presence_penalty",
)
CLIENT_ERROR_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_REQUEST"}


class BadRequest(ValueError):
    """A request the endpoint answers with HTTP 400 in OpenAI's error format."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def model_request(body: Any) -> dict[str, Any]:
    """The model's chat request for an OpenAI request body; ``BadRequest`` names what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - set(FORWARDED) - set(RENAMED) - set(IGNORED))
    if unknown:
        raise BadRequest(
            f"unsupported field(s) {unknown}; accepted: {', '.join(FORWARDED + tuple(RENAMED))}", unknown[0]
        )
    if body.get("n", 1) != 1:
        raise BadRequest(f"n={body['n']} is not supported; this endpoint returns exactly one choice", "n")
    if "messages" not in body:
        raise BadRequest("missing required field 'messages'", "messages")
    request = {RENAMED.get(key, key): value for key, value in body.items() if key in FORWARDED or key in RENAMED}
    return {key: value for key, value in request.items() if value is not None}


def _as_completion(prediction: Any) -> dict[str, Any]:
    # pyfunc predict on a single chat request returns a one-element list of completions.
    return prediction[0] if isinstance(prediction, list) else prediction


def _sse(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def _client_error(exc: MlflowException) -> bool:
    return exc.error_code in CLIENT_ERROR_CODES


def create_app(model_uri: str, served_name: str | None = None) -> FastAPI:
    """An app serving ``model_uri`` (loaded once, shared by all requests) under ``served_name``."""
    model = mlflow.pyfunc.load_model(model_uri)
    name = served_name or model_uri
    app = FastAPI(title="llmflow OpenAI-compatible chat endpoint")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llmflow"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request) -> Any:
        try:
            body = await http_request.json()
        except ValueError:
            return JSONResponse(error_body("request body is not valid JSON"), status_code=400)
        try:
            request = model_request(body)
            if body.get("stream"):
                # Pull the first chunk now, so that a bad request still gets a 400 and not a broken stream.
                chunks = iter(model.predict_stream(request))
                # MLflow's stream sets and later resets a ContextVar, so every next() must run in one Context.
                context = contextvars.copy_context()
                first = await run_in_threadpool(context.run, next, chunks, None)
                head = [first] if first is not None else []
                rest = iter(lambda: context.run(next, chunks, None), None)
                return StreamingResponse(
                    iterate_in_threadpool(_sse(_chain(head, rest))), media_type="text/event-stream"
                )
            return _as_completion(await run_in_threadpool(model.predict, request))
        except BadRequest as exc:
            return JSONResponse(error_body(str(exc), exc.param), status_code=400)
        except MlflowException as exc:
            if _client_error(exc):
                return JSONResponse(error_body(exc.message), status_code=400)
            logger.exception("model failed on a request")
            return JSONResponse({"error": {"message": exc.message, "type": "server_error"}}, status_code=500)

    return app


def _chain(first: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from first
    yield from rest


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a registered chat model behind /v1/chat/completions.")
    parser.add_argument("--model-uri", type=str, required=True, help="e.g. models:/tiny-phi3-onnx@champion")
    parser.add_argument("--host", type=str, default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on.")
    parser.add_argument("--served-name", type=str, default=None, help="Model id to report (default: the URI).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(args.model_uri, args.served_name), host=args.host, port=args.port)


if __name__ == "__main__":
    main()

"""The FastAPI app of the OpenAI-compatible endpoint: routes, keys, limits, and the answer of every request.

A chat request goes: key (401) -> body size (413) -> JSON and fields (400) -> a model loaded (503) -> the ``model``
it names is the one served (404 ``model_not_found``) -> the pyfunc parses, tokenises and checks it against the
context (400; no place taken yet) -> a place in the queue (429 with ``Retry-After``) -> the batching scheduler
generates -> the answer, or 504 when ``--request-timeout`` passes first. A client that leaves, streamed or not,
cancels its job. Every answer names the version in ``model`` and in the ``X-Model-Version`` header. Every error,
an unknown path (404) or method (405) included, is in OpenAI's error format (``errors``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from mlflow.exceptions import MlflowException
from starlette.concurrency import run_in_threadpool

from llmflow.chat_model.chat_protocol import shown
from llmflow.chat_model.tool_replies import ReplyStream, parse

from . import openai_protocol as protocol
from .auth import authorized
from .errors import Failure, add_error_handlers, internal
from .holder import ModelHolder, Served, served_names
from .metrics import Metrics
from .scheduler import Closed, Job, QueueFull
from .tracing import Tracer

VERSION_HEADER = "X-Model-Version"
CLIENT_ERROR_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_REQUEST"}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    request_timeout_s: float
    retry_after_s: int


def _headers(served: Served) -> dict[str, str]:
    return {VERSION_HEADER: served.target.version or ""}


async def _body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Failure(
            413, f"request body of {declared} bytes exceeds the limit of {limit} bytes", "invalid_request_error"
        )
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise Failure(413, f"request body exceeds the limit of {limit} bytes", "invalid_request_error")
    try:
        return json.loads(raw)
    except ValueError:
        raise Failure(400, "request body is not valid JSON", "invalid_request_error") from None


async def _prepare(served: Served, call: protocol.ChatCall) -> Any:
    """The pyfunc's one row for the request: parsed, tokenised, its budget checked against the context."""
    try:
        [row] = await run_in_threadpool(served.model.prepare, call.request, None)
    except MlflowException as error:
        if error.error_code in CLIENT_ERROR_CODES:
            raise Failure(400, error.message, "invalid_request_error", getattr(error, "param", None)) from None
        raise internal(error) from None
    except Exception as error:
        raise internal(error) from None
    return row


def _check_model(holder: ModelHolder, served: Served | None, model: str | None) -> None:
    """404 ``model_not_found``, as OpenAI answers, unless ``model`` is absent or a name of the model served."""
    if model is None or model in served_names(holder.model_uri, holder.name, served):
        return
    message = f"model {shown(model)} is not served here; this endpoint serves {holder.name!r} (see GET /v1/models)"
    raise Failure(404, message, "invalid_request_error", "model", code="model_not_found")


async def _place(holder: ModelHolder, call: protocol.ChatCall, limits: Limits) -> tuple[Served, Job]:
    """The request's place in the current model's queue: 503 while loading, 404 for another model's name, 429 when
    the queue is full."""
    retry = {"Retry-After": str(limits.retry_after_s)}
    while True:
        served = holder.current
        if served is None:
            raise Failure(503, "the model is loading; retry shortly", "service_unavailable", headers=retry)
        _check_model(holder, served, call.model)
        job = Job(await _prepare(served, call), asyncio.get_running_loop())
        try:
            served.scheduler.submit(job)
            return served, job
        except QueueFull as error:
            raise Failure(429, f"server busy: {error}; retry later", "rate_limit_error", headers=retry) from None
        except Closed:  # the alias moved between reading `current` and queueing: the new version takes it
            continue


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(job: Job, deadline: float) -> AsyncIterator[str]:
    """The job's text as it comes; ``Failure`` 504 when the deadline passes, 500 when generation failed."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            kind, value = await asyncio.wait_for(job.events.get(), max(remaining, 0.0))
        except TimeoutError:
            job.cancel()
            raise Failure(504, "the request ran past --request-timeout and was stopped", "timeout") from None
        if kind == "done":
            return
        if kind == "error":
            raise Failure(500, value, "server_error")
        yield value


def create_app(
    holder: ModelHolder,
    metrics: Metrics,
    keys: tuple,
    limits: Limits,
    tracer: Tracer,
    protect_all: bool = False,
) -> FastAPI:
    """The app over ``holder``; ``keys`` empty: open; ``protect_all``: /health and /metrics need a key too."""
    app = FastAPI(title="llmflow OpenAI-compatible chat endpoint")

    add_error_handlers(app, metrics)

    def guard(request: Request, public: bool = False) -> None:
        """401 unless the request carries a key (or the path is public); a route-level check, since Starlette's
        ``BaseHTTPMiddleware`` would wrap ``receive`` and hide a client's disconnect from the handler."""
        if (public and not protect_all) or authorized(request.headers.get("authorization"), keys):
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        raise Failure(
            401, "missing or wrong API key", "invalid_request_error", headers=challenge, code="invalid_api_key"
        )

    @app.get("/health")
    def health(request: Request) -> JSONResponse:
        guard(request, public=True)
        served = holder.current
        if served is None:
            state = {"status": "failed", "error": holder.error} if holder.error else {"status": "loading"}
            return JSONResponse({**state, "model_uri": holder.model_uri}, status_code=503)
        target = served.target
        body = {"status": "ok", "model_uri": holder.model_uri, "loaded_uri": target.load_uri}
        return JSONResponse({**body, "version": target.version, "model_id": target.model_id, "model": served.label})

    @app.get("/metrics")
    def prometheus(request: Request) -> Response:
        guard(request, public=True)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models(request: Request) -> Any:
        guard(request)
        return {"object": "list", "data": [_model_card(holder)]}

    @app.get("/v1/models/{model:path}")
    def model(request: Request, model: str) -> Any:
        """OpenAI's model lookup: the one model served, under any of its names; 404 ``model_not_found`` else."""
        guard(request)
        _check_model(holder, holder.current, model)
        return _model_card(holder)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        guard(request)
        body = await _body(request, limits.max_body_bytes)
        try:
            call = protocol.read_call(body)
        except protocol.BadRequest as error:
            raise Failure(400, str(error), "invalid_request_error", error.param) from None
        served, job = await _place(holder, call, limits)
        deadline = time.monotonic() + limits.request_timeout_s
        trace = tracer.start(served, call.request)
        if call.stream:
            return StreamingResponse(
                _stream(served, job, call, deadline, metrics, trace),
                media_type="text/event-stream",
                headers=_headers(served),
            )
        return await _whole(request, served, job, deadline, metrics, trace)

    return app


async def _whole(request: Request, served: Served, job: Job, deadline: float, metrics: Metrics, trace: Any) -> Any:
    watcher = asyncio.create_task(_wait_disconnect(request))
    pieces: list[str] = []

    async def collect() -> None:
        async for text in _events(job, deadline):
            pieces.append(text)

    collector = asyncio.create_task(collect())
    try:
        await asyncio.wait({watcher, collector}, return_when=asyncio.FIRST_COMPLETED)
        if not collector.done():  # the client left: stop its generation and answer nobody
            job.cancel()
            collector.cancel()
            metrics.requests.labels("499").inc()
            trace.end(None, "client disconnected")
            return Response(status_code=499)
        collector.result()
    except Failure as failure:
        trace.end(None, str(failure))
        return failure.response(metrics)
    finally:
        watcher.cancel()
    row = job.row
    reply = parse("".join(pieces), row.request.tool_prompt.plan, row.finish_reason)  # a tool call, or content
    answer = protocol.completion(
        f"chatcmpl-{id(job):x}{int(job.arrived * 1e6):x}",
        served.label,
        reply.message(),
        reply.finish_reason,
        len(row.ids),
        row.completion_tokens,
    )
    metrics.requests.labels("200").inc()
    trace.end(answer, None)
    return JSONResponse(answer, headers=_headers(served))


async def _stream(
    served: Served, job: Job, call: protocol.ChatCall, deadline: float, metrics: Metrics, trace: Any
) -> AsyncIterator[str]:
    completion_id, created, model = f"chatcmpl-{id(job):x}{int(job.arrived * 1e6):x}", int(time.time()), served.label
    first = {"role": "assistant", "content": ""}
    finished = False
    row = job.row
    # Reads the text as it comes: content deltas, or a tool call's (its id and name, then pieces of its arguments).
    reading = ReplyStream(row.request.tool_prompt.plan)
    try:
        yield _sse(protocol.chunk(completion_id, created, model, first))
        async for text in _events(job, deadline):
            for delta in reading.feed(text):
                yield _sse(protocol.chunk(completion_id, created, model, delta))
        deltas, reply = reading.close(row.finish_reason)
        for delta in deltas:
            yield _sse(protocol.chunk(completion_id, created, model, delta))
        yield _sse(protocol.chunk(completion_id, created, model, {}, reply.finish_reason))
        if call.include_usage:
            yield _sse(protocol.usage_chunk(completion_id, created, model, len(row.ids), row.completion_tokens))
        yield "data: [DONE]\n\n"
        finished = True
        metrics.requests.labels("200").inc()
        trace.end({**reply.message(), "finish_reason": reply.finish_reason}, None)
    except Failure as failure:  # headers are sent: the error goes in the stream, as OpenAI's does
        yield _sse(protocol.error_body(str(failure), failure.kind, failure.param, failure.code))
        finished = True
        metrics.requests.labels(str(failure.status)).inc()
        trace.end(None, str(failure))
    finally:
        if not finished:  # the client left mid-stream (the task was cancelled)
            job.cancel()
            metrics.requests.labels("499").inc()
            trace.end(None, "client disconnected")


def _model_card(holder: ModelHolder) -> dict[str, str]:
    return {"id": holder.name, "object": "model", "owned_by": "llmflow"}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"

"""The endpoint's answers other than 200, all in OpenAI's error format (``{"error": {message, type, param, code}}``).

A route raises a ``Failure``; what FastAPI and Starlette would answer in their own shapes is answered here too: an
unknown path (404, FastAPI's ``{"detail": "Not Found"}``), a wrong method (405) and an unexpected error (500,
Starlette's plain text). No answer carries a traceback, a server path or more than ``SHOWN_CHARS`` characters of
what the client sent.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from llmflow.chat_model.chat_protocol import SHOWN_CHARS, shown

from . import openai_protocol as protocol
from .metrics import Metrics

logger = logging.getLogger(__name__)

ROUTES = "POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics"
ROUTING_ERRORS = {404: "no such route", 405: "method not allowed"}


class Failure(Exception):
    """An answer other than 200, in OpenAI's error format."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        headers: dict | None = None,
        code: Any = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.headers, self.code = status, kind, param, headers or {}, code

    def response(self, metrics: Metrics) -> JSONResponse:
        metrics.requests.labels(str(self.status)).inc()
        body = protocol.error_body(str(self), self.kind, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def internal(error: Exception) -> Failure:
    """A 500 that names the error's type only: its message and traceback (server paths) go to the log."""
    logger.error("reading a request failed", exc_info=error)
    message = f"internal error while reading the request ({type(error).__name__}); the server's log has the details"
    return Failure(500, message, "server_error")


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer every ``Failure``, unknown path, wrong method and unexpected error of ``app`` in OpenAI's format."""

    @app.exception_handler(Failure)
    async def failed(request: Request, failure: Failure) -> JSONResponse:
        """Every ``Failure`` a route raises (counted by status)."""
        return failure.response(metrics)

    @app.exception_handler(HTTPException)
    async def routing(request: Request, error: HTTPException) -> JSONResponse:
        """An unknown path (404) or a wrong method (405, with its ``Allow`` header); not counted: no chat request."""
        what = ROUTING_ERRORS.get(error.status_code) or str(error.detail)[:SHOWN_CHARS]
        message = f"{what}: {request.method} {shown(request.url.path)}; this endpoint answers {ROUTES}"
        body = protocol.error_body(message, "invalid_request_error")
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        """Any other error: a 500 naming its type only; Starlette logs the traceback."""
        message = f"internal error ({type(error).__name__}); the server's log has the details"
        return Failure(500, message, "server_error").response(metrics)

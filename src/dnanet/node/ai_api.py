"""The node's OpenAI-compatible endpoints (``/v1/models``, ``/v1/embeddings``,
``/v1/chat/completions``, ``/v1/completions``), served from its
:class:`~dnanet.ai.backends.BackendSet`.

Mixers' gateways call these; a canary and a user's request arrive in the same shape.
Every error is in OpenAI's format; a backend fault is a 502, never a 500. With an ``AiAccess``
(every node daemon has one) the POST routes serve only a current mixer's signed request or the
operator's API key (see :mod:`dnanet.node.access`); the model list stays open: it costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from dnanet.ai.backends import Backend, BackendError, BackendSet
from dnanet.ai.completions import COMPLETIONS_PATH, parse_completion
from dnanet.ai.openai_format import (
    MAX_AI_BODY_BYTES,
    ApiError,
    count_tokens,
    embeddings_response,
    exempt_from_app_limit,
    model_not_found,
    models_list,
    parse_chat,
    parse_embeddings,
    read_request,
)
from dnanet.node.access import AiAccess

log = logging.getLogger("dnanet.node.ai")


def _backend_error(exc: BackendError) -> ApiError:
    if 400 <= exc.status < 500:
        return ApiError(exc.status, str(exc), param=exc.field)
    return ApiError(502, f"the model backend failed: {exc}", type_="api_error",
                    code="backend_error")


def mount_ai_api(app: FastAPI, backends: BackendSet, access: AiAccess | None = None) -> None:
    """Add the AI endpoints to the node's app. The POST routes take up to
    ``MAX_AI_BODY_BYTES`` (what a mixer's gateway forwards) and answer past it with a 413 in
    OpenAI's format, in place of the app's own limit for protocol messages. ``access`` None
    serves anyone: only for nodes inside a test's own process."""
    exempt_from_app_limit(app)

    async def read_allowed(request: Request) -> bytes:
        """The body of a request ``access`` allows (ApiError 401 otherwise)."""
        credential = access.check_header(request) if access is not None else None
        body = await read_request(request, MAX_AI_BODY_BYTES)
        if access is not None and credential is not None:
            access.check_body(request, credential, body)
        return body

    def backend_for(model: str) -> Backend:
        backend = backends.backend(model)
        if backend is None:
            raise model_not_found(model)
        return backend

    @app.get("/v1/models", tags=["ai"])
    async def models() -> Any:
        return models_list(backends.models(), "dnanet-node")

    @app.post("/v1/embeddings", tags=["ai"])
    async def embeddings(request: Request) -> Response:
        try:
            req = parse_embeddings(await read_allowed(request))
            backend = backend_for(req.model)
            vectors = await backend.embeddings(req.model, req.inputs)
        except ApiError as exc:
            return exc.response()
        except BackendError as exc:
            return _backend_error(exc).response()
        return JSONResponse(embeddings_response(req.model, vectors, req.encoding_format,
                                                count_tokens(req.inputs)))

    @app.post("/v1/chat/completions", tags=["ai"])
    async def chat(request: Request) -> Response:
        try:
            req = parse_chat(await read_allowed(request))
            backend = backend_for(req.model)
            if not req.stream:
                return JSONResponse(await backend.chat(req.model, req.body))
            stream = backend.chat_stream(req.model, req.body)
            first = await anext(stream, None)  # a failing backend fails before the 200
        except ApiError as exc:
            return exc.response()
        except BackendError as exc:
            return _backend_error(exc).response()
        return _event_stream(req.model, first, stream)

    @app.post(COMPLETIONS_PATH, tags=["ai"])
    async def completions(request: Request) -> Response:
        try:
            req = parse_completion(await read_allowed(request))
            backend = backend_for(req.model)
            complete = getattr(backend, "completions", None)
            complete_stream = getattr(backend, "completions_stream", None)
            if complete is None or complete_stream is None:
                raise ApiError(400, f"`{req.model}` does not serve /v1/completions; use "
                               "/v1/chat/completions", param="model", code="invalid_value")
            if not req.stream:
                return JSONResponse(await complete(req.model, req.body))
            stream = complete_stream(req.model, req.body)
            first = await anext(stream, None)
        except ApiError as exc:
            return exc.response()
        except BackendError as exc:
            return _backend_error(exc).response()
        return _event_stream(req.model, first, stream)


def _event_stream(model: str, first: bytes | None, stream: AsyncIterator[bytes]) -> Response:
    """A backend's stream as server-sent events, with an error event if it breaks."""

    async def events() -> AsyncIterator[bytes]:
        if first is not None:
            yield b"data: " + first + b"\n\n"
        try:
            async for chunk in stream:
                yield b"data: " + chunk + b"\n\n"
        except BackendError as exc:
            log.warning("stream of %s broke: %s", model, exc)
            yield b'data: {"error": {"message": "the model backend failed mid-stream", ' \
                  b'"type": "api_error", "param": null, "code": "backend_error"}}\n\n'

    return StreamingResponse(events(), media_type="text/event-stream")


__all__ = ["mount_ai_api"]

"""OpenAI API shapes shared by the gateway and the nodes: request validation, errors, answers.

Errors leave as ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's statuses
(400 bad request naming the field in ``param``, 401 bad key, 404 unknown model, 503 no node
with a ``Retry-After`` hint). Validation never raises anything but ``ApiError``.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dnanet.ai.logprobs import MAX_TOP_LOGPROBS
from dnanet.errors import CodecError
from dnanet.protocol.codec import load_json
from dnanet.service.http import read_body

MAX_AI_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body a gateway takes by default, and so a node (what a gateway forwards)."""
AI_POST_PATHS = frozenset({"/v1/embeddings", "/v1/chat/completions", "/v1/completions"})
MAX_INPUTS = 2048
MAX_INPUT_CHARS = 64 * 1024
MAX_MESSAGES = 1024
ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"retry-after": str(self.retry_after_s)} if self.retry_after_s else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value" if param else None)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist or no node serves it.",
                    param="model", code="model_not_found")


def no_node(model: str, why: str, retry_after_s: int = 2) -> ApiError:
    return ApiError(503, f"No node is available for `{model}` right now ({why}); retry in "
                    f"{retry_after_s} s.", type_="service_unavailable", code="no_node_available",
                    retry_after_s=retry_after_s)


def exempt_from_app_limit(app: FastAPI) -> None:
    """The AI POST routes read their bodies with ``read_request`` (a 413 in OpenAI's format past
    their own limit): the app's guard must not refuse them first at the protocol-message limit,
    in dnanet's format."""
    own_limit = getattr(app.state, "own_body_limit", None)
    if own_limit is not None:
        own_limit.update(AI_POST_PATHS)


async def read_request(request: Request, limit: int) -> bytes:
    """The body, or a 413 in OpenAI's format past ``limit`` bytes."""
    try:
        return await read_body(request, limit)
    except CodecError:
        raise ApiError(413, f"The request body exceeds {limit} bytes.", param=None,
                       code="request_too_large") from None


def parse_object(raw: bytes) -> dict[str, Any]:
    try:
        data = load_json(raw, max_bytes=None)  # read_request bounded it
    except CodecError as exc:
        why = str(exc).removeprefix("invalid JSON: ")
        raise bad_request(f"The request body is not valid JSON: {why}", None) from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", None)
    return data


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise bad_request("`model` must be a non-empty string.", "model")
    return model


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    inputs: list[str]
    encoding_format: str
    single: bool

    def node_body(self) -> dict[str, Any]:
        """What goes to a node: one shape for every request (canaries included)."""
        return {"model": self.model, "input": self.inputs, "encoding_format": "float"}


def parse_embeddings(raw: bytes) -> EmbeddingsRequest:
    data = parse_object(raw)
    model = _model(data)
    value = data.get("input")
    single = isinstance(value, str)
    inputs = [value] if single else value
    if not isinstance(inputs, list) or not inputs:
        raise bad_request("`input` must be a string or a non-empty array of strings.", "input")
    if len(inputs) > MAX_INPUTS:
        raise bad_request(f"`input` has {len(inputs)} items; at most {MAX_INPUTS}.", "input")
    for i, item in enumerate(inputs):
        if not isinstance(item, str):
            raise bad_request("`input` items must be strings (token arrays are not supported).",
                              f"input[{i}]")
        if not item or len(item) > MAX_INPUT_CHARS:
            raise bad_request(f"`input` items must have 1 to {MAX_INPUT_CHARS} characters.",
                              f"input[{i}]")
    fmt = data.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise bad_request("`encoding_format` must be `float` or `base64`.", "encoding_format")
    if data.get("dimensions") is not None:
        raise bad_request("`dimensions` is not supported by these models.", "dimensions")
    return EmbeddingsRequest(model=model, inputs=list(inputs), encoding_format=fmt, single=single)


def check_vectors(data: Any, count: int) -> list[list[float]]:
    """The vectors of a node's embeddings answer; ValueError if it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("no `data` array")
    items = data["data"]
    if len(items) != count:
        raise ValueError(f"{len(items)} embeddings for {count} inputs")
    out: list[list[float]] = [[] for _ in range(count)]
    dim = None
    for pos, item in enumerate(items):
        index = item.get("index", pos) if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or not isinstance(vector, list):
            raise ValueError("malformed embedding item")
        if dim is None:
            dim = len(vector)
        if not vector or len(vector) != dim:
            raise ValueError("embeddings of differing dimensions")
        floats = [float(x) for x in vector]
        if not all(math.isfinite(x) for x in floats):
            raise ValueError("non-finite embedding values")
        out[index] = floats
    return out


def embeddings_response(model: str, vectors: Sequence[Sequence[float]], encoding_format: str,
                        prompt_tokens: int) -> dict[str, Any]:
    def encode(vector: Sequence[float]) -> Any:
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return list(vector)

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def count_tokens(texts: Sequence[str]) -> int:
    """A whitespace token count (usage is informative here, not billed)."""
    return sum(max(1, len(t.split())) for t in texts)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    body: dict[str, Any]
    stream: bool


_NUMBER_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
                  "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}
_FORWARDED = ("messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
              "stop", "seed", "presence_penalty", "frequency_penalty", "n", "stream_options",
              "logprobs", "top_logprobs")


def parse_chat(raw: bytes) -> ChatRequest:
    data = parse_object(raw)
    model = _model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty array.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"`messages` has more than {MAX_MESSAGES} items.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request("each message must be an object.", f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise bad_request(f"`role` must be one of {', '.join(ROLES)}.",
                              f"messages[{i}].role")
        content = message.get("content")
        if not (isinstance(content, str | list)
                or (content is None and message.get("role") == "assistant")):
            raise bad_request("`content` must be a string or an array of parts.",
                              f"messages[{i}].content")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean.", "stream")
    for name, (low, high) in _NUMBER_RANGES.items():
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not low <= value <= high):
            raise bad_request(f"`{name}` must be a number in [{low:g}, {high:g}].", name)
    for name in ("max_tokens", "max_completion_tokens", "seed"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or (name != "seed" and value < 1)):
            raise bad_request(f"`{name}` must be a positive integer.", name)
    n = data.get("n")
    if n is not None and n != 1:
        raise bad_request("only `n` = 1 is supported.", "n")
    stop = data.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise bad_request("`stop` must be a string or up to 4 strings.", "stop")
    options = data.get("stream_options")
    if options is not None and not (isinstance(options, dict) and all(
            k == "include_usage" and isinstance(v, bool) for k, v in options.items())):
        raise bad_request("`stream_options` may only hold `include_usage` (a boolean).",
                          "stream_options")
    logprobs, top = data.get("logprobs"), data.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise bad_request("`logprobs` must be a boolean.", "logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int)
                            or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise bad_request(f"`top_logprobs` must be an integer in [0, {MAX_TOP_LOGPROBS}].",
                          "top_logprobs")
    if top is not None and not logprobs:
        raise bad_request("`top_logprobs` needs `logprobs` true.", "top_logprobs")
    body = {k: data[k] for k in _FORWARDED if data.get(k) is not None}
    body["model"] = model
    body["stream"] = stream
    return ChatRequest(model=model, body=body, stream=stream)


def check_completion(data: Any) -> str:
    """The assistant content of a node's chat.completion; ValueError if malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) \
            or not data["choices"]:
        raise ValueError("no choices")
    choice = data["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise ValueError("no message")
    content = message.get("content")
    return content if isinstance(content, str) else ""


def models_list(models: Sequence[str], owner: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                        "owned_by": owner} for m in models]}


__all__ = [
    "AI_POST_PATHS",
    "MAX_AI_BODY_BYTES",
    "ApiError",
    "ChatRequest",
    "EmbeddingsRequest",
    "bad_request",
    "check_completion",
    "check_vectors",
    "count_tokens",
    "embeddings_response",
    "exempt_from_app_limit",
    "model_not_found",
    "models_list",
    "no_node",
    "parse_chat",
    "parse_embeddings",
    "parse_object",
    "read_request",
]

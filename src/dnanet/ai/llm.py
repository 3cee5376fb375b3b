"""The built-in LLM backend (``--backend llm``): Gemma 3 270M through llama.cpp, served as
OpenAI's ``/v1/completions`` and ``/v1/chat/completions``, plain and streamed.

Gemma 3 270M here is the *base* (pretrained) model: it continues text and has no chat
template. Chat is therefore a transcript it continues (:func:`compute_chat_prompt`)::

    {system and developer messages, one per paragraph}\\n\\n      (only if there are any)
    User: {content}\\n
    Assistant: {content}\\n                                       (earlier turns)
    User: {content}\\n
    Assistant:

The model writes the assistant's turn after ``Assistant:``; generation stops at its end of
text or at ``\\nUser:`` (:data:`CHAT_STOP`, added to the request's own ``stop`` strings), and
the one space it starts its turn with is not part of the answer. Requests honour
``max_tokens`` (default 256, and at most what the 2048-token context has left),
``temperature`` (0: greedy, the model's top token each step; above 0: sampling at that
temperature with ``top_p``), ``stop`` (up to 4 strings), ``seed`` (a sampled answer is
reproducible with the same seed on the same machine) and ``logprobs`` (chat: ``logprobs``
and ``top_logprobs`` 0-20; completions: ``logprobs`` 0-5; each answer token's
log-probability and its likeliest alternatives, in OpenAI's formats; a stream carries them in
its last chunk). ``usage`` counts tokens as the model sees them.

Greedy answers are what mixers verify token by token (:mod:`dnanet.ai.llm_verify`): the
prompt format, tokenization and stop rules here are part of that check.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnanet.ai.backends import BackendError
from dnanet.ai.llm_engine import (
    LLM_MODEL,
    LlamaEngine,
    compute_logsumexp,
    ensure_gemma_model,
    shared_engine,
)
from dnanet.ai.logprobs import (
    TokenLogprob,
    format_chat_logprobs,
    format_completion_logprobs,
    select_answer_tokens,
)
from dnanet.service.loop import in_daemon_thread

CHAT_STOP = "\nUser:"
"""Where an assistant's turn ends in the chat transcript (always a stop for chat)."""
DEFAULT_MAX_TOKENS = 256
_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def compute_chat_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """The transcript a chat request runs as (the format of the module docstring)."""
    preface = [_content_text(m.get("content")).strip() for m in messages
               if m.get("role") in ("system", "developer")]
    lines = []
    for message in messages:
        name = _ROLE_NAMES.get(str(message.get("role")))
        if name is not None:
            lines.append(f"{name}: {_content_text(message.get('content')).strip()}\n")
    head = "\n\n".join(p for p in preface if p)
    return (head + "\n\n" if head else "") + "".join(lines) + "Assistant:"


def compute_chat_content(text: str) -> str:
    """The assistant's answer from the generated text: without the space that starts it."""
    return text[1:] if text.startswith(" ") else text


def compute_chat_texts(content: str) -> list[str]:
    """The generated texts a chat answer can come from, likeliest first (the inverse of
    :func:`compute_chat_content`)."""
    return [" " + content] if content.startswith(" ") else [" " + content, content]


def compute_stops(stop: Any, *, chat: bool) -> list[str]:
    """A request's stop strings (``stop`` as OpenAI takes it), with the chat turn's end."""
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if isinstance(s, str)]
    stops = [s for s in stops if s]
    if chat and CHAT_STOP not in stops:
        stops.append(CHAT_STOP)
    return stops


def decodable(data: bytes) -> str:
    """The longest prefix of ``data`` that is whole UTF-8 characters (a token may end inside
    one; the rest comes with the next token). Invalid bytes inside become U+FFFD."""
    for cut in range(4):
        try:
            return data[:len(data) - cut].decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data" and cut == 0:
                break
    return data.decode("utf-8", errors="replace")


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could begin a stop string (not sent yet)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@dataclass(frozen=True)
class Generation:
    """One answer and how long its two phases took on this node."""

    text: str
    finish_reason: str
    """``stop`` (end of text or a stop string) or ``length`` (``max_tokens`` or the context)."""
    prompt_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    logprobs: tuple[TokenLogprob, ...] = ()
    """Each answer token's log-probability (when asked for): the tokens that begin inside
    the answer's text."""


def sample_token(logits: np.ndarray, temperature: float, top_p: float,
                 rng: np.random.Generator) -> int:
    """Greedy (the top token) at temperature 0; else a draw at ``temperature`` from the
    smallest set of the 64 likeliest tokens whose probability reaches ``top_p``."""
    if temperature <= 0:
        return int(np.argmax(logits))
    k = min(64, logits.size)
    top = np.argpartition(logits, -k)[-k:]
    top = top[np.argsort(logits[top])[::-1]]
    z = logits[top].astype(np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    keep = min(k, int(np.searchsorted(np.cumsum(probs), top_p)) + 1)
    probs = probs[:keep] / probs[:keep].sum()
    return int(top[rng.choice(keep, p=probs)])


def generate(engine: LlamaEngine, prompt_tokens: Sequence[int], *, max_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, stops: Sequence[str] = (),
             seed: int | None = None, on_text: Callable[[str], None] | None = None,
             cancelled: threading.Event | None = None,
             logprobs: int | None = None) -> Generation:
    """Generate after ``prompt_tokens`` (the caller holds ``engine.lock``). ``on_text`` gets
    the answer in pieces as it grows, never a piece that a stop string could still cut.
    ``logprobs`` (None: not asked): each token's log-probability, with that many of the
    likeliest alternatives."""
    if len(prompt_tokens) >= engine.n_ctx:
        raise BackendError(f"the prompt has {len(prompt_tokens)} tokens; the context holds "
                           f"{engine.n_ctx}", status=400, field="messages")
    max_tokens = min(max_tokens, engine.n_ctx - len(prompt_tokens))
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    engine.rewind(0)
    logits = engine.next_logits(prompt_tokens)
    prefilled = time.perf_counter()
    data = b""
    text = ""
    sent = 0
    count = 0
    finish = "length"
    longest_stop = max((len(s) for s in stops), default=0)
    entries: list[TokenLogprob] = []
    while count < max_tokens:
        if cancelled is not None and cancelled.is_set():
            break
        token = sample_token(logits, temperature, top_p, rng)
        if engine.is_eog(token):
            finish = "stop"
            break
        count += 1
        if logprobs is not None:
            entries.append(_token_logprob(engine, logits, token, logprobs))
        data += engine.piece(token)
        text = decodable(data)
        hit = min((i for i in (text.find(s, max(0, sent - longest_stop)) for s in stops)
                   if i >= 0), default=-1)
        if hit >= 0:
            text = text[:hit]
            finish = "stop"
            break
        safe = len(text) - _holdback(text, stops)
        if on_text is not None and safe > sent:
            on_text(text[sent:safe])
            sent = safe
        if count < max_tokens:
            logits = engine.next_logits([token])
    # At max_tokens, a character the last token left unfinished is dropped (``decodable``).
    if on_text is not None and len(text) > sent:
        on_text(text[sent:])
    kept = select_answer_tokens(entries, len(text.encode()), lambda entry: entry.token)
    return Generation(text=text, finish_reason=finish, prompt_tokens=len(prompt_tokens),
                      completion_tokens=count, prefill_s=prefilled - started,
                      decode_s=time.perf_counter() - prefilled, logprobs=tuple(kept))


def _token_logprob(engine: LlamaEngine, logits: np.ndarray, token: int,
                   top: int) -> TokenLogprob:
    """``token``'s log-probability after ``logits``, with the ``top`` likeliest tokens'."""
    norm = compute_logsumexp(logits)
    best: tuple[tuple[bytes, float], ...] = ()
    if top > 0:
        ids = np.argpartition(logits, -top)[-top:]
        ids = ids[np.argsort(logits[ids])[::-1]]
        best = tuple((engine.piece(int(i)), float(logits[i]) - norm) for i in ids)
    return TokenLogprob(engine.piece(token), float(logits[token]) - norm, best)


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or completions request as the model runs it."""

    prompt: str
    chat: bool
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    seed: int | None
    include_usage: bool
    logprobs: int | None = None
    """Alternatives per token when log-probabilities are asked for (None: not asked)."""


def parse_generation_request(body: dict[str, Any], *, chat: bool) -> GenerationRequest:
    """What a (normalized) chat or completions body asks the model to do, as the node runs
    it and as a mixer checking the answer reads it."""
    prompt = compute_chat_prompt(body.get("messages") or []) if chat else str(body["prompt"])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or \
        DEFAULT_MAX_TOKENS
    temperature = body.get("temperature")
    options = body.get("stream_options")
    return GenerationRequest(
        prompt=prompt, chat=chat, max_tokens=int(max_tokens),
        temperature=1.0 if temperature is None else float(temperature),
        top_p=float(body["top_p"]) if body.get("top_p") is not None else 1.0,
        stops=compute_stops(body.get("stop"), chat=chat),
        seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        logprobs=_asked_logprobs(body, chat=chat))


def _asked_logprobs(body: dict[str, Any], *, chat: bool) -> int | None:
    """Alternatives per token a request asks for (chat: ``logprobs`` true and
    ``top_logprobs``; completions: ``logprobs`` N), None if it asks for no logprobs."""
    if chat:
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") is True else None
    value = body.get("logprobs")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _completion_logprobs(req: GenerationRequest, gen: Generation) -> dict[str, Any] | None:
    if req.logprobs is None:
        return None
    return format_completion_logprobs(gen.logprobs, top=req.logprobs)


def _chat_logprobs(req: GenerationRequest, gen: Generation) -> dict[str, Any] | None:
    return None if req.logprobs is None else format_chat_logprobs(gen.logprobs)


def _usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


class LlmBackend:
    """A GGUF model served through llama.cpp (default: the packaged Gemma 3 270M).

    ``path`` serves another GGUF file under ``model_id`` (a different quantization, say);
    without it the packaged model is assembled and checked on ``load()``. In one process,
    backends over the same file and thread count share one engine and take turns."""

    def __init__(self, model_id: str = LLM_MODEL, *, path: Path | None = None,
                 n_threads: int | None = None, engine: LlamaEngine | None = None) -> None:
        self.model_id = model_id
        self.path = path
        self.n_threads = n_threads
        self.engine = engine

    def models(self) -> list[str]:
        return [self.model_id]

    def _load(self) -> LlamaEngine:
        if self.engine is None:
            path = self.path or ensure_gemma_model()
            self.engine = shared_engine(path, n_threads=self.n_threads, role="serve")
        return self.engine

    async def load(self) -> None:
        await in_daemon_thread(self._load, "load-llm")

    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        raise BackendError(f"{model} is a text generation model", status=400, field="model")

    def _run(self, req: GenerationRequest, on_text: Callable[[str], None] | None = None,
             cancelled: threading.Event | None = None) -> Generation:
        engine = self._load()
        with engine.lock:
            tokens = engine.prompt_tokens(req.prompt)
            return generate(engine, tokens, max_tokens=req.max_tokens,
                            temperature=req.temperature, top_p=req.top_p, stops=req.stops,
                            seed=req.seed, on_text=on_text, cancelled=cancelled,
                            logprobs=req.logprobs)

    async def _generate(self, req: GenerationRequest) -> Generation:
        try:
            return await asyncio.to_thread(self._run, req)
        except BackendError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"generation failed: {exc}") from None

    async def _stream(self, req: GenerationRequest) -> AsyncIterator[str | Generation]:
        """The answer's pieces as they come, then its Generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Generation | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def post(item: str | Generation | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed (the daemon stopped): nobody is waiting
                cancelled.set()

        def work() -> None:
            try:
                result: str | Generation | BaseException = self._run(req, post, cancelled)
            except BaseException as exc:  # handed to the consumer, raised there
                result = exc
            post(result)

        worker = threading.Thread(target=work, name="llm-stream", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BackendError):
                    raise item
                if isinstance(item, BaseException):
                    raise BackendError(f"generation failed: {item}") from None
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            cancelled.set()  # a client that went away stops the generation

    # -- /v1/completions ---------------------------------------------------------------------
    async def completions(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse_generation_request(body, chat=False)
        gen = await self._generate(req)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": gen.text,
                             "logprobs": _completion_logprobs(req, gen),
                             "finish_reason": gen.finish_reason}],
                "usage": _usage(gen)}

    async def completions_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        req = parse_generation_request(body, chat=False)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": model}
        async for item in self._stream(req):
            if isinstance(item, str):
                yield _json({**head, "choices": [{"index": 0, "text": item, "logprobs": None,
                                                  "finish_reason": None}]})
                continue
            # A stream's logprobs come with its last chunk, for every token of the answer.
            yield _json({**head, "choices": [{"index": 0, "text": "",
                                              "logprobs": _completion_logprobs(req, item),
                                              "finish_reason": item.finish_reason}]})
            if req.include_usage:
                yield _json({**head, "choices": [], "usage": _usage(item)})
        yield b"[DONE]"

    # -- /v1/chat/completions ----------------------------------------------------------------
    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse_generation_request(body, chat=True)
        gen = await self._generate(req)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": gen.finish_reason,
                             "message": {"role": "assistant",
                                         "content": compute_chat_content(gen.text)},
                             "logprobs": _chat_logprobs(req, gen)}],
                "usage": _usage(gen)}

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        req = parse_generation_request(body, chat=True)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  logprobs: dict[str, Any] | None = None) -> bytes:
            return _json({**head, "choices": [{"index": 0, "delta": delta,
                                               "logprobs": logprobs,
                                               "finish_reason": finish}]})

        yield chunk({"role": "assistant", "content": ""})
        strip = True  # the space that starts the turn is not part of the answer
        async for item in self._stream(req):
            if isinstance(item, str):
                if strip and item:
                    item, strip = compute_chat_content(item), False
                if item:
                    yield chunk({"content": item})
                continue
            # A stream's logprobs come with its last chunk, for every token of the answer.
            yield chunk({}, item.finish_reason, _chat_logprobs(req, item))
            if req.include_usage:
                yield _json({**head, "choices": [], "usage": _usage(item)})
        yield b"[DONE]"

    async def close(self) -> None:
        return None


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


__all__ = [
    "CHAT_STOP", "DEFAULT_MAX_TOKENS", "Generation", "GenerationRequest", "LlmBackend",
    "compute_chat_content", "compute_chat_prompt", "compute_chat_texts", "compute_stops",
    "decodable", "generate", "parse_generation_request", "sample_token",
]

"""Every request for a verified model asks the node for logprobs, so a canary (which always
does) is one more such request; the gateway takes them out again for a user who did not ask
(``dnanet.ai.logprobs.compute_node_request``), plain and streamed, in both APIs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dnanet.ai.backends import TRIVIAL_CHAT_MODEL, TrivialBackend
from dnanet.ai.llm_engine import LLM_MODEL
from dnanet.ai.logprobs import (
    TokenLogprob,
    compute_node_request,
    format_chat_logprobs,
    format_completion_logprobs,
    strip_event_logprobs,
    strip_logprobs,
)
from gateway_helpers import API_KEY, network

AUTH = {"authorization": f"Bearer {API_KEY}"}
TOKENS = [TokenLogprob(b" Hello", -0.25, ((b" Hello", -0.25), (b" Hi", -1.5))),
          TokenLogprob(b" there", -0.5, ((b" there", -0.5), (b"!", -1.0)))]


class RecordingLlm:
    """A node's LLM backend without weights: answers " Hello there" with logprobs as asked,
    the stream's logprobs in its last chunk (as the built-in backend sends them), and keeps
    every request body it got."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def models(self) -> list[str]:
        return [LLM_MODEL]

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def embeddings(self, model: str, inputs: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def _chat_logprobs(self, body: dict[str, Any]) -> dict[str, Any] | None:
        return format_chat_logprobs(TOKENS) if body.get("logprobs") is True else None

    def _text_logprobs(self, body: dict[str, Any]) -> dict[str, Any] | None:
        top = body.get("logprobs")
        return None if top is None else format_completion_logprobs(TOKENS, top=top)

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return {"id": "c", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs":
                             self._chat_logprobs(body),
                             "message": {"role": "assistant", "content": "Hello there"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        self.bodies.append(body)
        head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model}
        for delta, finish, logprobs in (({"content": "Hello"}, None, None),
                                        ({"content": " there"}, None, None),
                                        ({}, "stop", self._chat_logprobs(body))):
            yield json.dumps({**head, "choices": [{"index": 0, "delta": delta,
                                                   "logprobs": logprobs,
                                                   "finish_reason": finish}]}).encode()
        yield b"[DONE]"

    async def completions(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return {"id": "t", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": " Hello there", "finish_reason": "stop",
                             "logprobs": self._text_logprobs(body)}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

    async def completions_stream(self, model: str, body: dict[str, Any]
                                 ) -> AsyncIterator[bytes]:
        self.bodies.append(body)
        head = {"id": "t", "object": "text_completion", "created": 0, "model": model}
        for text, finish, logprobs in ((" Hello there", None, None),
                                       ("", "stop", self._text_logprobs(body))):
            yield json.dumps({**head, "choices": [{"index": 0, "text": text,
                                                   "logprobs": logprobs,
                                                   "finish_reason": finish}]}).encode()
        yield b"[DONE]"


CHAT = ("/v1/chat/completions", {"model": LLM_MODEL, "max_tokens": 8,
                                 "messages": [{"role": "user", "content": "Hi"}]})
TEXT = ("/v1/completions", {"model": LLM_MODEL, "max_tokens": 8, "prompt": "Hi"})


async def ask(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer's objects: one, or the stream's events but ``[DONE]``."""
    async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
        if not body.get("stream"):
            response = await http.post(url + path, json=body)
            assert response.status_code == 200, response.text
            return [response.json()]
        async with http.stream("POST", url + path, json=body) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines()]
    return [json.loads(line[6:]) for line in lines
            if line.startswith("data: ") and line != "data: [DONE]"]


def reported(events: list[dict[str, Any]]) -> list[Any]:
    return [c["logprobs"] for e in events for c in e["choices"] if c["logprobs"] is not None]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(("path", "body"), [CHAT, TEXT], ids=["chat", "completions"])
def test_the_node_is_asked_for_logprobs_and_a_user_who_did_not_ask_gets_none(
        path: str, body: dict[str, Any], stream: bool) -> None:
    import asyncio

    chat = path == CHAT[0]

    async def go() -> None:
        node = RecordingLlm()
        async with network([[node]]) as net:
            events = await ask(net.url, path, {**body, "stream": stream})
            # The node was asked, as for a canary ...
            got = node.bodies[-1]
            assert (got.get("logprobs") is True) if chat else got.get("logprobs") == 0
            assert "top_logprobs" not in got
            # ... and the user sees the answer as if nobody had asked.
            assert reported(events) == []
            text = "".join((c.get("delta") or c.get("message") or {}).get("content", "")
                           if chat else c["text"] for e in events for c in e["choices"])
            assert text.strip() == "Hello there"
            # A user who asks keeps them, with the alternatives asked for.
            asked = {**body, "stream": stream, **({"logprobs": True, "top_logprobs": 2}
                                                  if chat else {"logprobs": 2})}
            events = await ask(net.url, path, asked)
            got = node.bodies[-1]
            assert got.get("top_logprobs") == 2 if chat else got.get("logprobs") == 2
            [logprobs] = reported(events)
            expected = format_chat_logprobs(TOKENS) if chat else \
                format_completion_logprobs(TOKENS, top=2)
            assert logprobs == json.loads(json.dumps(expected))

    asyncio.run(go())


def test_other_models_requests_go_as_they_came() -> None:
    import asyncio

    async def go() -> None:
        node = TrivialBackend()
        async with network([[node]]) as net:
            events = await ask(net.url, "/v1/chat/completions", {
                "model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": "a b"}]})
            assert events[0]["choices"][0]["message"]["content"].endswith("a b")

    asyncio.run(go())
    body = {"model": TRIVIAL_CHAT_MODEL, "messages": []}
    assert compute_node_request(body, chat=True, model=TRIVIAL_CHAT_MODEL) == (body, False)


def test_the_rule_asks_once_and_strips_only_what_it_added() -> None:
    chat = {"model": LLM_MODEL, "messages": [], "logprobs": False}
    asked, strip = compute_node_request(chat, chat=True, model=LLM_MODEL)
    assert (asked["logprobs"], strip) == (True, True)
    # Idempotent: the node's body asks already, nothing more to add.
    assert compute_node_request(asked, chat=True, model=LLM_MODEL) == (asked, False)
    text, strip = compute_node_request({"model": LLM_MODEL, "prompt": "x"}, chat=False,
                                       model=LLM_MODEL)
    assert (text["logprobs"], strip) == (0, True)
    kept = {"model": LLM_MODEL, "prompt": "x", "logprobs": 5}
    assert compute_node_request(kept, chat=False, model=LLM_MODEL) == (kept, False)
    # Stripping: every choice's logprobs null; anything that is not an answer as it was.
    data = {"choices": [{"text": "a", "logprobs": {"tokens": ["a"]}}, "odd"], "x": 1}
    assert strip_logprobs(data) == {"choices": [{"text": "a", "logprobs": None}, "odd"], "x": 1}
    assert strip_logprobs([1]) == [1] and strip_logprobs({"error": {}}) == {"error": {}}
    line = b'data: {"choices":[{"delta":{},"logprobs":{"content":[]}}]}'
    assert json.loads(strip_event_logprobs(line)[6:])["choices"][0]["logprobs"] is None
    for same in (b'data: {"choices":[{"delta":{"content":"x"},"logprobs":null}]}',
                 b"data: [DONE]", b'data: {"logprobs": broken', b": keep-alive",
                 b"data: " + b"[" * 100_000 + b'"logprobs"'):  # too deep to parse: as sent
        assert strip_event_logprobs(same) == same

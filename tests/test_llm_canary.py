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

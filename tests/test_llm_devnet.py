"""End to end with ``--backend llm``: a devnet (embedded EVM, every role on loopback HTTP) whose
nodes serve the built-in LLM, one of them a cheaper quantization of it under the model's
name. The gateway serves chat and completions to the official ``openai`` client; LLM canaries
pass on the honest nodes and catch the swapping one, whose reports from those mixers become
CANARY_FAILED, so it earns less than every honest node in the epoch. Needs the ``llm`` extra."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from dnanet.ai.llm import LlmBackend
from dnanet.ai.llm_engine import LLM_MODEL, ensure_gemma_model, requantize_model
from dnanet.gateway.llm_canary import _extra_installed
from dnanet.node.daemon import NodeDaemon
from dnanet.protocol.messages import Outcome
from e2e_helpers import E2EDevnet, run_epochs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _extra_installed(), reason="the llm extra is not installed (pip "
                       "install 'dnanet[llm]'; ./run-tests installs it)"),
]

SWAP_QUANT = "q3_k_m"


class SwapDevnet(E2EDevnet):
    """Node 0 serves the model re-quantized to SWAP_QUANT under the model's own name."""

    async def _start(self, daemon: Any, name: str) -> None:
        if isinstance(daemon, NodeDaemon) and daemon.address == self.node_ids[0].address:
            cheap = requantize_model(ensure_gemma_model(), SWAP_QUANT)
            daemon.backends.backends[:] = [LlmBackend(path=cheap)]
        await super()._start(daemon, name)


def test_llm_devnet_serves_openai_clients_and_catches_a_swapped_model(tmp_path: Path) -> None:
    devnet = SwapDevnet(nodes=4, data_dir=tmp_path, label="llm", profiles=["normal"] * 4,
                        backend="llm")
    swapper = devnet.node_ids[0].address.lower()
    honest = [i.address.lower() for i in devnet.node_ids[1:]]
    verdicts: dict[tuple[int, str], list[bool | None]] = {}
    answers: dict[str, Any] = {}

    async def canaries() -> None:
        """With the chain held before genesis: every mixer's gateway sees the nodes, sends
        two canaries to the swapping node, and the first also one to each honest node; then a
        user's chat and completion through a gateway, with the openai client."""
        assert devnet.clock is not None
        await devnet.clock.stop()
        # A node answers mixers only once it has read the chain's head (401 "retry" before):
        # on a loaded host the swapper, started after its re-quantized model, can be late,
        # and a head read during setup is not the head at genesis (CI: "credential is for
        # block 409, the node's head is 27").
        head = await asyncio.to_thread(devnet.head)
        for _ in range(1200):
            if all(daemon.head is not None and daemon.head >= head
                   for daemon in devnet.node_daemons):
                break
            await asyncio.sleep(0.05)
        for index, mixer in enumerate(devnet.mixer_daemons):
            gateway = mixer.ai_gateway
            assert gateway is not None
            gateway.rng = random.Random(100 + index)  # canaries drawn reproducibly
            thread = devnet._thread_of(mixer)
            await thread._call(gateway.refresh())
            targets = [swapper, swapper, *(honest if index == 0 else [])]
            for address in targets:
                node = gateway.scheduler.nodes[address]
                verdicts.setdefault((index, address), []).append(
                    await thread._call(gateway.run_canary(node, LLM_MODEL)))

        def use_openai() -> None:
            client = OpenAI(base_url=f"{devnet.mixer_urls[1]}/v1", api_key=devnet.api_key,
                            max_retries=0, timeout=300)
            answers["models"] = [m.id for m in client.models.list()]
            answers["chat"] = client.chat.completions.create(
                model=LLM_MODEL, max_tokens=16, temperature=0,
                messages=[{"role": "user", "content": "What is the capital of France?"}])
            stream = client.completions.create(model=LLM_MODEL, prompt="The capital of France is",
                                               max_tokens=8, temperature=0, stream=True)
            answers["streamed"] = "".join(c.choices[0].text for c in stream if c.choices)

        await asyncio.to_thread(use_openai)
        devnet.clock.start()

    async def main() -> dict[str, dict[str, Any]]:
        try:
            await run_epochs(devnet, 1, timeout_s=900, before=canaries)
            return {a: await devnet.get_json(f"/v1/nodes/{a}/epochs/0")
                    for a in [swapper, *honest]}
        finally:
            await devnet.stop()

    details = asyncio.run(main())
    # Honest nodes pass; the swapped model is caught (an answer of it that happens to be the
    # model's very answer passes: nothing in it is wrong).
    assert all(verdicts[0, a] == [True] for a in honest), verdicts
    caught = [v for i in range(4) for v in verdicts[i, swapper]]
    assert None not in caught and caught.count(False) >= 4, verdicts
    # The gateway serves the built-in LLM to the official client.
    assert answers["models"] == [LLM_MODEL]
    chat = answers["chat"]
    assert chat.choices[0].message.content and chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens <= 16
    assert answers["streamed"].strip()
    swapped = details[swapper]
    failed = [r for r in swapped["reports"] if r["outcome"] == Outcome.CANARY_FAILED.name]
    assert failed and all("canary " + LLM_MODEL in r["reason"] for r in failed)
    for address in honest:
        outcomes = {r["outcome"] for r in details[address]["reports"]}
        assert Outcome.CANARY_FAILED.name not in outcomes
    assert int(swapped["reward"]) < min(int(details[a]["reward"]) for a in honest)

"""Cheating nodes: an honest ``NodeDaemon`` with one part replaced from outside.

Never used by ``dnanet node run``; the adversarial devnet runs them beside honest nodes to show
what each cheat earns (``dnanet.adversary.roles.DETECTION`` says what catches it):

=============  ====================================================================
``lazy``       computes a fraction of the product's rows, commits zeros for the rest
``replayer``   computes its first challenge's products, commits them for every later seed
``gpu-liar``   declares the GPU class on chain while it computes on the CPU
``relay``      two identities fronting one machine: one compute, one model backend
``swapper``    serves a cheaper embedding model under the real model's name
``selective``  answers canary-shaped requests with the real model, degrades the rest
``echo-fast``  slow compute and a slow link, but echoes answered at once (a light
               responder in front of the slow machine)
=============  ====================================================================

Each is a subclass (or, for the relay, a pair) built like a ``NodeDaemon``; ``build_node``
builds the one a role names.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dnanet.ai.backends import (
    MINILM_MODEL,
    TRIVIAL_DIM,
    Backend,
    BackendSet,
    TrivialBackend,
)
from dnanet.crypto.keys import Identity
from dnanet.gateway.canary import _TEMPLATES, _WORDS
from dnanet.node.api import ECHO
from dnanet.node.compute_process import HeldAnswer
from dnanet.node.daemon import NodeDaemon, NodeProfile
from dnanet.node.hardware import CLASS_GPU
from dnanet.node.prover import COMPUTING_ATTEMPT
from dnanet.node.session_server import Channel
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    commit_product,
    compute_a_rows,
    compute_b,
)
from dnanet.service.network import ChainGateway

log = logging.getLogger("dnanet.adversary.nodes")

LAZY_FRACTION = 0.5
"""The share of the product's rows a lazy node computes."""
EMBEDDING_DIMS = {MINILM_MODEL: 384}
"""Dimensions of the embedding models a swapped model imitates (others: TRIVIAL_DIM)."""
SWAP_SALT = b"dnanet/adversary/swapped-model"


def compute_lazy_product(compute_seed: bytes, size: ComputeSize, fraction: float) -> ComputeAnswer:
    """A committed product whose first ``fraction`` of rows are right and the rest zero."""
    done = max(0, min(size.rows, int(size.rows * fraction)))
    product = np.zeros((size.rows, size.n), dtype=np.int32)
    if done:
        a = compute_a_rows(compute_seed, size.n, range(done)).astype(np.float32)
        b = compute_b(compute_seed, size.n).astype(np.float32)
        product[:done] = (a @ b).astype(np.int32)
    return commit_product(size, product)


class LazyNode(NodeDaemon):
    """Computes ``fraction`` of each product and commits to it as if whole."""

    role: ClassVar[str] = "lazy"
    fraction = LAZY_FRACTION

    def _compute(self, seed: bytes, size: ComputeSize) -> ComputeAnswer:
        return compute_lazy_product(seed, size, self.fraction)


class ReplayerNode(NodeDaemon):
    """Answers each compute attempt of a later challenge with the product of the same attempt
    of its first challenge of that size (the transfers and echoes it cannot replay: their
    bytes are new each time)."""

    role: ClassVar[str] = "replayer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Products computed in place (an adversary's daemon has no compute process): a held
        # one would be released when its first session ends.
        self._first: dict[ComputeSize, bytes] = {}
        """The challenge whose products it keeps, per size."""
        self._kept: dict[ComputeSize, list[ComputeAnswer | HeldAnswer]] = {}
        self._kept_lock = threading.Lock()
        self.replayed = 0

    def _compute(self, seed: bytes, size: ComputeSize) -> ComputeAnswer | HeldAnswer:
        challenge_id, attempt = COMPUTING_ATTEMPT.get() or (b"", 0)
        with self._kept_lock:
            first = self._first.setdefault(size, challenge_id)
            kept = self._kept.setdefault(size, [])
            if challenge_id != first and attempt < len(kept):  # a later challenge: replay
                self.replayed += 1
                return kept[attempt]
        answer = super()._compute(seed, size)
        if challenge_id == first:
            with self._kept_lock:
                kept.append(answer)
        return answer


class HardwareLiarNode(NodeDaemon):
    """Declares the GPU class on chain; computes on the CPU."""

    role: ClassVar[str] = "gpu-liar"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hardware_class = CLASS_GPU  # what ensure_registered declares


class RelayHost(NodeDaemon):
    """The machine behind a relay: it answers for itself, and its compute and models serve
    the identities fronting it (``RelayFront``) too, one product at a time."""

    role: ClassVar[str] = "relay"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.machine_lock = threading.Lock()

    def _compute(self, seed: bytes, size: ComputeSize) -> ComputeAnswer | HeldAnswer:
        with self.machine_lock:
            return super()._compute(seed, size)


class SharedBackends(BackendSet):
    """Another daemon's models, served as they are (loaded and closed by their owner)."""

    def __init__(self, owner: BackendSet) -> None:
        super().__init__([])
        self.owner = owner

    async def load(self) -> None:
        return None

    def models(self) -> list[str]:
        return self.owner.models()

    def backend(self, model: str) -> Backend | None:
        return self.owner.backend(model)

    async def close(self) -> None:
        return None


class RelayFront(NodeDaemon):
    """A second identity registered at its own endpoint, answering from ``machine``."""

    role: ClassVar[str] = "relay"

    def __init__(self, identity: Identity, gateway: ChainGateway, data_dir: Path, *,
                 machine: RelayHost, **kwargs: Any) -> None:
        self.machine = machine
        kwargs["backends"] = SharedBackends(machine.backends)
        super().__init__(identity, gateway, data_dir, **kwargs)

    def _compute(self, seed: bytes, size: ComputeSize) -> ComputeAnswer | HeldAnswer:
        return self.machine._compute(seed, size)


class CheapModel:
    """Serves ``models`` with a cheaper stand-in: salted hash vectors of each model's
    dimension for embeddings, a hash-tagged echo for chat (``TrivialBackend`` with a salt)."""

    def __init__(self, models: Sequence[str]) -> None:
        self._models = list(models)
        self._by_dim: dict[int, TrivialBackend] = {}

    def _stand_in(self, model: str) -> TrivialBackend:
        dim = EMBEDDING_DIMS.get(model, TRIVIAL_DIM)
        if dim not in self._by_dim:
            self._by_dim[dim] = TrivialBackend(salt=SWAP_SALT, dim=dim)
        return self._by_dim[dim]

    def models(self) -> list[str]:
        return list(self._models)

    async def load(self) -> None:
        return None

    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        return await self._stand_in(model).embeddings(model, inputs)

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._stand_in(model).chat(model, body)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async for chunk in self._stand_in(model).chat_stream(model, body):
            yield chunk

    async def close(self) -> None:
        return None


def served_models(backends: BackendSet) -> list[str]:
    """The models ``backends`` would serve, without loading them."""
    return sorted({m for b in backends.backends for m in b.models()})


class ModelSwapperNode(NodeDaemon):
    """Serves the models it was given by name, computed by ``CheapModel`` (never loaded)."""

    role: ClassVar[str] = "swapper"

    def __init__(self, *args: Any, backends: BackendSet | None = None, **kwargs: Any) -> None:
        real = backends or BackendSet([])
        super().__init__(*args, backends=BackendSet([CheapModel(served_models(real))]),
                         **kwargs)


def _canary_pattern() -> re.Pattern[str]:
    word = "(?:" + "|".join(re.escape(w) for w in _WORDS) + ")"
    shapes = [re.escape(t).replace(r"\{0\}", word).replace(r"\{1\}", word)
              .replace(r"\{2\}", word) for t in _TEMPLATES]
    return re.compile("|".join(f"(?:{s})" for s in shapes))


CANARY_TEXT = _canary_pattern()
"""The shape of every canary text (templates and words read from ``dnanet.gateway.canary``,
as anyone can read them)."""


def is_canary_text(text: str) -> bool:
    return CANARY_TEXT.fullmatch(text.strip()) is not None


class SelectiveModel:
    """The real models for requests that look like canaries, ``CheapModel`` for the rest."""

    def __init__(self, real: BackendSet) -> None:
        self.real = real
        self.cheap = CheapModel(served_models(real))
        self.honest = 0
        self.degraded = 0

    def models(self) -> list[str]:
        return self.cheap.models()

    async def load(self) -> None:
        await self.real.load()

    def _pick(self, texts: Sequence[str], model: str) -> Backend:
        backend = self.real.backend(model)
        if backend is not None and texts and all(is_canary_text(t) for t in texts):
            self.honest += 1
            return backend
        self.degraded += 1
        return self.cheap

    async def embeddings(self, model: str, inputs: Sequence[str]) -> list[list[float]]:
        return await self._pick(inputs, model).embeddings(model, inputs)

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._pick(_user_texts(body), model).chat(model, body)

    async def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async for chunk in self._pick(_user_texts(body), model).chat_stream(model, body):
            yield chunk

    async def close(self) -> None:
        await self.real.close()


def _user_texts(body: dict[str, Any]) -> list[str]:
    return [str(m.get("content", "")) for m in body.get("messages") or []
            if isinstance(m, dict) and m.get("role") == "user"]


class SelectiveNode(NodeDaemon):
    """Answers challenges honestly; serves users' requests with a cheap stand-in."""

    role: ClassVar[str] = "selective"

    def __init__(self, *args: Any, backends: BackendSet | None = None, **kwargs: Any) -> None:
        self.selective = SelectiveModel(backends or BackendSet([]))
        super().__init__(*args, backends=BackendSet([self.selective]), **kwargs)


ECHO_FAST_PROFILE = NodeProfile("echo-fast", compute_slowdown=3.0, added_delay_s=0.015)
"""The slow machine behind the light responder: as ``throttled`` (``NodeProfile.named``)."""


class EchoFastNode(NodeDaemon):
    """A throttled node (slow compute, every answer delayed) whose echoes go back at once."""

    role: ClassVar[str] = "echo-fast"

    def __init__(self, *args: Any, profile: NodeProfile | None = None, **kwargs: Any) -> None:
        super().__init__(*args, profile=profile or ECHO_FAST_PROFILE, **kwargs)
        sessions = self.app.state.sessions
        delayed = sessions._reply

        async def reply(channel: Channel, frame: bytes) -> None:
            if frame[:1] == ECHO:  # the light responder answers echoes itself
                await channel.send(frame)
                return
            await delayed(channel, frame)

        sessions._reply = reply


CONTROL_PROFILE = NodeProfile("control", compute_slowdown=ECHO_FAST_PROFILE.compute_slowdown,
                              added_delay_s=ECHO_FAST_PROFILE.added_delay_s)
"""The honest twin of the echo-fast node: the same machine and link, echoes delayed too."""

NODE_CLASSES: dict[str, type[NodeDaemon]] = {
    "lazy": LazyNode, "replayer": ReplayerNode, "gpu-liar": HardwareLiarNode,
    "swapper": ModelSwapperNode, "selective": SelectiveNode, "echo-fast": EchoFastNode,
}


def build_node(role: str, identity: Identity, gateway: ChainGateway, data_dir: Path, *,
               relay_host: RelayHost | None = None, **kwargs: Any) -> NodeDaemon:
    """The node daemon a role names (``dnanet.adversary.roles.NODE_ROLES``): a relay is the
    host unless ``relay_host`` is given; ``control`` is an honest node with the echo-fast
    node's profile."""
    if role == "control":
        kwargs["profile"] = CONTROL_PROFILE
        return NodeDaemon(identity, gateway, data_dir, **kwargs)
    if role == "relay":
        if relay_host is None:
            return RelayHost(identity, gateway, data_dir, **kwargs)
        return RelayFront(identity, gateway, data_dir, machine=relay_host, **kwargs)
    kind = NODE_CLASSES.get(role)
    if kind is None:
        raise ValueError(f"unknown node role {role!r}")
    if role == "echo-fast":
        kwargs.pop("profile", None)  # its own: the slow machine behind the responder
    else:
        profile = kwargs.get("profile") or NodeProfile()
        kwargs["profile"] = NodeProfile(role, compute_slowdown=profile.compute_slowdown,
                                        added_delay_s=profile.added_delay_s,
                                        offline_at_block=profile.offline_at_block)
    return kind(identity, gateway, data_dir, **kwargs)


__all__ = [
    "CANARY_TEXT",
    "CONTROL_PROFILE",
    "ECHO_FAST_PROFILE",
    "NODE_CLASSES",
    "CheapModel",
    "EchoFastNode",
    "HardwareLiarNode",
    "LazyNode",
    "ModelSwapperNode",
    "RelayFront",
    "RelayHost",
    "ReplayerNode",
    "SelectiveModel",
    "SelectiveNode",
    "SharedBackends",
    "build_node",
    "compute_lazy_product",
    "is_canary_text",
]

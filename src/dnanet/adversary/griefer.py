"""The griefer: a stranger (no key of the network) attacking one honest node and the mixers.

Every ``interval_s`` it runs one wave of what issue 14 found possible before the defences:

=====================  ===============================================================
``node_steps``         a connection to the node's session endpoint that sends steps
                       (junk echoes, a download frame, a compute seed, finish, open)
                       without a challenge, and the old per-step HTTP routes
``replays``            the node's own signed challenges, read from its database (as an
                       eavesdropper on a link without TLS would have captured them), sent
                       again: each followed at once by steps, to drive it if it is taken
``forged_challenges``  challenges for the node in a real mixer's name, signed by the
                       griefer's own key
``ai_endpoints``       embeddings requests to the node without a credential, with a
                       malformed one, and with one the griefer signed itself
``settlement_routes``  settlement requests to every mixer for the newest closed epoch,
                       with a made-up root
``batch_routes``       a batch proposal signed by the griefer to every mixer
=====================  ===============================================================

Each attempt is counted ``sent``, and ``served`` when the target did what was asked (a session
step answered with anything but an error frame, a 2xx answer); the target of every one is 0
served. ``leaked_rounds`` counts rounds whose VRF output a mixer's ``GET /v1/status`` showed
before the round was done (from it anyone derives every challenge's content).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.mixer.node_client import session_url
from dnanet.node.api import COMPUTE, DOWNLOAD, ECHO, ERROR, FINISH, OPEN, START
from dnanet.params import Preset
from dnanet.protocol.access import (
    CREDENTIAL_HEADER,
    compute_node_request,
    sign_node_request,
)
from dnanet.protocol.challenge_params import compute_challenge
from dnanet.protocol.messages import (
    BatchProposal,
    Outcome,
    SignedChallenge,
    compute_failed_report,
)
from dnanet.protocol.quorum import compute_batch

log = logging.getLogger("dnanet.adversary.griefer")

KINDS = ("node_steps", "replays", "forged_challenges", "ai_endpoints", "settlement_routes",
         "batch_routes")
ANSWER_TIMEOUT_S = 10.0
REPLAYS_PER_WAVE = 2


@dataclass
class Tally:
    """Attempts of one kind: sent, served (should be 0), and the first served answers."""

    sent: int = 0
    served: int = 0
    examples: list[str] = field(default_factory=list)

    def count(self, served: bool, what: str) -> None:
        self.sent += 1
        if served:
            self.served += 1
            if len(self.examples) < 3:
                self.examples.append(what[:300])


def read_captured_challenges(node_db: Path, limit: int) -> list[SignedChallenge]:
    """The newest signed challenges in a node's database (read-only; [] before it exists)."""
    if not node_db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{node_db}?mode=ro", uri=True,
                                                timeout=1)) as db:
            rows = db.execute("SELECT challenge_json FROM challenges ORDER BY received_at DESC"
                              " LIMIT ?", (limit,)).fetchall()
    except sqlite3.Error:
        return []
    out = []
    for (raw,) in rows:
        with contextlib.suppress(Exception):
            out.append(SignedChallenge.from_json(bytes(raw)))
    return out


class Griefer:
    """See the module docstring. ``mixers()`` returns the mixers' (address, URL) now;
    ``closed_epoch()`` the newest epoch closed for reports (None before the first)."""

    def __init__(self, *, node_url: str, node_address: str, node_db: Path, domain: Domain,
                 preset: Preset, mixers: Callable[[], Sequence[tuple[str, str]]],
                 closed_epoch: Callable[[], int | None], head: Callable[[], int] = lambda: 0,
                 interval_s: float = 0.5, seed: int = 0,
                 identity: Identity | None = None) -> None:
        self.node_url = node_url.rstrip("/")
        self.node_address = node_address.lower()
        self.node_db = node_db
        self.domain = domain
        self.preset = preset
        self.mixers = mixers
        self.closed_epoch = closed_epoch
        self.head = head
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.identity = identity or Identity.from_entropy(os.urandom(32))
        self.tallies = {kind: Tally() for kind in KINDS}
        self.leaked_rounds = 0
        self.waves = 0
        self._replayed: set[bytes] = set()
        self._leaks_seen: set[tuple[str, int, int]] = set()

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Attack in waves until cancelled."""
        async with httpx.AsyncClient(timeout=ANSWER_TIMEOUT_S) as http:
            while True:
                await self.wave(http)
                await asyncio.sleep(self.interval_s)

    async def wave(self, http: httpx.AsyncClient) -> None:
        """One of each attack (their faults are the griefer's own: logged, never raised)."""
        self.waves += 1
        attacks = [self.node_steps(http), self.replays(), self.forged_challenge(),
                   self.ai_endpoints(http), self.settlement_routes(http),
                   self.batch_routes(http), self.watch_status(http)]
        for result in await asyncio.gather(*attacks, return_exceptions=True):
            if isinstance(result, Exception):
                log.debug("griefer: %s", result)

    def summary(self) -> dict[str, Any]:
        return {"waves": self.waves, "leaked_rounds": self.leaked_rounds,
                **{k: {"sent": t.sent, "served": t.served, "examples": t.examples}
                   for k, t in self.tallies.items()}}

    @property
    def served(self) -> int:
        return sum(t.served for t in self.tallies.values())

    @property
    def sent(self) -> int:
        return sum(t.sent for t in self.tallies.values())

    # -- the node's session endpoint ---------------------------------------------------------
    async def _session(self, frames: Sequence[bytes]) -> bytes | None:
        """Send ``frames`` on a new connection; the node's first answer (None: closed)."""
        async with connect(session_url(self.node_url), proxy=None, compression=None,
                           max_size=None, ping_interval=None, open_timeout=ANSWER_TIMEOUT_S
                           ) as socket:
            for frame in frames:
                with contextlib.suppress(Exception):  # the node may close after the first
                    await socket.send(frame)
            try:
                answer = await asyncio.wait_for(socket.recv(decode=False), ANSWER_TIMEOUT_S)
            except Exception:
                return None
            return bytes(answer) if isinstance(answer, bytes) else str(answer).encode()

    async def node_steps(self, http: httpx.AsyncClient) -> None:
        junk = self.rng.randbytes(16)
        steps = [ECHO + junk, DOWNLOAD + self.rng.randbytes(64), COMPUTE + self.rng.randbytes(32),
                 FINISH, OPEN + b'{"indices": [0]}']
        frame = self.rng.choice(steps)
        answer = await self._session([frame])
        self.tallies["node_steps"].count(_served_frame(answer), f"{frame[:1]!r} -> {answer!r}")
        # The per-step HTTP routes of the release before sessions were WebSockets.
        cid = self.rng.randbytes(32).hex()
        step = self.rng.choice(["echo", "compute", "upload", "finish"])
        response = await http.post(f"{self.node_url}/v1/challenges/0x{cid}/{step}",
                                   json={"nonce": "0x" + junk.hex()})
        self.tallies["node_steps"].count(response.is_success,
                                         f"POST .../{step} -> {response.status_code}")

    async def replays(self) -> None:
        captured = await asyncio.to_thread(read_captured_challenges, self.node_db, 32)
        fresh = [c for c in captured if c.challenge.challenge_id not in self._replayed]
        for signed in (fresh or captured)[:REPLAYS_PER_WAVE]:
            self._replayed.add(signed.challenge.challenge_id)
            # The challenge, then steps at once: served if the node takes it up.
            answer = await self._session([START + signed.to_json(),
                                          ECHO + self.rng.randbytes(16)])
            self.tallies["replays"].count(_served_frame(answer),
                                          f"replayed 0x{signed.challenge.challenge_id.hex()[:16]}"
                                          f" -> {answer!r}"[:300])

    async def forged_challenge(self) -> None:
        mixers = list(self.mixers())
        if not mixers:
            return
        mixer, _url = self.rng.choice(mixers)
        closed = self.closed_epoch()
        epoch = 0 if closed is None else closed + 1
        challenge = compute_challenge(beta=self.rng.randbytes(64), epoch=epoch,
                                      round_=self.rng.randrange(self.preset.rounds_per_epoch),
                                      mixer=mixer, node=self.node_address, hardware_class=0,
                                      preset=self.preset)
        signed = SignedChallenge(challenge=challenge, signature=self.identity.sign_typed(
            self.domain, challenge.hash_struct()))
        answer = await self._session([START + signed.to_json(), ECHO + self.rng.randbytes(16)])
        self.tallies["forged_challenges"].count(_served_frame(answer), f"forged -> {answer!r}")

    # -- the node's AI endpoints -----------------------------------------------------------
    async def ai_endpoints(self, http: httpx.AsyncClient) -> None:
        url = f"{self.node_url}/v1/embeddings"
        body = json.dumps({"model": "all-minilm-l6-v2",
                           "input": [f"griefer {self.rng.random()}"]}).encode()
        # Signed over a current block: refused for its signer, not for its age.
        request = compute_node_request("POST", url, body, self.head(), self.rng.randbytes(16))
        own = sign_node_request(self.identity, self.domain, request)
        for headers in ({}, {CREDENTIAL_HEADER: "1.2.3"},
                        {CREDENTIAL_HEADER: own.encode()},
                        {"authorization": "Bearer not-the-operators-key"}):
            response = await http.post(url, content=body,
                                       headers={"content-type": "application/json", **headers})
            self.tallies["ai_endpoints"].count(
                response.is_success, f"{sorted(headers)} -> {response.status_code} "
                                     f"{response.text[:120]}")

    # -- the mixers' routes ---------------------------------------------------------------------
    async def settlement_routes(self, http: httpx.AsyncClient) -> None:
        closed = self.closed_epoch()
        body = {"settlement": {"epoch": 0 if closed is None else closed,
                               "rewardsRoot": "0x" + self.rng.randbytes(32).hex(),
                               "total": self.rng.randrange(1, 10**18),
                               "reportsDigest": "0x" + self.rng.randbytes(32).hex()},
                "punishments": []}
        for _mixer, url in self.mixers():
            response = await http.post(f"{url}/v1/settlements", json=body)
            self.tallies["settlement_routes"].count(
                response.is_success, f"{url} -> {response.status_code} {response.text[:120]}")

    async def batch_routes(self, http: httpx.AsyncClient) -> None:
        closed = self.closed_epoch()
        epoch = 0 if closed is None else closed + 1
        base: dict[str, object] = dict(
            epoch=epoch, round=0, mixer=self.identity.address, node=self.node_address,
            hardware_class=0, vrf_proof=self.rng.randbytes(80),
            challenge_digest=self.rng.randbytes(32))
        report = compute_failed_report(base, Outcome.TIMEOUT, "made up by a stranger")
        batch = compute_batch(epoch, 0, self.identity.address, [report])
        proposal = BatchProposal(batch=batch, reports=(report,),
                                 signature=self.identity.sign_typed(self.domain,
                                                                    batch.hash_struct()))
        for _mixer, url in self.mixers():
            response = await http.post(f"{url}/v1/batches", content=proposal.to_json(),
                                       headers={"content-type": "application/json"})
            self.tallies["batch_routes"].count(
                response.is_success, f"{url} -> {response.status_code} {response.text[:120]}")

    async def watch_status(self, http: httpx.AsyncClient) -> None:
        """Count rounds whose VRF output a mixer shows before the round is done."""
        for mixer, url in self.mixers():
            response = await http.get(f"{url}/v1/status")
            if response.status_code != 200:
                continue
            for entry in response.json().get("rounds", []):
                key = (mixer, int(entry["epoch"]), int(entry["round"]))
                if entry.get("beta") and not entry.get("done") and key not in self._leaks_seen:
                    self._leaks_seen.add(key)
                    self.leaked_rounds += 1


def _served_frame(answer: bytes | None) -> bool:
    """Whether the node answered a frame with anything but an error (or a close)."""
    return answer is not None and answer[:1] != ERROR


__all__ = ["KINDS", "Griefer", "Tally", "read_captured_challenges"]

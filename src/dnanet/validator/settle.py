"""The settlement loop: close each epoch after its grace period, publish its rollup, gather the
mixers' signatures, and settle it on chain exactly once; then submit its punishments.

One ``step()`` does, in order:

1. read the head block and the distributor's next epoch to settle;
2. adopt every earlier epoch the chain settled that this Validator has not recorded (after a
   restart between the transaction and its record, or when another Validator settled it),
   comparing the chain's root with its own: a different root marks the epoch ``diverged`` and
   stops all further settlements until an operator looks (fail closed);
3. once ``block >= settle(e)`` for the next epoch ``e``: publish its rollup (closing it for
   intake first), ask every mixer of the epoch to sign the settlement and its punishments
   (``POST {endpoint}/v1/settlements``), verify each signature, and with a quorum submit;
4. submit the punishments of settled epochs that have a quorum of signatures.

The rollup of epoch ``e`` starts from the ``EpochState`` that epoch ``e - 1`` carried (stored
when it was published), so publishing costs the reports of one epoch, never the history; it
equals replaying every epoch with ``process_epochs`` (the tests check it). A mixer's refusal
to sign is stored with its reason (``/v1/status`` shows it) and counted in /metrics.
Everything is in SQLite, so a restarted loop resumes; before it submits it asks the chain,
so it never settles an epoch twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from dnanet.crypto.eip712 import recover_typed
from dnanet.errors import DnanetError, ProtocolError, SignatureError
from dnanet.protocol.codec import canonical_json, parse_json
from dnanet.protocol.epoch import process_epoch
from dnanet.protocol.messages import CoSignature, EpochSettlement, Punishment
from dnanet.protocol.quorum import compute_quorum_threshold, verify_quorum
from dnanet.protocol.schedule import compute_settlement_block
from dnanet.service.network import ChainGateway, MixerRecord, SettledEpoch
from dnanet.validator.store import DIVERGED, SETTLED, ValidatorStore

log = logging.getLogger("dnanet.validator.settle")

MAX_RESPONSE_BYTES = 1 << 20
PUNISHMENT_ATTEMPTS = 5


class SettlementSigner(Protocol):
    """How the Validator asks one mixer to sign an epoch's settlement and punishments."""

    async def sign(
        self, mixer: MixerRecord, settlement: EpochSettlement, punishments: Sequence[Punishment]
    ) -> tuple[CoSignature, tuple[CoSignature, ...]]: ...


class HttpSettlementSigner:
    """``POST {mixer.endpoint}/v1/settlements`` with ``{"settlement", "punishments"}``; the
    mixer answers ``{"settlement": CoSignature, "punishments": [CoSignature...]}``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def sign(
        self, mixer: MixerRecord, settlement: EpochSettlement, punishments: Sequence[Punishment]
    ) -> tuple[CoSignature, tuple[CoSignature, ...]]:
        body = canonical_json({"settlement": settlement.to_wire(),
                               "punishments": [p.to_wire() for p in punishments]})
        url = f"{mixer.endpoint.rstrip('/')}/v1/settlements"
        try:
            response = await self.client.post(url, content=body,
                                              headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise ProtocolError(f"mixer {mixer.address} at {url} is unreachable: "
                                f"{type(exc).__name__} {exc}") from None
        if response.status_code != 200:
            raise ProtocolError(f"mixer {mixer.address} refused to sign epoch "
                                f"{settlement.epoch}: HTTP {response.status_code} "
                                f"{response.text[:300]}")
        data = parse_json(response.content, max_bytes=MAX_RESPONSE_BYTES)
        if not isinstance(data, dict) or set(data) != {"settlement", "punishments"}:
            raise ProtocolError("expected an object with settlement and punishments",
                                field="response")
        items = data["punishments"]
        if not isinstance(items, list):
            raise ProtocolError("expected a list", field="response.punishments")
        return (CoSignature.from_wire(data["settlement"], "response.settlement"),
                tuple(CoSignature.from_wire(s, f"response.punishments[{i}]")
                      for i, s in enumerate(items)))


@dataclass
class Backoff:
    """Exponential backoff per key, from ``base_s`` up to ``max_s``."""

    base_s: float = 0.5
    max_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _state: dict[object, tuple[int, float]] = field(default_factory=dict)

    def ready(self, key: object) -> bool:
        state = self._state.get(key)
        return state is None or self.clock() >= state[1]

    def failed(self, key: object) -> float:
        failures = self._state.get(key, (0, 0.0))[0] + 1
        delay = min(self.max_s, self.base_s * 2.0 ** (failures - 1))
        self._state[key] = (failures, self.clock() + delay)
        return delay

    def succeeded(self, key: object) -> None:
        self._state.pop(key, None)


class SettlementHooks(Protocol):
    def settled(self, epoch: int) -> None: ...
    def punished(self) -> None: ...
    def refused(self, epoch: int, mixer: str) -> None: ...


class _NoHooks:
    def settled(self, epoch: int) -> None:
        pass

    def punished(self) -> None:
        pass

    def refused(self, epoch: int, mixer: str) -> None:
        pass


class SettlementLoop:
    """Drives settlements; ``run()`` loops until cancelled, ``step()`` is one pass."""

    def __init__(
        self,
        store: ValidatorStore,
        gateway: ChainGateway,
        signer: SettlementSigner,
        *,
        poll_s: float = 1.0,
        backoff: Backoff | None = None,
        hooks: SettlementHooks | None = None,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.signer = signer
        self.poll_s = poll_s
        self.backoff = backoff or Backoff()
        self.hooks: SettlementHooks = hooks or _NoHooks()
        self.on_published = on_published
        self.preset = gateway.preset
        self.domain = gateway.domain
        self.head: int | None = None
        self.chain_next: int | None = None
        """The chain's next epoch to settle, as of the last step (intake rejects older)."""
        self._last_log: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault in one pass must not stop settlements
                self._warn("step", f"settlement step failed: {exc}", exc_info=True)
            await asyncio.sleep(self.poll_s)

    async def step(self) -> None:
        gw = self.gateway
        self.head = head = await asyncio.to_thread(gw.block_number)
        self.chain_next = chain_next = await asyncio.to_thread(gw.next_epoch_to_settle)
        diverged = self.store.diverged_epochs()
        if diverged:
            self._warn("diverged", f"epochs {diverged} were settled on chain with another root "
                       "than this Validator computed; not settling further epochs")
            return
        await self._adopt_settled(chain_next)
        if not self.store.diverged_epochs() and head >= compute_settlement_block(
                chain_next, self.preset, gw.genesis_block):
            await self.settle(chain_next)
        await self.submit_punishments()

    # -- publication ------------------------------------------------------------------------
    async def publish(self, epoch: int) -> EpochSettlement:
        """Close ``epoch`` (and any earlier unpublished one) and store its rollup."""
        last = self.store.last_published_epoch()
        for e in range(0 if last is None else last + 1, epoch + 1):
            await asyncio.to_thread(self._publish_one, e)
        settlement = self.store.settlement(epoch)
        if settlement is None:  # pragma: no cover - _publish_one stores it
            raise ProtocolError(f"epoch {epoch} has no stored settlement", field="epoch")
        return settlement

    def _publish_one(self, epoch: int) -> None:
        # Close first: a certificate committed after this cannot change the reports read below.
        self.store.close_epoch(epoch)
        reports = self.store.reports(epoch)
        state = self.store.carried_state(epoch)
        if state is None:
            self.store.ensure_carried_states(self.preset)
            state = self.store.carried_state(epoch)
        if state is None:  # pragma: no cover - epochs are published in order
            raise ProtocolError(f"no state carried into epoch {epoch}", field="epoch")
        rollup = process_epoch(epoch, reports, state=state, preset=self.preset)
        self.store.publish_rollup(rollup)
        if self.on_published is not None:
            self.on_published(epoch)
        s = rollup.settlement
        log.info("epoch %d published: %d reports, root 0x%s, total %d, %d punishments",
                 epoch, len(rollup.reports), s.rewards_root.hex(), s.total,
                 len(rollup.punishments))

    # -- catching up with the chain ---------------------------------------------------------
    async def _adopt_settled(self, chain_next: int) -> None:
        settled = self.store.latest_settled_epoch()
        for epoch in range(0 if settled is None else settled + 1, chain_next):
            record = self.store.epoch_record(epoch)
            if record is not None and record.status in (SETTLED, DIVERGED):
                continue
            chain = await asyncio.to_thread(self.gateway.settled_epoch, epoch)
            if chain is None:
                self._warn(f"adopt{epoch}", f"the chain's next epoch is {chain_next} but it has "
                           f"no settlement record for epoch {epoch}; retrying")
                return
            settlement = await self.publish(epoch)
            self._record_chain_settlement(settlement, chain)

    def _record_chain_settlement(self, settlement: EpochSettlement, chain: SettledEpoch) -> None:
        epoch = settlement.epoch
        same = (chain.rewards_root, chain.total) == (settlement.rewards_root, settlement.total)
        note = None if same else (
            f"chain settled root 0x{chain.rewards_root.hex()} total {chain.total}; this "
            f"Validator computed root 0x{settlement.rewards_root.hex()} total {settlement.total}")
        self.store.mark_settled(epoch, chain.tx_hash, chain.rewards_root, diverged=not same,
                                note=note)
        if same:
            log.info("epoch %d settled on chain (tx %s)", epoch, chain.tx_hash)
            self.hooks.settled(epoch)
        else:
            log.error("epoch %d diverged: %s", epoch, note)

    # -- settling -------------------------------------------------------------------------------
    async def settle(self, epoch: int) -> None:
        """Publish, gather a quorum, submit once. Returns early (retried by the next step)
        while the quorum is missing or the chain refuses."""
        record = self.store.epoch_record(epoch)
        if record is not None and record.status in (SETTLED, DIVERGED):
            self._warn(f"recorded{epoch}", f"epoch {epoch} is recorded as settled (tx "
                       f"{record.settle_tx}) but the chain still expects it: waiting for the "
                       "chain (a reorg or an unconfirmed transaction)")
            return
        settlement = await self.publish(epoch)
        members = await asyncio.to_thread(self.gateway.mixer_set, epoch)
        threshold = compute_quorum_threshold(len(members))
        signatures = self.store.signatures(epoch, settlement.hash_struct())
        if len(signatures) < threshold:
            await self.gather(epoch, members, threshold - len(signatures))
            signatures = self.store.signatures(epoch, settlement.hash_struct())
        if len(signatures) < threshold:
            self._warn(f"quorum{epoch}", f"epoch {epoch}: {len(signatures)} of {threshold} "
                       "mixer signatures; retrying")
            return
        key = ("submit", epoch)
        if not self.backoff.ready(key):
            return
        # Verify the chain has not settled it meanwhile: never submit an epoch twice.
        chain = await asyncio.to_thread(self.gateway.settled_epoch, epoch)
        if chain is not None:
            self._record_chain_settlement(settlement, chain)
            return
        ordered = [signatures[m.address.lower()][0] for m in members
                   if m.address.lower() in signatures][:threshold]
        verify_quorum(self.domain, settlement.hash_struct(), ordered,
                      [m.address.lower() for m in members])
        try:
            tx = await asyncio.to_thread(self.gateway.submit_settlement, settlement, ordered)
        except DnanetError as exc:
            chain = await asyncio.to_thread(self.gateway.settled_epoch, epoch)
            if chain is not None:
                self._record_chain_settlement(settlement, chain)
                return
            delay = self.backoff.failed(key)
            log.warning("epoch %d: submitting the settlement failed (%s); retry in %.1f s",
                        epoch, exc, delay)
            return
        self.backoff.succeeded(key)
        self.store.mark_settled(epoch, tx or None, settlement.rewards_root)
        log.info("epoch %d settled: tx %s, root 0x%s, total %d", epoch, tx,
                 settlement.rewards_root.hex(), settlement.total)
        self.hooks.settled(epoch)

    async def gather(self, epoch: int, members: Sequence[MixerRecord], needed: int) -> int:
        """Ask the members that have not signed (and are not backing off) until ``needed``
        more valid signatures are stored; returns how many were gathered."""
        settlement = self.store.settlement(epoch)
        if settlement is None:
            raise ProtocolError(f"epoch {epoch} is not published", field="epoch")
        punishments = [p.punishment for p in self.store.punishments(epoch)]
        have = self.store.signatures(epoch, settlement.hash_struct())
        todo = [m for m in members
                if m.address.lower() not in have and self.backoff.ready((epoch, m.address))]
        tasks = {asyncio.create_task(self._ask(m, settlement, punishments)) for m in todo}
        gathered = 0
        try:
            pending = tasks
            while pending and gathered < needed:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                gathered += sum(1 for t in done if t.result())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return gathered

    async def _ask(self, mixer: MixerRecord, settlement: EpochSettlement,
                   punishments: Sequence[Punishment]) -> bool:
        key = (settlement.epoch, mixer.address)
        try:
            cosig, psigs = await self.signer.sign(mixer, settlement, punishments)
            signer = mixer.address.lower()
            # Verify the mixer signed this settlement and each punishment, in the same order.
            self._verify_cosignature(cosig, signer, settlement.hash_struct(), "settlement")
            if len(psigs) != len(punishments):
                raise ProtocolError(f"{len(psigs)} punishment signatures for "
                                    f"{len(punishments)} punishments", field="punishments")
            for i, (psig, punishment) in enumerate(zip(psigs, punishments, strict=True)):
                self._verify_cosignature(psig, signer, punishment.hash_struct(),
                                         f"punishments[{i}]")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the mixer's fault: back off and ask again later
            delay = self.backoff.failed(key)
            self.store.save_refusal(settlement.epoch, mixer.address.lower(), str(exc),
                                    time.time())
            self.hooks.refused(settlement.epoch, mixer.address.lower())
            self._warn(f"ask{key}", f"epoch {settlement.epoch}: no signature from mixer "
                       f"{mixer.address}: {exc} (retry in {delay:.1f} s)")
            return False
        self.backoff.succeeded(key)
        self.store.clear_refusal(settlement.epoch, mixer.address.lower())
        self.store.save_signature(settlement.epoch, settlement.hash_struct(), signer,
                                  cosig.signature, [p.signature for p in psigs])
        return True

    def _verify_cosignature(self, cosig: CoSignature, signer: str, struct_hash: bytes,
                            what: str) -> None:
        if cosig.signer != signer:
            raise SignatureError(f"signer field is {cosig.signer}, expected {signer}", field=what)
        recovered = recover_typed(self.domain, struct_hash, cosig.signature)
        if recovered != signer:
            raise SignatureError(f"signature recovers to {recovered}, not {signer}", field=what)

    # -- punishments ----------------------------------------------------------------------------
    async def submit_punishments(self) -> None:
        """Submit each pending punishment of a settled epoch that has a quorum."""
        pending = [p for p in self.store.punishments(status="pending")
                   if (r := self.store.epoch_record(p.epoch)) is not None and r.status == SETTLED]
        if not pending:
            return
        for epoch in sorted({p.epoch for p in pending}):
            settlement = self.store.settlement(epoch)
            if settlement is None:  # pragma: no cover - settled epochs are published
                continue
            members = await asyncio.to_thread(self.gateway.mixer_set, epoch)
            threshold = compute_quorum_threshold(len(members))
            signatures = self.store.signatures(epoch, settlement.hash_struct())
            if len(signatures) < threshold:
                await self.gather(epoch, members, threshold - len(signatures))
                signatures = self.store.signatures(epoch, settlement.hash_struct())
            for record in [p for p in pending if p.epoch == epoch]:
                sigs = [signatures[m.address.lower()][1][record.index] for m in members
                        if m.address.lower() in signatures][:threshold]
                if len(sigs) < threshold:
                    continue
                await self._submit_punishment(record.epoch, record.index, record.punishment,
                                              sigs, record.attempts)

    async def _submit_punishment(self, epoch: int, index: int, punishment: Punishment,
                                 signatures: list[bytes], attempts: int) -> None:
        key = ("punish", epoch, index)
        if not self.backoff.ready(key):
            return
        try:
            tx = await asyncio.to_thread(self.gateway.submit_punishment, punishment, signatures)
        except DnanetError as exc:
            final = attempts + 1 >= PUNISHMENT_ATTEMPTS
            self.store.update_punishment(epoch, index, status="failed" if final else "pending",
                                         error=str(exc)[:500], attempted=True)
            delay = self.backoff.failed(key)
            log.warning("punishment of %s for epoch %d failed (%s)%s", punishment.node, epoch,
                        exc, "; giving up" if final else f"; retry in {delay:.1f} s")
            return
        self.backoff.succeeded(key)
        self.store.update_punishment(epoch, index, status="submitted", tx=tx or None,
                                     attempted=True)
        log.info("punished %s for epoch %d (jail=%s, slash %d bps): tx %s", punishment.node,
                 epoch, punishment.jail, punishment.slash_bps, tx or "(already executed)")
        self.hooks.punished()

    def _warn(self, key: str, message: str, *, exc_info: bool = False,
              every_s: float = 30.0) -> None:
        """Log a warning at most once per ``every_s`` per key (a retried condition)."""
        now = time.monotonic()
        if now - self._last_log.get(key, float("-inf")) >= every_s:
            self._last_log[key] = now
            log.warning(message, exc_info=exc_info)


__all__ = [
    "Backoff",
    "HttpSettlementSigner",
    "SettlementHooks",
    "SettlementLoop",
    "SettlementSigner",
]

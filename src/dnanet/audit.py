"""``dnanet audit``: recompute an epoch's settlement from the published certificates and compare
it with what the Validator published and with what the chain settled.

For every epoch ``0..N`` the auditor fetches the Validator's certificates and re-verifies each
one exactly as the Validator does (``verify_certified_batch``: the quorum over the batch, then
every report: VRF assignment, node signature, measurements, score), with epoch views built
from the chain. It then replays the epochs with ``process_epochs`` and compares epoch ``N``'s
root, total and reports digest (and punishments) with the Validator's publication, and root
and total with the chain's ``EpochSettled`` record.

One difference from intake: the registry only shows whether a node is jailed *now*, not when
it was challenged, so the auditor treats every registered node as active (a node punished
after the epoch would otherwise make its earlier, valid reports look invalid).

Exit status: 0 when everything matches, 1 on a mismatch (each one is named), 2 when the audit
could not run (the Validator or the chain unreachable, the epoch not settled yet).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dnanet.cliargs import non_negative_int
from dnanet.errors import CodecError, CryptoError, DnanetError, ProtocolError
from dnanet.protocol.codec import parse_json
from dnanet.protocol.epoch import EpochRollup, process_epochs
from dnanet.protocol.messages import EpochSettlement, Punishment, QuorumCertificate, ScoreReport
from dnanet.protocol.validation import EpochView, verify_certified_batch
from dnanet.service.network import ChainGateway, SettledEpoch
from dnanet.service.views import RoundRegistry, build_epoch_view

MAX_FETCH_BYTES = 1 << 31

CertificateFetcher = Callable[
    [int], "list[QuorumCertificate] | Awaitable[list[QuorumCertificate]]"]
SettlementFetcher = Callable[
    [int], "PublishedEpoch | Awaitable[PublishedEpoch | None] | None"]


@dataclass(frozen=True)
class PublishedEpoch:
    """What the Validator published for an epoch."""

    settlement: EpochSettlement
    punishments: tuple[Punishment, ...] | None = None


@dataclass
class VerifiedEpoch:
    """The certificates of one epoch after re-verification."""

    epoch: int
    certificates: int
    reports: list[ScoreReport]
    invalid: list[str] = field(default_factory=list)


@dataclass
class AuditResult:
    epoch: int
    computed: EpochSettlement | None = None
    punishments: tuple[Punishment, ...] = ()
    published: PublishedEpoch | None = None
    chain: SettledEpoch | None = None
    certificates: int = 0
    """Certificates verified over epochs 0..N."""
    reports: int = 0
    """Selected reports of epoch N."""
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.errors and self.computed is not None

    @property
    def exit_code(self) -> int:
        if self.mismatches:
            return 1
        return 2 if self.errors or self.computed is None else 0

    def to_json(self) -> dict[str, Any]:
        def settlement(s: EpochSettlement | None) -> dict[str, Any] | None:
            return None if s is None else s.to_wire()

        chain = None if self.chain is None else {
            "rewardsRoot": "0x" + self.chain.rewards_root.hex(), "total": self.chain.total,
            "tx": self.chain.tx_hash}
        return {
            "epoch": self.epoch, "ok": self.ok, "certificates": self.certificates,
            "reports": self.reports, "computed": settlement(self.computed),
            "published": settlement(self.published.settlement if self.published else None),
            "chain": chain, "punishments": [p.to_wire() for p in self.punishments],
            "mismatches": self.mismatches, "errors": self.errors, "notes": self.notes,
        }

    def render(self) -> str:
        lines = [f"audit of epoch {self.epoch}: "
                 + ("OK" if self.ok else "MISMATCH" if self.mismatches else "INCOMPLETE")]
        lines.append(f"  certificates verified (epochs 0..{self.epoch}): {self.certificates}")
        if self.computed is not None:
            c = self.computed
            lines.append(f"  recomputed: root 0x{c.rewards_root.hex()} total {c.total} "
                         f"reports {self.reports} digest 0x{c.reports_digest.hex()}")
            lines.append(f"  punishments recomputed: {len(self.punishments)}")
        if self.published is not None:
            p = self.published.settlement
            lines.append(f"  validator:  root 0x{p.rewards_root.hex()} total {p.total} "
                         f"digest 0x{p.reports_digest.hex()}")
        if self.chain is not None:
            lines.append(f"  chain:      root 0x{self.chain.rewards_root.hex()} total "
                         f"{self.chain.total} (tx {self.chain.tx_hash or '?'})")
        lines += [f"  MISMATCH: {m}" for m in self.mismatches]
        lines += [f"  ERROR: {e}" for e in self.errors]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def verify_epoch_certificates(epoch: int, certificates: Sequence[QuorumCertificate],
                              view: EpochView) -> VerifiedEpoch:
    """Re-verify every certificate; invalid ones are listed (and their reports left out)."""
    out = VerifiedEpoch(epoch, len(certificates), [])
    for i, certificate in enumerate(certificates):
        where = f"epoch {epoch} certificate {i} (batch 0x{certificate.batch.hash_struct().hex()})"
        if certificate.batch.epoch != epoch:
            out.invalid.append(f"{where} is for epoch {certificate.batch.epoch}")
            continue
        try:
            verify_certified_batch(certificate, view)
        except (ProtocolError, CryptoError, CodecError) as exc:
            out.invalid.append(f"{where} does not verify: {exc}")
            continue
        out.reports.extend(certificate.reports)
    return out


async def _call(fn: Callable[[int], Any], epoch: int) -> Any:
    result = fn(epoch)
    if inspect.isawaitable(result):
        result = await result
    return result


async def replay_certificates(
    gateway: ChainGateway, fetch_certificates: CertificateFetcher, epoch: int
) -> tuple[list[EpochRollup], list[VerifiedEpoch]]:
    """Verify the certificates of epochs ``0..epoch`` against views built from the gateway,
    and replay them; returns every epoch's rollup and verification outcome."""
    verified: list[VerifiedEpoch] = []
    registry = RoundRegistry(gateway, keep_epochs=1)
    for e in range(epoch + 1):
        certificates = await _call(fetch_certificates, e)
        # Each report is checked against the registry at its round's first block.
        rounds = {c.batch.round for c in certificates}
        view = await asyncio.to_thread(build_epoch_view, gateway, e, registry=registry,
                                       rounds=rounds)
        verified.append(await asyncio.to_thread(verify_epoch_certificates, e, certificates, view))
    rollups = await asyncio.to_thread(process_epochs, [v.reports for v in verified],
                                      gateway.preset)
    return rollups, verified


class ValidatorClient:
    """Reads the Validator's publication over HTTP."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self.client = client

    async def _get(self, path: str) -> Any:
        try:
            response = await self.client.get(f"{self.url}{path}")
        except httpx.HTTPError as exc:
            raise DnanetError(f"cannot reach the validator at {self.url}: "
                              f"{type(exc).__name__} {exc}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise DnanetError(f"the validator answered HTTP {response.status_code} for {path}: "
                              f"{response.text[:200]}")
        return parse_json(response.content, max_bytes=MAX_FETCH_BYTES)

    async def certificates(self, epoch: int) -> list[QuorumCertificate]:
        data = await self._get(f"/v1/epochs/{epoch}/certificates")
        if data is None:
            return []
        items = data.get("certificates", data) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise CodecError("expected a list of certificates", field="certificates")
        return [QuorumCertificate.from_wire(c, f"certificates[{i}]") for i, c in enumerate(items)]

    async def published(self, epoch: int) -> PublishedEpoch | None:
        data = await self._get(f"/v1/epochs/{epoch}")
        if not isinstance(data, dict) or data.get("settlement") is None:
            return None
        settlement = EpochSettlement.from_wire(data["settlement"], "settlement")
        items = data.get("punishments")
        punishments = None
        if isinstance(items, list):
            punishments = tuple(
                Punishment.from_wire(p.get("punishment") if isinstance(p, dict) else p,
                                     f"punishments[{i}]") for i, p in enumerate(items))
        return PublishedEpoch(settlement, punishments)


async def audit_epoch(
    gateway: ChainGateway,
    source: str | CertificateFetcher,
    epoch: int,
    *,
    client: httpx.AsyncClient | None = None,
    fetch_published: SettlementFetcher | None = None,
) -> AuditResult:
    """Audit ``epoch``. ``source`` is the Validator's URL, or a function returning an epoch's
    certificates (then ``fetch_published`` supplies what the Validator published, if known).
    Never raises for a mismatch or an unreachable service: the result says what happened."""
    result = AuditResult(epoch)
    owned: httpx.AsyncClient | None = None
    try:
        if isinstance(source, str):
            if client is None:
                client = owned = httpx.AsyncClient(timeout=120)
            remote = ValidatorClient(source, client)
            fetch: CertificateFetcher = remote.certificates
            fetch_published = remote.published
        else:
            fetch = source
        rollups, verified = await replay_certificates(gateway, fetch, epoch)
        result.certificates = sum(v.certificates for v in verified)
        for v in verified:
            result.mismatches += [f"the validator published an invalid certificate: {why}"
                                  for why in v.invalid]
        rollup = rollups[-1]
        result.computed = rollup.settlement
        result.punishments = rollup.punishments
        result.reports = len(rollup.reports)
        if fetch_published is None:
            result.notes.append("the validator's publication was not compared (no source)")
        else:
            published = await _call(fetch_published, epoch)
            if published is None:
                result.errors.append(f"the validator has not published epoch {epoch} yet")
            else:
                result.published = published
                _compare_published(result, rollup, published)
        result.chain = await asyncio.to_thread(gateway.settled_epoch, epoch)
        if result.chain is None:
            result.errors.append(f"epoch {epoch} is not settled on chain yet")
        else:
            _compare_chain(result, rollup.settlement, result.chain)
    except DnanetError as exc:
        result.errors.append(str(exc))
    finally:
        if owned is not None:
            await owned.aclose()
    return result


def _compare_published(result: AuditResult, rollup: EpochRollup,
                       published: PublishedEpoch) -> None:
    mine, theirs = rollup.settlement, published.settlement
    if theirs.epoch != mine.epoch:
        result.mismatches.append(f"the validator's settlement is for epoch {theirs.epoch}")
    if theirs.rewards_root != mine.rewards_root:
        result.mismatches.append(
            f"rewards root: recomputed 0x{mine.rewards_root.hex()}, validator published "
            f"0x{theirs.rewards_root.hex()}")
    if theirs.total != mine.total:
        result.mismatches.append(
            f"total: recomputed {mine.total}, validator published {theirs.total}")
    if theirs.reports_digest != mine.reports_digest:
        result.mismatches.append(
            f"reports digest: recomputed 0x{mine.reports_digest.hex()}, validator published "
            f"0x{theirs.reports_digest.hex()} (the published reports differ from the "
            "certificates)")
    if published.punishments is not None and published.punishments != rollup.punishments:
        result.mismatches.append(
            f"punishments: recomputed {len(rollup.punishments)}, validator published "
            f"{len(published.punishments)} (or different ones)")


def _compare_chain(result: AuditResult, mine: EpochSettlement, chain: SettledEpoch) -> None:
    if chain.rewards_root != mine.rewards_root:
        result.mismatches.append(
            f"rewards root: recomputed 0x{mine.rewards_root.hex()}, chain settled "
            f"0x{chain.rewards_root.hex()}")
    if chain.total != mine.total:
        result.mismatches.append(f"total: recomputed {mine.total}, chain settled {chain.total}")
    if chain.reports_digest is not None and chain.reports_digest != mine.reports_digest:
        result.mismatches.append(
            f"reports digest: recomputed 0x{mine.reports_digest.hex()}, chain settled "
            f"0x{chain.reports_digest.hex()}")


def _audit_command(args: argparse.Namespace) -> int:
    from dnanet.service.gateway import open_gateway

    gateway = open_gateway(args.rpc, Path(args.deployment), None)
    result = asyncio.run(audit_epoch(gateway, args.validator, args.epoch))
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
    return result.exit_code


def add_audit_command(sub: Any) -> None:
    """``dnanet audit --epoch N --validator URL --rpc URL --deployment FILE``."""
    audit = sub.add_parser(
        "audit", help="recompute an epoch from the published certificates; compare with the "
        "validator and the chain (exit 0 match, 1 mismatch, 2 error)")
    audit.add_argument("--epoch", type=non_negative_int, required=True, help="epoch to audit")
    audit.add_argument("--validator", required=True, help="the Validator's URL")
    audit.add_argument("--rpc", default="http://127.0.0.1:8545", help="chain JSON-RPC URL")
    audit.add_argument("--deployment", required=True, help="deployment file of the network")
    audit.add_argument("--json", action="store_true", help="print the result as JSON")
    audit.set_defaults(handler=_audit_command)


__all__ = [
    "AuditResult",
    "PublishedEpoch",
    "ValidatorClient",
    "VerifiedEpoch",
    "add_audit_command",
    "audit_epoch",
    "replay_certificates",
    "verify_epoch_certificates",
]

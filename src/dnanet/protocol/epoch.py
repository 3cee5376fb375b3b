"""The epoch transition: from an epoch's certified reports to its settlement.

``process_epoch`` reads as the list of steps the Validator, every co-signing mixer and the
auditor perform identically:

1. ``select_epoch_reports``: one report per (epoch, round, mixer, node), in canonical order;
2. ``compute_node_epoch_scores`` / ``compute_epoch_scores``: per-node epoch scores;
3. ``compute_epoch_rewards``: the epoch's emission split by score (integers, exact sum);
4. ``compute_cumulative``: each node's all-time total, the amount its leaf commits to;
5. ``RewardTree.build``: the OpenZeppelin-compatible tree over ``(address, cumulative)``;
6. ``compute_punishments``: fraud and repeated strikes;
7. the ``EpochSettlement`` that the mixers sign and the distributor checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dnanet.crypto.eip712 import address_to_bytes
from dnanet.crypto.hashing import keccak256
from dnanet.errors import RollupError
from dnanet.params import Preset
from dnanet.protocol.messages import ZERO32, EpochSettlement, Punishment, ScoreReport
from dnanet.protocol.rollup import RewardTree, compute_cumulative, compute_epoch_rewards
from dnanet.protocol.scoring import (
    NodeEpochScore,
    compute_epoch_scores,
    compute_node_epoch_scores,
)


@dataclass(frozen=True)
class EpochRollup:
    """Everything an epoch's settlement is computed from, for publication and audit."""

    epoch: int
    reports: tuple[ScoreReport, ...]
    node_scores: Mapping[str, NodeEpochScore]
    epoch_scores: Mapping[str, int]
    rewards: Mapping[str, int]
    cumulative: Mapping[str, int]
    tree: RewardTree | None
    settlement: EpochSettlement
    strikes: tuple[str, ...]
    punishments: tuple[Punishment, ...]

    def proof(self, address: str) -> list[bytes]:
        if self.tree is None:
            raise RollupError(f"no rewards in the tree of epoch {self.epoch}")
        return self.tree.proof(address)


def select_epoch_reports(epoch: int, reports: Iterable[ScoreReport]) -> list[ScoreReport]:
    """One report per (epoch, round, mixer, node), sorted by that key.

    Duplicates with identical content collapse; if a faulty mixer certified two different
    reports for one key, the one with the smaller struct hash is kept (deterministic).
    """
    chosen: dict[tuple[int, int, str, str], ScoreReport] = {}
    for report in reports:
        if report.epoch != epoch:
            raise RollupError(f"report for epoch {report.epoch} in epoch {epoch}", field="epoch")
        key = report.key
        kept = chosen.get(key)
        if kept is None or report.hash_struct() < kept.hash_struct():
            chosen[key] = report
    return [chosen[key] for key in sorted(chosen)]


def compute_reports_digest(reports: Sequence[ScoreReport]) -> bytes:
    """keccak256 over the concatenated struct hashes of the selected reports (in order)."""
    return keccak256(b"dnanet/reports" + b"".join(r.hash_struct() for r in reports))


def compute_strike_evidence(node: str, strike_epochs: Sequence[int]) -> bytes:
    return keccak256(
        b"dnanet/strikes"
        + address_to_bytes(node)
        + b"".join(e.to_bytes(8, "big") for e in sorted(strike_epochs))
    )


def compute_fraud_evidence(fraud_report_hashes: Sequence[bytes]) -> bytes:
    return keccak256(b"dnanet/fraud" + b"".join(sorted(fraud_report_hashes)))


def compute_punishments(
    epoch: int,
    node_scores: Mapping[str, NodeEpochScore],
    strike_history: Mapping[str, Sequence[int]],
    preset: Preset,
) -> tuple[tuple[str, ...], tuple[Punishment, ...]]:
    """This epoch's strikes, and the punishments they and any fraud lead to.

    Fraud (a signed wrong answer) jails and slashes ``fraud_slash_bps`` at once. A strike is an
    epoch with too many failures; ``strikes_to_punish`` strikes within the last
    ``strike_window_epochs`` epochs (this one included) jail and slash ``strike_slash_bps``.
    """
    strikes = tuple(sorted(n for n, s in node_scores.items() if s.is_striking(preset)))
    punishments: list[Punishment] = []
    for node in sorted(node_scores):
        entry = node_scores[node]
        if entry.fraud:
            punishments.append(
                Punishment(
                    node=node, epoch=epoch, jail=True, slash_bps=preset.fraud_slash_bps,
                    evidence_digest=compute_fraud_evidence(entry.fraud_reports),
                )
            )
            continue
        if node not in strikes:
            continue
        window_start = epoch - preset.strike_window_epochs + 1
        recent = sorted(
            {e for e in strike_history.get(node, ()) if window_start <= e < epoch} | {epoch}
        )
        if len(recent) >= preset.strikes_to_punish:
            punishments.append(
                Punishment(
                    node=node, epoch=epoch, jail=True, slash_bps=preset.strike_slash_bps,
                    evidence_digest=compute_strike_evidence(node, recent),
                )
            )
    return strikes, tuple(punishments)


def process_epoch(
    epoch: int,
    reports: Iterable[ScoreReport],
    *,
    previous_cumulative: Mapping[str, int],
    strike_history: Mapping[str, Sequence[int]],
    preset: Preset,
) -> EpochRollup:
    """The deterministic rollup of one epoch from its certified reports."""
    selected = select_epoch_reports(epoch, reports)
    node_scores = compute_node_epoch_scores(selected)
    epoch_scores = compute_epoch_scores(node_scores, preset)
    rewards = compute_epoch_rewards(epoch_scores, preset.epoch_emission(epoch))
    cumulative = compute_cumulative(previous_cumulative, rewards)
    entries = [(addr, amount) for addr, amount in sorted(cumulative.items()) if amount > 0]
    tree = RewardTree.build(entries) if entries else None
    strikes, punishments = compute_punishments(epoch, node_scores, strike_history, preset)
    settlement = EpochSettlement(
        epoch=epoch,
        rewards_root=tree.root if tree is not None else ZERO32,
        total=sum(rewards.values()),
        reports_digest=compute_reports_digest(selected),
    )
    return EpochRollup(
        epoch=epoch,
        reports=tuple(selected),
        node_scores=node_scores,
        epoch_scores=epoch_scores,
        rewards=rewards,
        cumulative=cumulative,
        tree=tree,
        settlement=settlement,
        strikes=strikes,
        punishments=punishments,
    )




def process_epochs(
    reports_by_epoch: Sequence[Iterable[ScoreReport]], preset: Preset
) -> list[EpochRollup]:
    """Replay epochs 0, 1, ... in order, carrying cumulative totals and strike history.

    The auditor and a co-signing mixer use this to recompute every settlement from the
    published reports alone.
    """
    rollups: list[EpochRollup] = []
    cumulative: Mapping[str, int] = {}
    strikes: dict[str, list[int]] = {}
    for epoch, reports in enumerate(reports_by_epoch):
        rollup = process_epoch(
            epoch, reports, previous_cumulative=cumulative, strike_history=strikes, preset=preset
        )
        for node in rollup.strikes:
            strikes.setdefault(node, []).append(epoch)
        for punishment in rollup.punishments:
            strikes.pop(punishment.node, None)  # a punishment uses up the strikes behind it
        cumulative = rollup.cumulative
        rollups.append(rollup)
    return rollups


__all__ = [
    "EpochRollup",
    "compute_fraud_evidence",
    "compute_punishments",
    "compute_reports_digest",
    "compute_strike_evidence",
    "process_epoch",
    "process_epochs",
    "select_epoch_reports",
]

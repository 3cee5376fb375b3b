"""The epoch transition: from an epoch's certified reports and the state carried from the
epoch before to its settlement and the state carried into the next.

``process_epoch`` reads as the list of steps the Validator, every co-signing mixer and the
auditor perform identically:

1. ``select_epoch_reports``: one report per (epoch, round, mixer, node), in canonical order;
2. ``compute_node_epoch_scores`` / ``compute_epoch_scores``: per-node epoch scores;
3. ``compute_epoch_rewards``: the epoch's emission split by score (integers, exact sum);
4. ``compute_cumulative``: each node's all-time total, the amount its leaf commits to;
5. ``RewardTree.build``: the OpenZeppelin-compatible tree over ``(address, cumulative)``;
6. ``compute_punishments``: fraud, canary answers found wrong by more than ``f`` mixers, and
   repeated strikes;
7. the ``EpochSettlement`` that the mixers sign and the distributor checks;
8. ``compute_next_strikes``: the strikes carried forward (a punishment uses up the strikes
   behind it; strikes older than the window are dropped).

The carried state (``EpochState``: cumulative totals and live strikes) is all that epoch
``e + 1`` needs of the past, so each party settles an epoch at a cost that depends on that
epoch's reports and the number of nodes, never on the length of history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnanet.crypto.eip712 import address_to_bytes
from dnanet.crypto.hashing import keccak256
from dnanet.errors import CodecError, RollupError
from dnanet.params import Preset
from dnanet.protocol.codec import canonical_json
from dnanet.protocol.messages import ZERO32, EpochSettlement, Punishment, ScoreReport
from dnanet.protocol.rollup import RewardTree, compute_cumulative, compute_epoch_rewards
from dnanet.protocol.scoring import (
    NodeEpochScore,
    compute_epoch_scores,
    compute_node_epoch_scores,
)


@dataclass(frozen=True)
class EpochState:
    """What the rollups of epochs ``0 .. epoch - 1`` carry into ``epoch``.

    ``cumulative``: each node's all-time reward (wei), the amount its leaf commits to.
    ``strikes``: per node, the epochs of its strikes that are still within the strike window
    and not yet used up by a punishment (sorted).
    ``sentenced``: the nodes the epoch before punished (sorted). Their jail is executed only
    after that epoch settles, during this one: until it lands they are still challenged, but
    what they do meanwhile earns nothing and is not punished again (one punishment per
    offence).
    """

    epoch: int = 0
    cumulative: Mapping[str, int] = field(default_factory=dict)
    strikes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    sentenced: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """Canonical JSON form (amounts as decimal strings: they exceed 2**53); ``sentenced``
        only when there are any (a state without keeps the form, and digest, it had before)."""
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "cumulative": {a: str(v) for a, v in sorted(self.cumulative.items())},
            "strikes": {a: list(e) for a, e in sorted(self.strikes.items()) if e},
        }
        if self.sentenced:
            out["sentenced"] = sorted(self.sentenced)
        return out

    @classmethod
    def from_wire(cls, data: Any) -> EpochState:
        """Parse ``to_wire``'s form; raises CodecError naming what is wrong."""
        if not isinstance(data, dict) or not (
                {"epoch", "cumulative", "strikes"} <= set(data)
                <= {"epoch", "cumulative", "strikes", "sentenced"}):
            raise CodecError("expected an object with epoch, cumulative, strikes and "
                             "optionally sentenced", field="state")
        sentenced = data.get("sentenced", [])
        if not isinstance(sentenced, list) or not all(isinstance(a, str) for a in sentenced) \
                or sentenced != sorted(set(sentenced)) or (not sentenced and "sentenced" in data):
            raise CodecError("must be a non-empty sorted list of distinct addresses",
                             field="state.sentenced")
        epoch, cumulative, strikes = data["epoch"], data["cumulative"], data["strikes"]
        if type(epoch) is not int or epoch < 0:
            raise CodecError("must be a non-negative integer", field="state.epoch")
        if not isinstance(cumulative, dict) or not isinstance(strikes, dict):
            raise CodecError("cumulative and strikes must be objects", field="state")
        try:
            totals = {str(a): int(v) for a, v in cumulative.items() if isinstance(v, str)}
            live = {str(a): tuple(int(e) for e in v) for a, v in strikes.items()}
        except (TypeError, ValueError):
            raise CodecError("amounts must be decimal strings and strikes lists of epochs",
                             field="state") from None
        if len(totals) != len(cumulative) or any(v < 0 for v in totals.values()):
            raise CodecError("amounts must be non-negative decimal strings",
                             field="state.cumulative")
        return cls(epoch=epoch, cumulative=totals, strikes=live, sentenced=tuple(sentenced))

    def digest(self) -> bytes:
        """keccak256 of the canonical JSON form: two parties carry the same state iff equal."""
        return keccak256(b"dnanet/epoch-state" + canonical_json(self.to_wire()))


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
    next_state: EpochState
    """The state carried into epoch ``epoch + 1``."""

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


def compute_canary_evidence(canary_report_hashes: Sequence[bytes]) -> bytes:
    return keccak256(b"dnanet/canaries" + b"".join(sorted(canary_report_hashes)))


def compute_punishments(
    epoch: int,
    node_scores: Mapping[str, NodeEpochScore],
    strike_history: Mapping[str, Sequence[int]],
    preset: Preset,
    sentenced: Iterable[str] = (),
) -> tuple[tuple[str, ...], tuple[Punishment, ...]]:
    """This epoch's strikes, and the punishments they and any fraud lead to.

    Fraud (a signed wrong answer) jails and slashes ``fraud_slash_bps`` at once. Canary
    answers found wrong by more than ``f`` of the epoch's challengers
    (``NodeEpochScore.is_canary_cheat``) jail and slash ``canary_slash_bps`` at once. A strike
    is an epoch with too many corroborated failures; ``strikes_to_punish`` strikes within the
    last ``strike_window_epochs`` epochs (this one included) jail and slash
    ``strike_slash_bps``. A node already ``sentenced`` (punished the epoch before, its jail
    not landed yet) gets neither strikes nor another punishment.
    """
    done = set(sentenced)
    strikes = tuple(sorted(n for n, s in node_scores.items()
                           if n not in done and s.is_striking(preset)))
    punishments: list[Punishment] = []
    for node in sorted(set(node_scores) - done):
        entry = node_scores[node]
        if entry.fraud:
            punishments.append(
                Punishment(
                    node=node, epoch=epoch, jail=True, slash_bps=preset.fraud_slash_bps,
                    evidence_digest=compute_fraud_evidence(entry.fraud_reports),
                )
            )
            continue
        if entry.is_canary_cheat():
            punishments.append(
                Punishment(
                    node=node, epoch=epoch, jail=True, slash_bps=preset.canary_slash_bps,
                    evidence_digest=compute_canary_evidence([h for _, h in entry.canary_reports]),
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


def punishment_cause(slash_bps: int, preset: Preset) -> str:
    """What a punishment of ``preset`` with ``slash_bps`` was for: "fraud", "canaries" or
    "strikes" (each cause has its own slash; see ``compute_punishments``)."""
    if slash_bps == preset.fraud_slash_bps:
        return "fraud"
    if slash_bps == preset.canary_slash_bps:
        return "canaries"
    return "strikes"


def compute_next_strikes(
    epoch: int,
    strikes: Mapping[str, Sequence[int]],
    new_strikes: Iterable[str],
    punished: Iterable[str],
    preset: Preset,
) -> dict[str, tuple[int, ...]]:
    """The live strikes after ``epoch``: this epoch's strikes added, every strike of a punished
    node used up (its punishment answered them), and strikes that fall out of the next
    epoch's window dropped."""
    out: dict[str, list[int]] = {node: list(epochs) for node, epochs in strikes.items()}
    for node in new_strikes:
        out.setdefault(node, []).append(epoch)
    for node in punished:
        out.pop(node, None)
    window_start = epoch + 1 - preset.strike_window_epochs + 1
    kept = {node: tuple(sorted({e for e in epochs if e >= window_start}))
            for node, epochs in out.items()}
    return {node: epochs for node, epochs in sorted(kept.items()) if epochs}


def process_epoch(
    epoch: int,
    reports: Iterable[ScoreReport],
    *,
    state: EpochState,
    preset: Preset,
) -> EpochRollup:
    """The deterministic rollup of one epoch from its certified reports and the state carried
    from the epoch before (``state.epoch`` must be ``epoch``)."""
    # Verify the carried state is the one this epoch follows.
    if state.epoch != epoch:
        raise RollupError(f"carried state is for epoch {state.epoch}, not {epoch}",
                          field="state")
    selected = select_epoch_reports(epoch, reports)
    node_scores = compute_node_epoch_scores(selected)
    # A sentenced node earns nothing until its jail lands (and it is unjailed).
    epoch_scores = compute_epoch_scores(node_scores, preset, state.sentenced)
    rewards = compute_epoch_rewards(epoch_scores, preset.epoch_emission(epoch))
    cumulative = compute_cumulative(state.cumulative, rewards)
    entries = [(addr, amount) for addr, amount in sorted(cumulative.items()) if amount > 0]
    tree = RewardTree.build(entries) if entries else None
    strikes, punishments = compute_punishments(epoch, node_scores, state.strikes, preset,
                                               state.sentenced)
    settlement = EpochSettlement(
        epoch=epoch,
        rewards_root=tree.root if tree is not None else ZERO32,
        total=sum(rewards.values()),
        reports_digest=compute_reports_digest(selected),
    )
    next_state = EpochState(
        epoch=epoch + 1,
        cumulative=cumulative,
        strikes=compute_next_strikes(epoch, state.strikes, strikes,
                                     (p.node for p in punishments), preset),
        sentenced=tuple(sorted({p.node for p in punishments})),
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
        next_state=next_state,
    )


def process_epochs(
    reports_by_epoch: Sequence[Iterable[ScoreReport]],
    preset: Preset,
    *,
    state: EpochState | None = None,
) -> list[EpochRollup]:
    """Replay epochs in order from ``state`` (default: genesis), each from the state the one
    before carries: the same ``process_epoch`` the Validator and the mixers run epoch by
    epoch, so a replay from genesis and a carried-forward run agree by construction."""
    rollups: list[EpochRollup] = []
    current = state if state is not None else EpochState()
    for reports in reports_by_epoch:
        rollup = process_epoch(current.epoch, reports, state=current, preset=preset)
        current = rollup.next_state
        rollups.append(rollup)
    return rollups


__all__ = [
    "EpochRollup",
    "EpochState",
    "compute_canary_evidence",
    "compute_fraud_evidence",
    "compute_next_strikes",
    "compute_punishments",
    "compute_reports_digest",
    "compute_strike_evidence",
    "process_epoch",
    "process_epochs",
    "punishment_cause",
    "select_epoch_reports",
]

"""Read-only queries of the Validator's pages: epochs, a node's history, its failures and
punishments, over the store's own connection (``ValidatorStore``, which alone writes).

The figures are those of the protocol: an epoch's score is the rollup's once the epoch is
published, else the provisional score of the reports stored so far
(``NodeEpochScore.epoch_score``); each sub-score (latency, compute, bandwidth) is averaged over
the epoch's challenges by the same rule as the epoch score (a failed challenge counts zero);
the measured figures are medians over the challenges that ended OK, as the devnet's table
shows them (``compute_median``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dnanet.params import Preset
from dnanet.protocol.messages import Outcome, Punishment, ScoreReport
from dnanet.protocol.scoring import (
    compute_epoch_scores,
    compute_node_epoch_scores,
    compute_report_score,
)
from dnanet.validator.store import EpochRecord, NodeEpochRow, ValidatorStore

HISTORY_EPOCHS = 32
"""Epochs a node's page plots by default."""
MAX_HISTORY_EPOCHS = 512
_IN_CHUNK = 500
"""Addresses per ``IN (...)`` list (SQLite allows 999 parameters in older builds)."""


def compute_median(values: Sequence[int]) -> int | None:
    """The lower median (an element of ``values``, never an average); None when empty."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


@dataclass(frozen=True)
class NodeEpochFigures:
    """One node's epoch: the score and how it came about."""

    node: str
    epoch: int
    final: bool
    """The rollup's figures (else provisional, from the reports stored so far)."""
    challenges: int
    failures: int
    score: int
    latency: int
    compute: int
    bandwidth: int
    """Sub-scores, each averaged over the epoch's challenges like the score."""
    rtt_us: int | None
    flops_per_s: int | None
    download_bps: int | None
    upload_bps: int | None
    """Medians over the challenges that ended OK (None: none did)."""
    strike: bool
    fraud: bool
    reward: int | None
    cumulative: int | None
    """None until the epoch's rollup is published."""


def compute_node_epoch_figures(node: str, epoch: int, reports: Sequence[ScoreReport],
                               row: NodeEpochRow | None, preset: Preset, *,
                               challengers: int, sentenced: bool = False) -> NodeEpochFigures:
    """``node``'s figures of ``epoch`` from its reports there (the epoch has ``challengers``
    mixers with a report), and the rollup's ``row`` once published (its score, reward, totals,
    strike and fraud are then the rollup's). Before that, a node ``sentenced`` for the epoch
    (punished the epoch before) shows the score it will be paid: 0."""
    scores = [compute_report_score(r, preset) for r in reports]
    ok = [s for r, s in zip(reports, scores, strict=True) if r.outcome == Outcome.OK]
    ok_rtt = [r.rtt_us for r in reports if r.outcome == Outcome.OK]
    n = max(len(reports), 1)
    entry = compute_node_epoch_scores(reports, challengers=challengers).get(node)
    if row is not None:
        challenges, failures, score = row.challenges, row.failures, row.score
        strike, fraud = row.strike, row.fraud
    else:
        challenges = entry.challenges if entry else 0
        failures = entry.failures if entry else 0
        score = compute_epoch_scores({node: entry}, preset,
                                     (node,) if sentenced else ())[node] if entry else 0
        strike = bool(entry and entry.is_striking(preset))
        fraud = bool(entry and entry.fraud)
    return NodeEpochFigures(
        node=node, epoch=epoch, final=row is not None, challenges=challenges, failures=failures,
        score=score,
        latency=sum(s.latency for s in scores) // n,
        compute=sum(s.compute for s in scores) // n,
        bandwidth=sum(s.bandwidth for s in scores) // n,
        rtt_us=compute_median(ok_rtt),
        flops_per_s=compute_median([s.flops_per_s for s in ok]),
        download_bps=compute_median([s.download_bps for s in ok]),
        upload_bps=compute_median([s.upload_bps for s in ok]),
        strike=strike, fraud=fraud,
        reward=None if row is None else row.reward,
        cumulative=None if row is None else row.cumulative)


@dataclass(frozen=True)
class FailedChallenge:
    epoch: int
    round: int
    mixer: str
    outcome: str
    reason: str


@dataclass(frozen=True)
class NodePunishment:
    punishment: Punishment
    status: str
    tx: str | None
    error: str | None


@dataclass(frozen=True)
class EpochLine:
    """An epoch as the overview lists it."""

    record: EpochRecord
    certificates: int
    signatures: int
    """Mixer signatures stored for the epoch's published settlement."""
    refusals: dict[str, str]
    """Mixer address -> the reason it gave for refusing to sign the settlement."""


class ValidatorHistory:
    """Read-only queries over a ``ValidatorStore``'s connection (blocking: call them off the
    event loop)."""

    def __init__(self, store: ValidatorStore, preset: Preset) -> None:
        self.store = store
        self.preset = preset

    # -- epochs -------------------------------------------------------------------------------
    def epoch_lines(self, limit: int) -> list[EpochLine]:
        """The latest epochs, newest first, with their certificates, signatures and refusals."""
        records = self.store.epoch_records(limit=limit)
        if not records:
            return []
        low = records[-1].epoch
        certificates = dict(self.store.query(
            "SELECT epoch, COUNT(*) FROM certificates WHERE epoch >= ? GROUP BY epoch", (low,)))
        out = []
        for record in records:
            settlement = record.settlement
            signatures = (0 if settlement is None else
                          len(self.store.signatures(record.epoch, settlement.hash_struct())))
            out.append(EpochLine(record, int(certificates.get(record.epoch, 0)), signatures,
                                 self.settlement_refusals(record.epoch)))
        return out

    def settlement_refusals(self, epoch: int) -> dict[str, str]:
        """Mixer -> reason of each refusal to sign ``epoch``'s settlement the store recorded
        (none when this store does not record refusals)."""
        read: Callable[[int], dict[str, str]] | None = getattr(
            self.store, "settlement_refusals", None)
        return {} if read is None else dict(read(epoch))

    def epoch_intake(self, epoch: int) -> tuple[int, int]:
        """Reports and certificates stored for ``epoch``."""
        return self.store.report_count(epoch), self.store.certificate_count(epoch)

    # -- nodes --------------------------------------------------------------------------------
    def is_known(self, node: str) -> bool:
        """Whether any report or rollup row of ``node`` is stored."""
        return (self.store.one("SELECT 1 FROM reports WHERE node=? LIMIT 1", (node,)) is not None
                or self.store.one("SELECT 1 FROM node_epochs WHERE node=? LIMIT 1",
                                  (node,)) is not None)

    def latest_epoch(self, node: str) -> int | None:
        """The newest epoch with a report or a rollup row of ``node``."""
        row = self.store.one(
            "SELECT MAX(e) FROM (SELECT MAX(epoch) AS e FROM reports WHERE node=?"
            " UNION ALL SELECT MAX(epoch) FROM node_epochs WHERE node=?)", (node, node))
        return None if row is None or row[0] is None else int(row[0])

    def node_history(self, node: str, epochs: int = HISTORY_EPOCHS) -> list[NodeEpochFigures]:
        """The node's figures for each of its last ``epochs`` epochs (oldest first), from its
        reports and the rollup's rows."""
        last = self.latest_epoch(node)
        if last is None:
            return []
        first = max(0, last - epochs + 1)
        reports: dict[int, list[ScoreReport]] = {}
        for epoch, raw in self.store.query(
                "SELECT epoch, report_json FROM reports WHERE node=? AND epoch >= ?"
                " ORDER BY epoch, round, mixer", (node, first)):
            reports.setdefault(int(epoch), []).append(ScoreReport.from_json(bytes(raw)))
        rows = {r.epoch: r for r in self.store.node_epochs(node) if r.epoch >= first}
        challengers = self.store.challengers_by_epoch(first)
        return [compute_node_epoch_figures(node, e, reports.get(e, []), rows.get(e), self.preset,
                                           challengers=challengers.get(e, 0),
                                           sentenced=node in self.store.sentenced(e))
                for e in sorted(set(reports) | set(rows))]



    def failures(self, node: str, limit: int = 50) -> list[FailedChallenge]:
        """The node's latest failed challenges, newest first, with the mixers' reasons."""
        rows = self.store.query(
            "SELECT report_json FROM reports WHERE node=? AND outcome != ?"
            " ORDER BY epoch DESC, round DESC, mixer LIMIT ?", (node, int(Outcome.OK), limit))
        out = []
        for (raw,) in rows:
            report = ScoreReport.from_json(bytes(raw))
            out.append(FailedChallenge(report.epoch, report.round, report.mixer,
                                       Outcome(report.outcome).name, report.reason))
        return out

    def punishments(self, node: str) -> list[NodePunishment]:
        """Every punishment (jail, slash) the rollups imposed on ``node``, oldest first."""
        rows = self.store.query(
            "SELECT punishment_json, status, tx, error FROM punishments WHERE node=?"
            " ORDER BY epoch, idx", (node,))
        return [NodePunishment(Punishment.from_json(bytes(p)), status, tx, error)
                for p, status, tx, error in rows]

    def epoch_figures(self, epoch: int, limit: int) -> tuple[bool, list[NodeEpochFigures], int]:
        """Whether ``epoch``'s rollup is published, the figures of its ``limit`` nodes with the
        highest scores (ties by address), and how many nodes it has. Published: the rollup's
        rows; else the provisional scores of the reports stored so far."""
        record = self.store.epoch_record(epoch)
        final = record is not None and record.settlement is not None
        rows: dict[str, NodeEpochRow] = {}
        if final:
            rows = {r.node: r for r in self.store.epoch_node_rows(epoch)}
            scores = {node: r.score for node, r in rows.items()}
        else:
            scores = compute_epoch_scores(self.store.epoch_node_scores(epoch), self.preset,
                                          self.store.sentenced(epoch))
        listed = sorted(scores, key=lambda n: (-scores[n], n))[:limit]
        reports: dict[str, list[ScoreReport]] = {}
        for start in range(0, len(listed), _IN_CHUNK):
            chunk = listed[start:start + _IN_CHUNK]
            for raw, in self.store.query(
                    "SELECT report_json FROM reports WHERE epoch=? AND node IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY round, mixer", (epoch, *chunk)):
                report = ScoreReport.from_json(bytes(raw))
                reports.setdefault(report.node, []).append(report)
        challengers = self.store.epoch_challengers(epoch)
        sentenced = self.store.sentenced(epoch)
        return final, [compute_node_epoch_figures(n, epoch, reports.get(n, []), rows.get(n),
                                                  self.preset, challengers=challengers,
                                                  sentenced=n in sentenced)
                       for n in listed], len(scores)


__all__ = [
    "HISTORY_EPOCHS",
    "MAX_HISTORY_EPOCHS",
    "EpochLine",
    "FailedChallenge",
    "NodeEpochFigures",
    "NodePunishment",
    "ValidatorHistory",
    "compute_median",
    "compute_node_epoch_figures",
]

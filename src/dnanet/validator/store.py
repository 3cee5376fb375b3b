"""The Validator's SQLite state: certificates, the selected reports, rollups and settlements.

Tables:

- ``certificates``: every accepted certificate, canonical JSON, in arrival order;
- ``reports``: one report per (epoch, round, mixer, node); when two certificates carry
  different reports for one key, the one with the smaller struct hash stays, the same rule as
  ``select_epoch_reports``, so the rollup over this table equals a replay over the certificates;
- ``epochs``: a row once an epoch is closed for intake (``settling``), then its settlement,
  and once settled, the transaction; ``diverged`` when the chain settled another root;
- ``node_epochs``: each node's score, reward, cumulative total, strike and fraud per epoch,
  for proofs, breakdowns and the dashboard;
- ``epoch_states``: the ``EpochState`` each published epoch carries into the next (cumulative
  totals and live strikes): the next epoch's rollup starts from it, never from a query of its
  own over the history (the rule lives once, in ``dnanet.protocol.epoch``);
- ``punishments`` and ``signatures``: what the mixers signed and what was submitted;
- ``settlement_refusals``: each mixer's latest refusal to sign an epoch, and why.

Amounts in wei do not fit SQLite's 64-bit integers: they are stored as decimal text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnanet.errors import ConfigError, ScheduleError
from dnanet.params import Preset
from dnanet.protocol.codec import canonical_json, parse_json
from dnanet.protocol.epoch import EpochRollup, EpochState, process_epoch
from dnanet.protocol.messages import (
    EpochSettlement,
    Outcome,
    Punishment,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.scoring import NodeEpochScore, set_tolerated
from dnanet.service.store import Store

SCHEMA_VERSION = 1

VALIDATOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_hash BLOB NOT NULL UNIQUE,
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, mixer TEXT NOT NULL,
    report_count INTEGER NOT NULL, accepted INTEGER NOT NULL,
    certificate_json BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_by_epoch ON certificates(epoch, seq);
CREATE TABLE IF NOT EXISTS reports (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, mixer TEXT NOT NULL, node TEXT NOT NULL,
    report_hash BLOB NOT NULL, batch_hash BLOB NOT NULL,
    outcome INTEGER NOT NULL, score INTEGER NOT NULL, report_json BLOB NOT NULL,
    PRIMARY KEY (epoch, round, mixer, node)
);
CREATE INDEX IF NOT EXISTS reports_by_node ON reports(node, epoch);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    reports INTEGER, root BLOB, total TEXT, reports_digest BLOB, settlement_json BLOB,
    settle_tx TEXT, chain_root BLOB, note TEXT
);
CREATE TABLE IF NOT EXISTS node_epochs (
    node TEXT NOT NULL, epoch INTEGER NOT NULL,
    score INTEGER NOT NULL, reward TEXT NOT NULL, cumulative TEXT NOT NULL,
    challenges INTEGER NOT NULL, failures INTEGER NOT NULL,
    strike INTEGER NOT NULL, fraud INTEGER NOT NULL,
    PRIMARY KEY (node, epoch)
);
CREATE INDEX IF NOT EXISTS node_epochs_by_epoch ON node_epochs(epoch, strike);
CREATE TABLE IF NOT EXISTS punishments (
    epoch INTEGER NOT NULL, idx INTEGER NOT NULL, node TEXT NOT NULL,
    punishment_json BLOB NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    tx TEXT, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    PRIMARY KEY (epoch, idx)
);
CREATE TABLE IF NOT EXISTS signatures (
    epoch INTEGER NOT NULL, signer TEXT NOT NULL, settlement_hash BLOB NOT NULL,
    signature BLOB NOT NULL, punishment_signatures TEXT NOT NULL,
    PRIMARY KEY (epoch, signer)
);
CREATE TABLE IF NOT EXISTS epoch_states (
    epoch INTEGER PRIMARY KEY, state_json BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS settlement_refusals (
    epoch INTEGER NOT NULL, mixer TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (epoch, mixer)
)
"""

SETTLING = "settling"
SETTLED = "settled"
DIVERGED = "diverged"
COLLECTING = "collecting"


@dataclass(frozen=True)
class PreparedReport:
    """A verified report as the store writes it."""

    epoch: int
    round: int
    mixer: str
    node: str
    report_hash: bytes
    outcome: int
    score: int
    report_json: bytes

    @property
    def key(self) -> tuple[int, int, str, str]:
        return (self.epoch, self.round, self.mixer, self.node)


@dataclass(frozen=True)
class PreparedCertificate:
    """A verified certificate as the store writes it (plain data: it crosses processes)."""

    batch_hash: bytes
    epoch: int
    round: int
    mixer: str
    certificate_json: bytes
    reports: tuple[PreparedReport, ...]

    @classmethod
    def of(cls, certificate: QuorumCertificate) -> PreparedCertificate:
        batch = certificate.batch
        return cls(batch.hash_struct(), batch.epoch, batch.round, batch.mixer,
                   certificate.to_json(),
                   tuple(PreparedReport(r.epoch, r.round, r.mixer, r.node, r.hash_struct(),
                                        r.outcome, r.score, r.to_json())
                         for r in certificate.reports))


class EpochClosed(ScheduleError):
    """A certificate arrived for an epoch whose rollup is already computed or settled."""


@dataclass(frozen=True)
class IntakeResult:
    accepted: int
    """Reports whose (epoch, round, mixer, node) was new."""
    skipped: int
    """Reports whose key was already stored from another certificate."""
    duplicate: bool
    """The very same batch was stored before."""


@dataclass(frozen=True)
class EpochRecord:
    """An epoch as the Validator knows it."""

    epoch: int
    status: str
    reports: int
    settlement: EpochSettlement | None
    settle_tx: str | None
    chain_root: bytes | None
    note: str | None

    def summary(self) -> dict[str, Any]:
        s = self.settlement
        return {
            "epoch": self.epoch,
            "status": self.status,
            "reports": self.reports,
            "root": None if s is None else "0x" + s.rewards_root.hex(),
            "total": None if s is None else s.total,
            "reports_digest": None if s is None else "0x" + s.reports_digest.hex(),
            "settle_tx": self.settle_tx,
        }


@dataclass(frozen=True)
class NodeEpochRow:
    node: str
    epoch: int
    score: int
    reward: int
    cumulative: int
    challenges: int
    failures: int
    strike: bool
    fraud: bool

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score, "reward": self.reward,
                "cumulative": self.cumulative, "challenges": self.challenges,
                "failures": self.failures, "strike": self.strike, "fraud": self.fraud}


@dataclass(frozen=True)
class PunishmentRecord:
    epoch: int
    index: int
    punishment: Punishment
    status: str
    tx: str | None
    attempts: int
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {"punishment": self.punishment.to_wire(), "status": self.status, "tx": self.tx,
                "attempts": self.attempts, "error": self.error}


def _row_to_node_epoch(row: tuple[Any, ...]) -> NodeEpochRow:
    node, epoch, score, reward, cumulative, challenges, failures, strike, fraud = row
    return NodeEpochRow(node, epoch, score, int(reward), int(cumulative), challenges, failures,
                        bool(strike), bool(fraud))


_NODE_EPOCH_COLUMNS = "node, epoch, score, reward, cumulative, challenges, failures, strike, fraud"


class ValidatorStore(Store):
    """The Validator's database (see the module docstring). Every write is one transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, VALIDATOR_SCHEMA, version=SCHEMA_VERSION)

    def bind_network(self, chain_id: int, contract: str) -> None:
        """Refuse a data directory written for another network (chain id and contract)."""
        key = f"{chain_id}:{contract.lower()}"
        stored = self.get_meta("network")
        if stored is None:
            self.set_meta("network", key)
        elif stored != key:
            raise ConfigError(f"{self.path} holds the state of network {stored}, not {key}: "
                              "use another --data-dir")

    # -- intake ---------------------------------------------------------------------------------
    def has_batch(self, batch_hash: bytes) -> bool:
        return self.one("SELECT 1 FROM certificates WHERE batch_hash=?", (batch_hash,)) is not None

    def batch_record(self, batch_hash: bytes) -> dict[str, Any] | None:
        """The stored certificate of a batch: epoch, round, mixer, reports, and how many of
        them were new (``accepted``); None if no certificate of it is stored."""
        row = self.one("SELECT epoch, round, mixer, report_count, accepted FROM certificates"
                       " WHERE batch_hash=?", (batch_hash,))
        if row is None:
            return None
        epoch, round_, mixer, reports, accepted = row
        return {"batch_hash": "0x" + batch_hash.hex(), "epoch": epoch, "round": round_,
                "mixer": mixer, "reports": reports, "accepted": accepted}

    def is_closed(self, epoch: int) -> bool:
        return self.one("SELECT 1 FROM epochs WHERE epoch=?", (epoch,)) is not None

    def save_certificates(
        self, certificates: Sequence[PreparedCertificate | QuorumCertificate]
    ) -> list[IntakeResult | EpochClosed]:
        """Store verified certificates in one durable transaction; one result per certificate
        (an EpochClosed for those whose epoch was closed meanwhile, which are not stored)."""
        results: list[IntakeResult | EpochClosed] = []
        with self.transaction() as db:
            closed: dict[int, bool] = {}
            for item in certificates:
                cert = (PreparedCertificate.of(item) if isinstance(item, QuorumCertificate)
                        else item)
                if db.execute("SELECT 1 FROM certificates WHERE batch_hash=?",
                              (cert.batch_hash,)).fetchone() is not None:
                    results.append(IntakeResult(0, 0, True))
                    continue
                if cert.epoch not in closed:
                    closed[cert.epoch] = db.execute(
                        "SELECT 1 FROM epochs WHERE epoch=?", (cert.epoch,)).fetchone() is not None
                if closed[cert.epoch]:
                    results.append(EpochClosed(
                        f"epoch {cert.epoch} is closed: its rollup is computed", field="epoch"))
                    continue
                accepted = skipped = 0
                for report in cert.reports:
                    values = (report.report_hash, cert.batch_hash, report.outcome, report.score,
                              report.report_json)
                    if db.execute(
                            "INSERT INTO reports(epoch, round, mixer, node, report_hash,"
                            " batch_hash, outcome, score, report_json)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (*report.key, *values)).rowcount:
                        accepted += 1
                        continue
                    skipped += 1  # the key is stored already, from another certificate
                    row = db.execute(
                        "SELECT report_hash FROM reports WHERE epoch=? AND round=? AND mixer=?"
                        " AND node=?", report.key).fetchone()
                    if report.report_hash < bytes(row[0]):
                        # Keep the smaller struct hash, as select_epoch_reports does.
                        db.execute(
                            "UPDATE reports SET report_hash=?, batch_hash=?, outcome=?, score=?,"
                            " report_json=? WHERE epoch=? AND round=? AND mixer=? AND node=?",
                            (*values, *report.key))
                db.execute(
                    "INSERT INTO certificates(batch_hash, epoch, round, mixer, report_count,"
                    " accepted, certificate_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (cert.batch_hash, cert.epoch, cert.round, cert.mixer, len(cert.reports),
                     accepted, cert.certificate_json))
                results.append(IntakeResult(accepted, skipped, False))
        return results

    # -- publication ----------------------------------------------------------------------------
    def certificates_json(self, epoch: int, offset: int = 0, limit: int = -1) -> list[bytes]:
        rows = self.query("SELECT certificate_json FROM certificates WHERE epoch=?"
                          " ORDER BY seq LIMIT ? OFFSET ?", (epoch, limit, offset))
        return [bytes(r[0]) for r in rows]

    def certificates(self, epoch: int) -> list[QuorumCertificate]:
        return [QuorumCertificate.from_json(raw, max_bytes=1 << 30)
                for raw in self.certificates_json(epoch)]

    def reports_json(self, epoch: int, offset: int = 0, limit: int = -1) -> list[bytes]:
        rows = self.query("SELECT report_json FROM reports WHERE epoch=?"
                          " ORDER BY round, mixer, node LIMIT ? OFFSET ?", (epoch, limit, offset))
        return [bytes(r[0]) for r in rows]

    def reports(self, epoch: int) -> list[ScoreReport]:
        return [ScoreReport.from_json(raw) for raw in self.reports_json(epoch)]

    def node_reports(self, epoch: int, node: str) -> list[ScoreReport]:
        rows = self.query("SELECT report_json FROM reports WHERE node=? AND epoch=?"
                          " ORDER BY round, mixer", (node, epoch))
        return [ScoreReport.from_json(bytes(r[0])) for r in rows]

    def report_count(self, epoch: int) -> int:
        row = self.one("SELECT COUNT(*) FROM reports WHERE epoch=?", (epoch,))
        return int(row[0]) if row else 0

    def certificate_count(self, epoch: int) -> int:
        row = self.one("SELECT COUNT(*) FROM certificates WHERE epoch=?", (epoch,))
        return int(row[0]) if row else 0

    # -- epochs -----------------------------------------------------------------------------------
    def close_epoch(self, epoch: int) -> None:
        """Close ``epoch`` for intake (idempotent); its reports are final from here on."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO epochs(epoch, status) VALUES (?, ?)",
                       (epoch, SETTLING))

    def epoch_record(self, epoch: int) -> EpochRecord | None:
        row = self.one("SELECT epoch, status, reports, settlement_json, settle_tx, chain_root,"
                       " note FROM epochs WHERE epoch=?", (epoch,))
        return None if row is None else self._record(row)

    def _record(self, row: tuple[Any, ...]) -> EpochRecord:
        epoch, status, reports, settlement_json, tx, chain_root, note = row
        settlement = (None if settlement_json is None
                      else EpochSettlement.from_json(bytes(settlement_json)))
        if reports is None:
            reports = self.report_count(epoch)
        return EpochRecord(epoch, status, reports, settlement, tx,
                           None if chain_root is None else bytes(chain_root), note)

    def epoch_records(self, *, before: int | None = None, limit: int = 100) -> list[EpochRecord]:
        """Closed epochs and epochs with reports, newest first."""
        bound = (1 << 63) - 1 if before is None else before
        rows = self.query(
            "SELECT epoch FROM (SELECT epoch FROM epochs UNION SELECT DISTINCT epoch FROM"
            " certificates) WHERE epoch < ? ORDER BY epoch DESC LIMIT ?", (bound, limit))
        out = []
        for (epoch,) in rows:
            record = self.epoch_record(epoch)
            out.append(record or EpochRecord(epoch, COLLECTING, self.report_count(epoch),
                                             None, None, None, None))
        return out

    def last_published_epoch(self) -> int | None:
        """The latest epoch whose rollup is stored (epochs are published in order)."""
        row = self.one("SELECT MAX(epoch) FROM epochs WHERE settlement_json IS NOT NULL")
        return None if row is None or row[0] is None else int(row[0])

    def latest_settled_epoch(self) -> int | None:
        row = self.one("SELECT MAX(epoch) FROM epochs WHERE status=?", (SETTLED,))
        return None if row is None or row[0] is None else int(row[0])

    def carried_state(self, epoch: int) -> EpochState | None:
        """The state carried into ``epoch`` (genesis for epoch 0); None if the epoch before
        was never published here."""
        row = self.one("SELECT state_json FROM epoch_states WHERE epoch=?", (epoch,))
        if row is None:
            return EpochState() if epoch == 0 else None
        return EpochState.from_wire(parse_json(bytes(row[0]), max_bytes=1 << 30))

    def sentenced(self, epoch: int) -> tuple[str, ...]:
        """The nodes sentenced for ``epoch`` (punished the epoch before: they earn nothing
        there), as far as the state carried into it is known here (else none)."""
        state = self.carried_state(epoch)
        return state.sentenced if state is not None else ()

    def latest_carried_state(self, before: int) -> EpochState:
        """The newest stored state carried into an epoch ``<= before`` (genesis if none)."""
        row = self.one("SELECT state_json FROM epoch_states WHERE epoch<=? ORDER BY epoch DESC"
                       " LIMIT 1", (before,))
        if row is None:
            return EpochState()
        return EpochState.from_wire(parse_json(bytes(row[0]), max_bytes=1 << 30))

    def ensure_carried_states(self, preset: Preset) -> int:
        """Give every published epoch the state it carries (a database written before carried
        states had none): replay its stored reports with ``process_epoch`` from the newest
        state there is, checking each rebuilt settlement against the stored one. Returns how
        many states were rebuilt (0 once done: later epochs store theirs as they publish)."""
        last = self.last_published_epoch()
        if last is None or self.carried_state(last + 1) is not None:
            return 0
        state = self.latest_carried_state(last)
        rebuilt = 0
        for epoch in range(state.epoch, last + 1):
            rollup = process_epoch(epoch, self.reports(epoch), state=state, preset=preset)
            if rollup.settlement != self.settlement(epoch):
                raise ConfigError(f"epoch {epoch}'s stored reports do not rebuild its stored "
                                  "settlement: the database is inconsistent")
            state = rollup.next_state
            with self.transaction() as db:
                db.execute("INSERT OR IGNORE INTO epoch_states(epoch, state_json) VALUES (?, ?)",
                           (state.epoch, canonical_json(state.to_wire())))
            rebuilt += 1
        return rebuilt

    def publish_rollup(self, rollup: EpochRollup) -> None:
        """Store the epoch's settlement, per-node rows, punishments and the state it carries
        into the next epoch (once, in one transaction)."""
        s = rollup.settlement
        with self.transaction() as db:
            row = db.execute("SELECT settlement_json FROM epochs WHERE epoch=?",
                             (rollup.epoch,)).fetchone()
            if row is not None and row[0] is not None:
                if EpochSettlement.from_json(bytes(row[0])) != s:
                    raise ConfigError(f"epoch {rollup.epoch} was already published with "
                                      "another settlement: the database is inconsistent")
                return
            db.execute(
                "INSERT INTO epochs(epoch, status) VALUES (?, ?) ON CONFLICT(epoch) DO NOTHING",
                (rollup.epoch, SETTLING))
            db.execute(
                "UPDATE epochs SET reports=?, root=?, total=?, reports_digest=?,"
                " settlement_json=? WHERE epoch=?",
                (len(rollup.reports), s.rewards_root, str(s.total), s.reports_digest,
                 s.to_json(), rollup.epoch))
            strikes = set(rollup.strikes)
            db.executemany(
                f"INSERT OR REPLACE INTO node_epochs({_NODE_EPOCH_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(node, rollup.epoch, rollup.epoch_scores.get(node, 0),
                  str(rollup.rewards.get(node, 0)), str(rollup.cumulative.get(node, 0)),
                  entry.challenges, entry.failures, int(node in strikes), int(entry.fraud))
                 for node, entry in sorted(rollup.node_scores.items())])
            db.executemany(
                "INSERT OR IGNORE INTO punishments(epoch, idx, node, punishment_json)"
                " VALUES (?, ?, ?, ?)",
                [(rollup.epoch, i, p.node, p.to_json()) for i, p in enumerate(rollup.punishments)])
            db.execute("INSERT OR REPLACE INTO epoch_states(epoch, state_json) VALUES (?, ?)",
                       (rollup.next_state.epoch, canonical_json(rollup.next_state.to_wire())))

    def settlement(self, epoch: int) -> EpochSettlement | None:
        row = self.one("SELECT settlement_json FROM epochs WHERE epoch=?", (epoch,))
        return None if row is None or row[0] is None else EpochSettlement.from_json(bytes(row[0]))

    def mark_settled(self, epoch: int, tx: str | None, chain_root: bytes | None,
                     *, diverged: bool = False, note: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE epochs SET status=?, settle_tx=?, chain_root=?, note=?"
                       " WHERE epoch=?",
                       (DIVERGED if diverged else SETTLED, tx, chain_root, note, epoch))

    def set_note(self, epoch: int, note: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE epochs SET note=? WHERE epoch=?", (note, epoch))

    def diverged_epochs(self) -> list[int]:
        return [int(r[0]) for r in self.query("SELECT epoch FROM epochs WHERE status=?",
                                              (DIVERGED,))]

    # -- signatures and punishments ---------------------------------------------------------
    def save_signature(self, epoch: int, settlement_hash: bytes, signer: str, signature: bytes,
                       punishment_signatures: Sequence[bytes]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO signatures(epoch, signer, settlement_hash, signature,"
                " punishment_signatures) VALUES (?, ?, ?, ?, ?)",
                (epoch, signer, settlement_hash, signature,
                 json.dumps(["0x" + s.hex() for s in punishment_signatures])))

    def save_refusal(self, epoch: int, mixer: str, reason: str, at: float) -> None:
        """Record ``mixer``'s latest refusal (or failure) to sign ``epoch``'s settlement."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO settlement_refusals(epoch, mixer, reason, at)"
                       " VALUES (?, ?, ?, ?)", (epoch, mixer, reason[:500], at))

    def clear_refusal(self, epoch: int, mixer: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM settlement_refusals WHERE epoch=? AND mixer=?",
                       (epoch, mixer))

    def settlement_refusals(self, epoch: int) -> dict[str, str]:
        """mixer -> why it last refused (or failed) to sign ``epoch``, for those that have not
        signed since."""
        return {mixer: reason for mixer, reason in self.query(
            "SELECT mixer, reason FROM settlement_refusals WHERE epoch=? ORDER BY mixer",
            (epoch,))}

    def signatures(self, epoch: int, settlement_hash: bytes
                   ) -> dict[str, tuple[bytes, list[bytes]]]:
        """signer -> (settlement signature, punishment signatures) for this very settlement."""
        rows = self.query("SELECT signer, signature, punishment_signatures FROM signatures"
                          " WHERE epoch=? AND settlement_hash=?", (epoch, settlement_hash))
        return {signer: (bytes(sig), [bytes.fromhex(s[2:]) for s in json.loads(psigs)])
                for signer, sig, psigs in rows}

    def punishments(self, epoch: int | None = None, *, status: str | None = None
                    ) -> list[PunishmentRecord]:
        sql = "SELECT epoch, idx, punishment_json, status, tx, attempts, error FROM punishments"
        where: list[str] = []
        params: list[object] = []
        if epoch is not None:
            where.append("epoch=?")
            params.append(epoch)
        if status is not None:
            where.append("status=?")
            params.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.query(sql + " ORDER BY epoch, idx", params)
        return [PunishmentRecord(e, i, Punishment.from_json(bytes(p)), st, tx, a, err)
                for e, i, p, st, tx, a, err in rows]

    def update_punishment(self, epoch: int, index: int, *, status: str, tx: str | None = None,
                          error: str | None = None, attempted: bool = False) -> None:
        with self.transaction() as db:
            db.execute("UPDATE punishments SET status=?, tx=COALESCE(?, tx), error=?,"
                       " attempts=attempts+? WHERE epoch=? AND idx=?",
                       (status, tx, error, int(attempted), epoch, index))

    # -- nodes ----------------------------------------------------------------------------------
    def node_epochs(self, node: str, *, up_to: int | None = None) -> list[NodeEpochRow]:
        bound = (1 << 63) - 1 if up_to is None else up_to
        rows = self.query(f"SELECT {_NODE_EPOCH_COLUMNS} FROM node_epochs WHERE node=?"
                          " AND epoch <= ? ORDER BY epoch", (node, bound))
        return [_row_to_node_epoch(r) for r in rows]

    def epoch_node_rows(self, epoch: int) -> list[NodeEpochRow]:
        """Every node's row of ``epoch``'s rollup."""
        rows = self.query(f"SELECT {_NODE_EPOCH_COLUMNS} FROM node_epochs WHERE epoch=?"
                          " ORDER BY node", (epoch,))
        return [_row_to_node_epoch(r) for r in rows]

    def epoch_challengers(self, epoch: int) -> int:
        """How many mixers have a stored report in ``epoch`` (its challengers so far)."""
        row = self.one("SELECT COUNT(DISTINCT mixer) FROM reports WHERE epoch=?", (epoch,))
        return int(row[0]) if row else 0

    def challengers_by_epoch(self, first: int) -> dict[int, int]:
        """``epoch_challengers`` of every epoch from ``first`` on that has a report."""
        return {int(e): int(n) for e, n in self.query(
            "SELECT epoch, COUNT(DISTINCT mixer) FROM reports WHERE epoch >= ? GROUP BY epoch",
            (first,))}

    def epoch_node_scores(self, epoch: int) -> dict[str, NodeEpochScore]:
        """Per node, ``epoch``'s stored reports aggregated as ``compute_node_epoch_scores``
        does (challenges, failures per challenger, scores, fraud), without decoding them."""
        out: dict[str, NodeEpochScore] = {}
        for node, report_hash in self.query(
                "SELECT node, report_hash FROM reports WHERE epoch=? AND outcome=?",
                (epoch, int(Outcome.WRONG_ANSWER))):
            out.setdefault(node, NodeEpochScore(node)).fraud_reports.append(bytes(report_hash))
        mixers: set[str] = set()
        for node, mixer, challenges, failures, score_sum in self.query(
                "SELECT node, mixer, COUNT(*), SUM(outcome != ?), SUM(score) FROM reports"
                " WHERE epoch=? GROUP BY node, mixer ORDER BY node, mixer",
                (int(Outcome.OK), epoch)):
            mixers.add(mixer)
            out.setdefault(node, NodeEpochScore(node)).add(mixer, challenges, failures,
                                                           score_sum)
        set_tolerated(out, len(mixers))
        return dict(sorted(out.items()))

    def node_epoch(self, node: str, epoch: int) -> NodeEpochRow | None:
        row = self.one(f"SELECT {_NODE_EPOCH_COLUMNS} FROM node_epochs WHERE node=? AND epoch=?",
                       (node, epoch))
        return None if row is None else _row_to_node_epoch(row)

    def cumulative_at(self, node: str, epoch: int) -> int:
        row = self.one("SELECT cumulative FROM node_epochs WHERE node=? AND epoch<=?"
                       " ORDER BY epoch DESC LIMIT 1", (node, epoch))
        return 0 if row is None else int(row[0])

    def tree_entries(self, epoch: int) -> list[tuple[str, int]]:
        """(node, cumulative) after ``epoch`` for every node with a positive total: the
        leaves of ``epoch``'s reward tree."""
        state = self.carried_state(epoch + 1)
        if state is None:
            raise ScheduleError(f"epoch {epoch} is not published", field="epoch")
        return sorted((node, amount) for node, amount in state.cumulative.items() if amount > 0)


__all__ = [
    "COLLECTING",
    "DIVERGED",
    "SETTLED",
    "SETTLING",
    "EpochClosed",
    "EpochRecord",
    "IntakeResult",
    "NodeEpochRow",
    "PreparedCertificate",
    "PreparedReport",
    "PunishmentRecord",
    "ValidatorStore",
]

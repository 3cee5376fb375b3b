"""The mixer's SQLite state: its own reports and batches, what it co-signed, its rounds."""

from __future__ import annotations

from pathlib import Path

from dnanet.protocol.messages import BatchProposal, QuorumCertificate, ScoreReport
from dnanet.service.store import Store

MIXER_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, vrf_proof BLOB NOT NULL,
    assigned INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (epoch, round)
);
CREATE TABLE IF NOT EXISTS own_batches (
    batch_hash BLOB PRIMARY KEY, epoch INTEGER NOT NULL, round INTEGER NOT NULL,
    proposal_json BLOB NOT NULL, certificate_json BLOB, forwarded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS own_reports (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL,
    outcome INTEGER NOT NULL, score INTEGER NOT NULL, report_json BLOB NOT NULL,
    PRIMARY KEY (epoch, round, node)
);
CREATE TABLE IF NOT EXISTS cosigned (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, mixer TEXT NOT NULL, node TEXT NOT NULL,
    batch_hash BLOB NOT NULL,
    PRIMARY KEY (epoch, round, mixer, node)
);
CREATE TABLE IF NOT EXISTS verified_epochs (
    epoch INTEGER PRIMARY KEY, reports_json BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements_signed (
    epoch INTEGER PRIMARY KEY, settlement_hash BLOB NOT NULL
)
"""


class MixerStore(Store):
    def __init__(self, path: Path) -> None:
        super().__init__(path, MIXER_SCHEMA)

    def round_done(self, epoch: int, round_: int) -> bool:
        row = self.one("SELECT done FROM rounds WHERE epoch=? AND round=?", (epoch, round_))
        return bool(row and row[0])

    def begin_round(self, epoch: int, round_: int, proof: bytes, assigned: int) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO rounds(epoch, round, vrf_proof, assigned)"
                       " VALUES (?, ?, ?, ?)", (epoch, round_, proof, assigned))

    def finish_round(self, epoch: int, round_: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE rounds SET done=1 WHERE epoch=? AND round=?", (epoch, round_))

    def save_reports(self, reports: list[ScoreReport]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO own_reports(epoch, round, node, outcome, score, report_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(r.epoch, r.round, r.node, r.outcome, r.score, r.to_json()) for r in reports],
            )

    def own_reports(self, epoch: int, round_: int) -> list[ScoreReport]:
        rows = self.query("SELECT report_json FROM own_reports WHERE epoch=? AND round=?",
                          (epoch, round_))
        return [ScoreReport.from_json(r[0]) for r in rows]

    def save_proposal(self, proposal: BatchProposal) -> None:
        b = proposal.batch
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO own_batches(batch_hash, epoch, round, proposal_json)"
                       " VALUES (?, ?, ?, ?)", (b.hash_struct(), b.epoch, b.round,
                                                proposal.to_json()))

    def save_certificate(self, certificate: QuorumCertificate) -> None:
        with self.transaction() as db:
            db.execute("UPDATE own_batches SET certificate_json=? WHERE batch_hash=?",
                       (certificate.to_json(), certificate.batch.hash_struct()))

    def mark_forwarded(self, batch_hash: bytes) -> None:
        with self.transaction() as db:
            db.execute("UPDATE own_batches SET forwarded=1 WHERE batch_hash=?", (batch_hash,))

    def unforwarded(self) -> list[QuorumCertificate]:
        rows = self.query("SELECT certificate_json FROM own_batches"
                          " WHERE certificate_json IS NOT NULL AND forwarded=0")
        return [QuorumCertificate.from_json(r[0]) for r in rows]

    def uncertified(self) -> list[BatchProposal]:
        rows = self.query("SELECT proposal_json FROM own_batches WHERE certificate_json IS NULL")
        return [BatchProposal.from_json(r[0]) for r in rows]

    def record_cosigned(self, proposal: BatchProposal) -> list[int]:
        """Record the batch's report keys; returns indices of reports already co-signed in
        another batch (those must be refused). Nothing is recorded if any conflicts."""
        batch_hash = proposal.batch.hash_struct()
        with self.transaction() as db:
            conflicts = []
            for i, r in enumerate(proposal.reports):
                row = db.execute("SELECT batch_hash FROM cosigned WHERE epoch=? AND round=?"
                                 " AND mixer=? AND node=?", r.key).fetchone()
                if row is not None and bytes(row[0]) != batch_hash:
                    conflicts.append(i)
            if not conflicts:
                db.executemany(
                    "INSERT OR IGNORE INTO cosigned(epoch, round, mixer, node, batch_hash)"
                    " VALUES (?, ?, ?, ?, ?)", [(*r.key, batch_hash) for r in proposal.reports])
            return conflicts


__all__ = ["MixerStore"]

"""The mixer's SQLite state: its own reports and batches, what it co-signed, its rounds.

- ``rounds``: each round the mixer began: its VRF proof and output (``beta``), the nodes that
  output assigned it (``assigned_nodes``, a JSON list; ``assigned`` is their count) and
  whether the round is done.
- ``own_reports``: every report the mixer produced; ``batched`` is 0 until a proposal holds
  it, 1 once one does, -1 when its epoch closed before any did (it can never be certified).
- ``own_batches``: the outbox. Every proposal the mixer signed, its certificate once a quorum
  signed it, ``forwarded`` once the Validator acknowledged (or refused) the certificate, and
  ``given_up``: why the mixer stopped trying to certify it (re-formed without refused
  reports, or its epoch closed).
- ``cosigned``: for each report key (epoch, round, mixer, node) it co-signed, the struct hash
  of that report (``report_hash``) and the first batch that carried it. A key is co-signed
  again only for the same report.
- ``watched``: each peer's batch the mixer co-signed, kept until the Validator is seen to hold
  it: when (``due``, Unix time) to look next, from when (``turn``) to forward it itself if the
  Validator still lacks it, and the proposal to do so (``outcome`` says how the watch ended;
  the proposal is dropped then, and the row once its epoch is closed).
- ``carried_states``: the ``EpochState`` the mixer computed for the start of each epoch (from
  the certificates of the epoch before, which it verified itself), with the root it computed
  for that epoch: the next settlement it signs starts from it, never from a replay.
- ``settlements_signed``: the one settlement (and its punishments) the mixer signed for each
  epoch, with what verifying it cost: it never signs another for that epoch.

Databases written before ``beta``, ``assigned_nodes``, ``batched``, ``given_up``,
``report_hash`` and ``watched.turn`` existed are migrated when opened (see
``MixerStore._migrate``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from dnanet.crypto import vrf
from dnanet.protocol.codec import canonical_json, parse_json
from dnanet.protocol.epoch import EpochState
from dnanet.protocol.messages import BatchProposal, QuorumCertificate, ScoreReport
from dnanet.service.store import Store

MIXER_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, vrf_proof BLOB NOT NULL,
    assigned INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    beta BLOB, assigned_nodes TEXT,
    PRIMARY KEY (epoch, round)
);
CREATE TABLE IF NOT EXISTS own_batches (
    batch_hash BLOB PRIMARY KEY, epoch INTEGER NOT NULL, round INTEGER NOT NULL,
    proposal_json BLOB NOT NULL, certificate_json BLOB, forwarded INTEGER NOT NULL DEFAULT 0,
    given_up TEXT
);
CREATE TABLE IF NOT EXISTS own_reports (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL,
    outcome INTEGER NOT NULL, score INTEGER NOT NULL, report_json BLOB NOT NULL,
    batched INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (epoch, round, node)
);
CREATE TABLE IF NOT EXISTS cosigned (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, mixer TEXT NOT NULL, node TEXT NOT NULL,
    batch_hash BLOB NOT NULL, report_hash BLOB,
    PRIMARY KEY (epoch, round, mixer, node)
);
CREATE TABLE IF NOT EXISTS watched (
    batch_hash BLOB PRIMARY KEY, epoch INTEGER NOT NULL, round INTEGER NOT NULL,
    mixer TEXT NOT NULL, proposal_json BLOB, due REAL NOT NULL, turn REAL, outcome TEXT
);
CREATE TABLE IF NOT EXISTS settlements_signed (
    epoch INTEGER PRIMARY KEY, settlement_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS carried_states (
    epoch INTEGER PRIMARY KEY, state_json BLOB NOT NULL, previous_root BLOB
)
"""

ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rounds", "beta", "BLOB"),
    ("rounds", "assigned_nodes", "TEXT"),
    ("own_batches", "given_up", "TEXT"),
    ("own_reports", "batched", "INTEGER NOT NULL DEFAULT 0"),
    ("cosigned", "report_hash", "BLOB"),
    ("watched", "turn", "REAL"),
    ("settlements_signed", "punishments_hash", "BLOB"),
    ("settlements_signed", "reports", "INTEGER"),
    ("settlements_signed", "verify_ms", "INTEGER"),
    ("settlements_signed", "at", "REAL"),
)
"""Columns later releases added to the first schema: (table, column, declaration)."""

INDEXES = (
    # The outbox's pending work, small however long the mixer has run.
    "CREATE INDEX IF NOT EXISTS own_reports_unbatched ON own_reports(epoch, round)"
    " WHERE batched=0",
    "CREATE INDEX IF NOT EXISTS own_batches_pending ON own_batches(epoch)"
    " WHERE forwarded=0 AND given_up IS NULL",
    "CREATE INDEX IF NOT EXISTS watched_pending ON watched(due) WHERE outcome IS NULL",
)

BATCHED, NEVER_BATCHED = 1, -1
"""``own_reports.batched`` besides 0 (in no proposal yet): in one; its epoch closed first."""


class _Claimed(Exception):
    """A report of a new batch is in another batch already (the transaction rolls back)."""


class MixerStore(Store):
    """The mixer's database (see the module docstring): every query of its tables is here."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, MIXER_SCHEMA)
        with self.transaction() as db:
            self._migrate(db)
            for statement in INDEXES:
                db.execute(statement)
            # Verified reports of whole epochs were kept by earlier releases to replay
            # history; the carried state replaces them.
            db.execute("DROP TABLE IF EXISTS verified_epochs")

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the columns a database of an earlier release lacks (``CREATE TABLE IF NOT
        EXISTS`` leaves an existing table as it is) and fill them from what it kept:

        - ``rounds.beta`` from the stored VRF proof; ``assigned_nodes`` stays NULL (unknown);
        - ``own_reports.batched`` from the stored proposals (a report in none is certified by
          the outbox, like one saved just before a crash);
        - ``cosigned.report_hash`` stays NULL: such a key is co-signed again only in the very
          batch that first carried it (the earlier rule), as the report itself was not kept.
        """
        for table, column, declaration in ADDED_COLUMNS:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column in columns:
                continue
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            if (table, column) == ("rounds", "beta"):
                rows = db.execute("SELECT epoch, round, vrf_proof FROM rounds"
                                  " WHERE length(vrf_proof) > 0").fetchall()
                db.executemany("UPDATE rounds SET beta=? WHERE epoch=? AND round=?",
                               [(vrf.proof_to_hash(bytes(p)), e, r) for e, r, p in rows])
            elif (table, column) == ("own_reports", "batched"):
                for (proposal_json,) in db.execute(
                        "SELECT proposal_json FROM own_batches").fetchall():
                    proposal = BatchProposal.from_json(proposal_json)
                    db.executemany(
                        "UPDATE own_reports SET batched=? WHERE epoch=? AND round=? AND node=?",
                        [(BATCHED, r.epoch, r.round, r.node) for r in proposal.reports])

    # -- rounds -----------------------------------------------------------------------------------
    def round_done(self, epoch: int, round_: int) -> bool:
        row = self.one("SELECT done FROM rounds WHERE epoch=? AND round=?", (epoch, round_))
        return bool(row and row[0])

    def newest_round(self) -> tuple[int, int] | None:
        """(epoch, round) of the newest round begun, or None before the first."""
        row = self.one("SELECT epoch, round FROM rounds ORDER BY epoch DESC, round DESC LIMIT 1")
        return None if row is None else (int(row[0]), int(row[1]))

    def unfinished_rounds(self) -> list[tuple[int, int]]:
        """(epoch, round) of the rounds begun and not finished (the mixer stopped in them),
        oldest first."""
        return [(int(e), int(r)) for e, r in self.query(
            "SELECT epoch, round FROM rounds WHERE done=0 ORDER BY epoch, round")]

    def begin_round(self, epoch: int, round_: int, proof: bytes, beta: bytes,
                    assigned: Sequence[str]) -> None:
        """Record the round's VRF proof and output and the nodes it assigned (empty proof and
        output when the mixer is not in the epoch's set)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO rounds(epoch, round, vrf_proof, assigned, beta,"
                       " assigned_nodes) VALUES (?, ?, ?, ?, ?, ?)",
                       (epoch, round_, proof, len(assigned), beta or None,
                        json.dumps(list(assigned))))

    def finish_round(self, epoch: int, round_: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE rounds SET done=1 WHERE epoch=? AND round=?", (epoch, round_))

    def recent_rounds(self, limit: int) -> list[
            tuple[int, int, bytes | None, list[str] | None, int, bool]]:
        """The latest rounds, newest first: (epoch, round, beta, assigned nodes (None when
        recorded before they were kept), their count, done)."""
        rows = self.query("SELECT epoch, round, beta, assigned_nodes, assigned, done FROM rounds"
                          " ORDER BY epoch DESC, round DESC LIMIT ?", (limit,))
        return [(e, r, None if b is None else bytes(b), None if a is None else json.loads(a),
                 n, bool(d)) for e, r, b, a, n, d in rows]

    # -- own reports ------------------------------------------------------------------------------
    def save_reports(self, reports: Sequence[ScoreReport]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO own_reports(epoch, round, node, outcome, score, report_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(r.epoch, r.round, r.node, r.outcome, r.score, r.to_json()) for r in reports],
            )

    def latest_reports(self, limit: int) -> list[ScoreReport]:
        """The mixer's newest own reports (for the gateway's view of each node)."""
        rows = self.query("SELECT report_json FROM own_reports ORDER BY epoch DESC, round DESC"
                          " LIMIT ?", (limit,))
        return [ScoreReport.from_json(r[0]) for r in rows]

    def own_reports(self, epoch: int, round_: int) -> list[ScoreReport]:
        rows = self.query("SELECT report_json FROM own_reports WHERE epoch=? AND round=?",
                          (epoch, round_))
        return [ScoreReport.from_json(r[0]) for r in rows]

    def unbatched_reports(self, epoch: int, round_: int) -> list[ScoreReport]:
        """The round's own reports that no proposal holds yet."""
        rows = self.query("SELECT report_json FROM own_reports WHERE epoch=? AND round=?"
                          " AND batched=0", (epoch, round_))
        return [ScoreReport.from_json(r[0]) for r in rows]

    def unbatched_rounds(self) -> list[tuple[int, int, int]]:
        """(epoch, round, count) of every round with own reports in no proposal."""
        rows = self.query("SELECT epoch, round, count(*) FROM own_reports WHERE batched=0"
                          " GROUP BY epoch, round ORDER BY epoch, round")
        return [(e, r, n) for e, r, n in rows]

    def drop_unbatched(self, epoch: int, round_: int) -> int:
        """Mark the round's unbatched reports as never to be certified; returns how many."""
        with self.transaction() as db:
            return db.execute("UPDATE own_reports SET batched=? WHERE epoch=? AND round=?"
                              " AND batched=0", (NEVER_BATCHED, epoch, round_)).rowcount

    # -- own batches: the outbox ----------------------------------------------------------------
    def save_proposal(self, proposal: BatchProposal, *, replaces: bytes | None = None,
                      why: str = "") -> bool:
        """Save a signed proposal and mark its reports batched, in one transaction; with
        ``replaces``, give that (uncertified) batch up for ``why`` in the same transaction.

        A new batch (no ``replaces``) claims its reports: if any is in a batch already (two
        tasks raced for one round's reports), nothing is saved and it returns False."""
        b = proposal.batch
        try:
            with self.transaction() as db:
                claimed = 0
                for r in proposal.reports:
                    # A report not saved yet is saved as batched; a saved one is claimed.
                    claimed += db.execute(
                        "INSERT INTO own_reports(epoch, round, node, outcome, score, report_json,"
                        " batched) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (r.epoch, r.round, r.node, r.outcome, r.score, r.to_json(),
                         BATCHED)).rowcount or db.execute(
                        "UPDATE own_reports SET batched=? WHERE epoch=? AND round=? AND node=?"
                        + ("" if replaces is not None else " AND batched=0"),
                        (BATCHED, r.epoch, r.round, r.node)).rowcount
                if replaces is None and claimed != len(proposal.reports):
                    raise _Claimed
                db.execute("INSERT OR IGNORE INTO own_batches(batch_hash, epoch, round,"
                           " proposal_json) VALUES (?, ?, ?, ?)",
                           (b.hash_struct(), b.epoch, b.round, proposal.to_json()))
                if replaces is not None:
                    db.execute("UPDATE own_batches SET given_up=? WHERE batch_hash=?"
                               " AND certificate_json IS NULL", (why, replaces))
        except _Claimed:
            return False
        return True

    def save_certificate(self, certificate: QuorumCertificate) -> None:
        with self.transaction() as db:
            db.execute("UPDATE own_batches SET certificate_json=? WHERE batch_hash=?",
                       (certificate.to_json(), certificate.batch.hash_struct()))

    def mark_forwarded(self, batch_hash: bytes, why: str | None = None) -> None:
        """The outbox is done with this certificate: the Validator acknowledged it, or
        (``why``; unless it was acknowledged meanwhile) refused it or can no longer take it."""
        with self.transaction() as db:
            if why is None:
                db.execute("UPDATE own_batches SET forwarded=1, given_up=NULL"
                           " WHERE batch_hash=?", (batch_hash,))
            else:
                db.execute("UPDATE own_batches SET forwarded=1, given_up=? WHERE batch_hash=?"
                           " AND forwarded=0", (why, batch_hash))

    def give_up(self, batch_hash: bytes, why: str) -> None:
        """Stop trying to certify a batch (unless it was certified meanwhile)."""
        with self.transaction() as db:
            db.execute("UPDATE own_batches SET given_up=? WHERE batch_hash=?"
                       " AND certificate_json IS NULL AND given_up IS NULL", (why, batch_hash))

    def batch_state(self, batch_hash: bytes) -> str | None:
        """``uncertified`` (waiting for a quorum), ``unforwarded`` (waiting for the
        Validator), ``done`` (acknowledged or given up), or None for an unknown batch."""
        row = self.one("SELECT certificate_json IS NULL, forwarded, given_up IS NOT NULL"
                       " FROM own_batches WHERE batch_hash=?", (batch_hash,))
        if row is None:
            return None
        no_certificate, forwarded, given_up = row
        if forwarded or given_up:
            return "done"
        return "uncertified" if no_certificate else "unforwarded"

    def unforwarded(self) -> list[QuorumCertificate]:
        rows = self.query("SELECT certificate_json FROM own_batches"
                          " WHERE certificate_json IS NOT NULL AND forwarded=0"
                          " AND given_up IS NULL ORDER BY epoch, round")
        return [QuorumCertificate.from_json(r[0]) for r in rows]

    def uncertified(self) -> list[BatchProposal]:
        rows = self.query("SELECT proposal_json FROM own_batches WHERE certificate_json IS NULL"
                          " AND forwarded=0 AND given_up IS NULL ORDER BY epoch, round")
        return [BatchProposal.from_json(r[0]) for r in rows]

    def outbox_counts(self) -> dict[str, int]:
        """How many batches wait for a quorum, certificates for the Validator, and how many
        the mixer gave up on."""
        (uncertified, unforwarded, given_up), = self.query(
            "SELECT coalesce(sum(certificate_json IS NULL AND forwarded=0 AND given_up IS NULL),"
            " 0), coalesce(sum(certificate_json IS NOT NULL AND forwarded=0 AND given_up IS"
            " NULL), 0), coalesce(sum(given_up IS NOT NULL), 0) FROM own_batches")
        (unbatched,), = self.query("SELECT count(*) FROM own_reports WHERE batched=0")
        return {"uncertified": int(uncertified), "unforwarded": int(unforwarded),
                "given_up": int(given_up), "unbatched_reports": int(unbatched)}

    # -- co-signing -------------------------------------------------------------------------------
    def record_cosigned(self, proposal: BatchProposal,
                        watch: tuple[float, float] | None = None) -> list[int]:
        """Record the batch's report keys; returns the indices of reports whose key was
        already co-signed for a different report (those must be refused). The same report in
        another batch (a re-formed one) is no conflict. Nothing is recorded if any conflicts.
        With ``watch`` (when to look first, when its turn to forward comes), the batch is
        watched from then on (see ``due_watches``), in the same transaction.

        A key recorded before report hashes were kept (``report_hash`` NULL) conflicts with
        any batch but the one that first carried it."""
        batch_hash = proposal.batch.hash_struct()
        with self.transaction() as db:
            conflicts = []
            rows = []
            for i, r in enumerate(proposal.reports):
                report_hash = r.hash_struct()
                row = db.execute("SELECT report_hash, batch_hash FROM cosigned WHERE epoch=?"
                                 " AND round=? AND mixer=? AND node=?", r.key).fetchone()
                if row is None:
                    rows.append((*r.key, batch_hash, report_hash))
                elif (bytes(row[0]) != report_hash if row[0] is not None
                      else bytes(row[1]) != batch_hash):
                    conflicts.append(i)
            if not conflicts:
                db.executemany(
                    "INSERT OR IGNORE INTO cosigned(epoch, round, mixer, node, batch_hash,"
                    " report_hash) VALUES (?, ?, ?, ?, ?, ?)", rows)
                if watch is not None:
                    batch = proposal.batch
                    db.execute("INSERT OR IGNORE INTO watched(batch_hash, epoch, round, mixer,"
                               " proposal_json, due, turn) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (batch_hash, batch.epoch, batch.round, batch.mixer,
                                proposal.to_json(), *watch))
            return conflicts

    def has_cosigned(self, batch_hash: bytes) -> bool:
        """Whether this mixer verified and co-signed this very batch (while its epoch is
        open: the record goes once the epoch is closed)."""
        return self.one("SELECT 1 FROM watched WHERE batch_hash=?", (batch_hash,)) is not None

    # -- watched peers' batches -------------------------------------------------------------------
    def due_watches(self, now: float, limit: int) -> list[tuple[BatchProposal, float]]:
        """Watched batches whose time to look has come, oldest first, each with the time its
        turn to forward comes."""
        rows = self.query("SELECT proposal_json, coalesce(turn, due) FROM watched"
                          " WHERE outcome IS NULL AND due<=? ORDER BY due LIMIT ?", (now, limit))
        return [(BatchProposal.from_json(r[0]), float(r[1])) for r in rows]

    def prune_watches(self, through_epoch: int) -> int:
        """Forget ended watches of epochs up to ``through_epoch`` (closed ones); how many."""
        with self.transaction() as db:
            return db.execute("DELETE FROM watched WHERE outcome IS NOT NULL AND epoch<=?",
                              (through_epoch,)).rowcount

    def postpone_watch(self, batch_hash: bytes, due: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE watched SET due=? WHERE batch_hash=? AND outcome IS NULL",
                       (due, batch_hash))

    def end_watch(self, batch_hash: bytes, outcome: str) -> None:
        """Stop watching a batch, saying why; its proposal is no longer kept."""
        with self.transaction() as db:
            db.execute("UPDATE watched SET outcome=?, proposal_json=NULL WHERE batch_hash=?"
                       " AND outcome IS NULL", (outcome, batch_hash))

    def watch_outcome(self, batch_hash: bytes) -> str | None:
        """How watching the batch ended; None while it goes on (or if it is not watched)."""
        row = self.one("SELECT outcome FROM watched WHERE batch_hash=?", (batch_hash,))
        return None if row is None else row[0]

    def watching(self) -> int:
        (count,), = self.query("SELECT count(*) FROM watched WHERE outcome IS NULL")
        return int(count)

    # -- settlements --------------------------------------------------------------------------
    def carried_state(self, epoch: int) -> tuple[EpochState, bytes | None] | None:
        """The state this mixer computed for the start of ``epoch`` and the root it computed
        for ``epoch - 1`` (None for epoch 0); genesis for epoch 0; None if not computed."""
        row = self.one("SELECT state_json, previous_root FROM carried_states WHERE epoch=?",
                       (epoch,))
        if row is None:
            return (EpochState(), None) if epoch == 0 else None
        state = EpochState.from_wire(parse_json(bytes(row[0]), max_bytes=1 << 30))
        return state, None if row[1] is None else bytes(row[1])

    def latest_carried_epoch(self, before: int) -> int:
        """The newest epoch ``<= before`` this mixer has a carried state for (0: genesis)."""
        row = self.one("SELECT MAX(epoch) FROM carried_states WHERE epoch<=?", (before,))
        return 0 if row is None or row[0] is None else int(row[0])

    def save_carried_state(self, state: EpochState, previous_root: bytes) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO carried_states(epoch, state_json, previous_root)"
                       " VALUES (?, ?, ?)",
                       (state.epoch, canonical_json(state.to_wire()), previous_root))

    def forget_carried_states(self, from_epoch: int) -> int:
        """Drop the carried states of ``from_epoch`` on (they followed a root the chain did
        not settle); how many."""
        with self.transaction() as db:
            return db.execute("DELETE FROM carried_states WHERE epoch>=?",
                              (from_epoch,)).rowcount

    def signed_settlement(self, epoch: int) -> tuple[bytes, bytes | None] | None:
        """(settlement hash, punishments hash) this mixer signed for ``epoch``, or None."""
        row = self.one("SELECT settlement_hash, punishments_hash FROM settlements_signed"
                       " WHERE epoch=?", (epoch,))
        return None if row is None else (bytes(row[0]), None if row[1] is None else bytes(row[1]))

    def record_signed_settlement(self, epoch: int, settlement_hash: bytes,
                                 punishments_hash: bytes, reports: int, verify_ms: int,
                                 at: float) -> bool:
        """Record the settlement signed for ``epoch``; False (nothing written) if another one
        was recorded first."""
        with self.transaction() as db:
            row = db.execute("SELECT settlement_hash, punishments_hash FROM settlements_signed"
                             " WHERE epoch=?", (epoch,)).fetchone()
            if row is not None:
                return (bytes(row[0]), None if row[1] is None else bytes(row[1])) == (
                    settlement_hash, punishments_hash)
            db.execute("INSERT INTO settlements_signed(epoch, settlement_hash, punishments_hash,"
                       " reports, verify_ms, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (epoch, settlement_hash, punishments_hash, reports, verify_ms, at))
            return True

    def recent_settlements(self, limit: int) -> list[dict[str, object]]:
        """The newest settlements signed: epoch, reports verified, CPU ms it took."""
        rows = self.query("SELECT epoch, settlement_hash, reports, verify_ms, at FROM"
                          " settlements_signed ORDER BY epoch DESC LIMIT ?", (limit,))
        return [{"epoch": e, "settlement_hash": "0x" + bytes(h).hex(), "reports": n,
                 "verify_ms": ms, "at": at} for e, h, n, ms, at in rows]


__all__ = ["BATCHED", "NEVER_BATCHED", "MixerStore"]

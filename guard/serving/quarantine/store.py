"""The quarantine's store: one SQLite database in WAL mode, append-only, capped in bytes.

Why SQLite: it is in the standard library, a commit is atomic and survives a crash of the process
(and with synchronous=FULL, of the host), a reader (`guard quarantine list|export`) never blocks the
writer, and the file checks itself (`PRAGMA integrity_check`). One transaction per batch amortises
the fsync: benchmarks/quarantine.py measures what that sustains on a host.

Durability: `synchronous = FULL`. In WAL mode NORMAL already survives the process being killed
(the commit is in the WAL file, which the OS holds); only FULL fsyncs the WAL at every commit, so
that a commit also survives a power cut or kernel crash. A record counts as written
(`guard_quarantine_records_total`) only once its batch's COMMIT has returned, so under FULL every
counted record is on stable storage: "acknowledged-durable" (docs/quarantine.md).

The cap: after each batch's inserts, the oldest records are deleted in the same transaction until
what the records hold (`records.size`: inputs and text fields) is at most `max_bytes` again. SQLite
reuses the freed pages, so the file stays near the cap (plus page overhead and the WAL, which is
checkpointed every 1000 pages and truncated to JOURNAL_LIMIT).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from guard.protocol.errors import GuardError
from guard.serving.quarantine.records import Entry, Input, Stored

FILENAME = "quarantine.sqlite3"
SCHEMA_VERSION = 1
JOURNAL_LIMIT = 64 << 20
BUSY_TIMEOUT_MS = 10_000
"""How long a write waits for another writer (a second gateway on the same directory) before it
fails; the failed batch is counted as dropped (reason write_error)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids of deleted records are never reused
    time REAL NOT NULL,                    -- wall clock, seconds since the epoch
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    score REAL NOT NULL,
    flagged_by TEXT NOT NULL,              -- comma-separated detector names
    scores TEXT NOT NULL,                  -- JSON object: detector -> raw score
    identity TEXT NOT NULL,
    request_id TEXT NOT NULL,
    predicted TEXT,                        -- JSON list: the model's class per row, or NULL
    size INTEGER NOT NULL                  -- bytes counted against the cap
);
CREATE INDEX IF NOT EXISTS records_by_model ON records (model, id);
CREATE TABLE IF NOT EXISTS inputs (
    record_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    datatype TEXT NOT NULL,                -- KServe v2 datatype
    shape TEXT NOT NULL,                   -- JSON list, batch dimension included
    data BLOB NOT NULL,                    -- raw contents as on the v2 wire
    PRIMARY KEY (record_id, position)
);
"""

SYNCHRONOUS = {"FULL": "FULL", "NORMAL": "NORMAL"}
_COLUMNS = "id, time, model, version, verdict, score, flagged_by, scores, identity, request_id, predicted, size"


class NotAQuarantine(GuardError):
    """The directory holds no quarantine database, one this version cannot read, or none can be
    made there: one line naming the directory (guard serve stops before it serves)."""

    status = "FAILED_PRECONDITION"


class QuarantineStore:
    def __init__(self, connection: sqlite3.Connection, path: Path, max_bytes: int | None):
        self._db, self.path, self.max_bytes = connection, path, max_bytes
        self.stored_bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0])
        """What the records hold now; kept in step by append (one writer)."""

    @classmethod
    def open(
        cls, directory: Path, max_bytes: int | None = None, create: bool = True, synchronous: str = "FULL"
    ) -> QuarantineStore:
        """The store in `directory`; created there when `create` (the gateway), else it must exist (the
        command line). max_bytes: the cap appends keep to (None: appends are not expected).
        synchronous: FULL (see the module docstring); benchmarks/quarantine.py compares NORMAL."""
        path = Path(directory) / FILENAME
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise NotAQuarantine(f"{directory}: no quarantine database ({FILENAME}) there")
            # Autocommit mode: transactions are the explicit BEGIN/COMMIT of append. The connection
            # moves to the writer thread once opened and is used by that thread alone.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise NotAQuarantine(f"{directory}: cannot open a quarantine database there ({exc})") from None
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {SYNCHRONOUS[synchronous]}")
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_LIMIT}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and create:
                with _transaction(db):
                    db.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            elif version != SCHEMA_VERSION:
                raise NotAQuarantine(f"{path}: not a quarantine database of this version (user_version {version})")
            return cls(db, path, max_bytes)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise NotAQuarantine(f"{path}: not a readable quarantine database ({exc})") from None
        except BaseException:
            db.close()
            raise

    def append(self, entries: list[Entry]) -> tuple[list[int], int]:
        """Insert `entries` in one transaction, then delete the oldest records while over the cap;
        returns the new ids and how many old records were deleted. Nothing is written unless it
        all commits."""
        db = self._db
        ids, added = [], 0
        with _transaction(db):
            db.execute("BEGIN IMMEDIATE")
            for entry in entries:
                cursor = db.execute(
                    "INSERT INTO records (time, model, version, verdict, score, flagged_by, scores, identity,"
                    " request_id, predicted, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.time,
                        entry.model,
                        entry.version,
                        entry.verdict,
                        entry.score,
                        entry.flagged_by,
                        entry.scores,
                        entry.identity,
                        entry.request_id,
                        entry.predicted,
                        entry.size,
                    ),
                )
                record_id = cursor.lastrowid
                assert record_id is not None  # an INSERT into a rowid table
                db.executemany(
                    "INSERT INTO inputs (record_id, position, name, datatype, shape, data) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (record_id, i, x.name, x.datatype, json.dumps(list(x.shape)), x.data)
                        for i, x in enumerate(entry.inputs)
                    ],
                )
                ids.append(record_id)
                added += entry.size
            evicted, freed = self._evict(self.stored_bytes + added)
            db.execute("COMMIT")
        self.stored_bytes += added - freed
        return ids, evicted

    def _evict(self, total: int) -> tuple[int, int]:
        """Delete the oldest records until `total` is at most the cap; (records, bytes) deleted."""
        if self.max_bytes is None or total <= self.max_bytes:
            return 0, 0
        excess = total - self.max_bytes
        # The first id at which the running total of sizes, oldest first, covers the excess.
        row = self._db.execute(
            "SELECT id, freed FROM (SELECT id, SUM(size) OVER (ORDER BY id) AS freed FROM records)"
            " WHERE freed >= ? ORDER BY id LIMIT 1",
            (excess,),
        ).fetchone()
        last, freed = row
        count = self._db.execute("DELETE FROM records WHERE id <= ?", (last,)).rowcount
        self._db.execute("DELETE FROM inputs WHERE record_id <= ?", (last,))
        return count, int(freed)

    def records(self, model: str | None = None, with_inputs: bool = True) -> Iterator[Stored]:
        """Stored records, oldest first (of one model when given), read as they are iterated."""
        where, args = ("WHERE model = ?", (model,)) if model is not None else ("", ())
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM records {where} ORDER BY id", args).fetchall():
            inputs = self._inputs(row[0], with_inputs)
            yield Stored(
                id=row[0],
                time=row[1],
                model=row[2],
                version=row[3],
                verdict=row[4],
                score=row[5],
                flagged_by=tuple(n for n in row[6].split(",") if n),
                scores=json.loads(row[7]),
                identity=row[8],
                request_id=row[9],
                predicted=None if row[10] is None else json.loads(row[10]),
                size=row[11],
                inputs=inputs,
            )

    def _inputs(self, record_id: int, contents: bool) -> tuple[Input, ...]:
        """A record's inputs; without `contents` their data is left empty (listing reads no blobs)."""
        rows = self._db.execute(
            f"SELECT name, datatype, shape, {'data' if contents else 'NULL'} FROM inputs WHERE record_id = ?"
            " ORDER BY position",
            (record_id,),
        )
        return tuple(
            Input(name, datatype, tuple(json.loads(shape)), bytes(data or b"")) for name, datatype, shape, data in rows
        )

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM records WHERE model = ?", (model,)).fetchone()[0])

    def models(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT model FROM records ORDER BY model")]

    def integrity(self) -> str:
        """SQLite's own check of every page and index: "ok" when the file is sound."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Rolls back a transaction a failure left open, so the connection stays usable."""
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise

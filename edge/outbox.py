"""The durable outbox: every message the agent sends to Kafka is first a row in SQLite.

SQLite in WAL mode, one connection shared by the worker thread (:meth:`Outbox.append`) and the
forwarder thread (:meth:`Outbox.peek`, :meth:`Outbox.delete`) under a lock; no call blocks for
longer than one transaction. Rows get increasing ids (``AUTOINCREMENT``: never reused, even
after the newest row is deleted), and are drained in id order.

Durability: with ``synchronous=FULL`` (the default) a commit returns only after the WAL is
fsynced, so a row that :meth:`append` returned for survives ``kill -9`` and a power cut. With
``NORMAL`` it survives ``kill -9`` (the WAL is in the OS page cache) but the last commits may
roll back on power loss. The agent commits once per tick, not per row, so FULL costs one fsync
per tick.

Bound: ``max_bytes`` bounds the stored payload bytes (key + value), not the file size (SQLite
pages and the WAL add overhead). When a row does not fit, older rows of a lower priority are
shed first (telemetry, then escalations, then dead letters), oldest first; a telemetry row or dead letter may
also shed an older row of its own kind; an anomaly never sheds another anomaly: when only
anomalies are left, the new one is refused. Everything shed or refused is counted by kind.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["telemetry", "escalation", "deadletter", "status", "anomaly"]
KINDS: tuple[Kind, ...] = ("telemetry", "escalation", "deadletter", "status", "anomaly")  # shed in this order
PRIORITY: dict[str, int] = {k: i for i, k in enumerate(KINDS)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind_id ON outbox (kind, id);
"""


@dataclass(frozen=True)
class Record:
    """A message to store: its kind (for shedding), Kafka topic, key and value."""

    kind: Kind
    topic: str
    key: bytes | None
    value: bytes

    @property
    def size(self) -> int:
        return len(self.value) + (len(self.key) if self.key else 0)


@dataclass(frozen=True)
class Row:
    """A stored record with its id, in drain order."""

    id: int
    kind: Kind
    topic: str
    key: bytes | None
    value: bytes


@dataclass
class AppendResult:
    stored: int = 0
    shed_rows: Counter[str] = field(default_factory=Counter)   # by kind: older rows deleted plus new rows refused
    shed_bytes: Counter[str] = field(default_factory=Counter)


class Outbox:
    """A bounded, durable FIFO of :class:`Record` in one SQLite file."""

    def __init__(self, path: Path | str, *, max_bytes: int, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OSError(f"{self.path}: SQLite refused WAL mode (got {mode})")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._rows = int(rows)
        self._bytes = int(size)
        self.shed_rows: Counter[str] = Counter()
        self.shed_bytes: Counter[str] = Counter()

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, records: Sequence[Record]) -> AppendResult:
        """Store ``records`` in one transaction, shedding as the module describes.

        Returns once the transaction is committed (durable per the sync policy); raises
        :class:`sqlite3.Error` if the disk refuses, in which case nothing of it was stored.
        """
        result = AppendResult()
        if not records:
            return result
        now = self._clock()
        with self._lock:
            rows, size = self._rows, self._bytes
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for rec in records:
                    need = size + rec.size - self.max_bytes
                    if need > 0:
                        freed_rows, freed = self._shed(rec, need, result)
                        rows -= freed_rows
                        size -= freed
                        if size + rec.size > self.max_bytes:
                            result.shed_rows[rec.kind] += 1
                            result.shed_bytes[rec.kind] += rec.size
                            continue
                    self._db.execute("INSERT INTO outbox (kind, topic, key, value, size, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                                     (rec.kind, rec.topic, rec.key, rec.value, rec.size, now))
                    rows += 1
                    size += rec.size
                    result.stored += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._rows, self._bytes = rows, size
            self.shed_rows.update(result.shed_rows)
            self.shed_bytes.update(result.shed_bytes)
        return result

    def _shed(self, rec: Record, need: int, result: AppendResult) -> tuple[int, int]:
        """Delete the oldest rows the new record may displace until ``need`` bytes are free."""
        victims = [k for k in KINDS if PRIORITY[k] < PRIORITY[rec.kind]]
        if rec.kind != "anomaly":
            victims.append(rec.kind)
        if rec.size > self.max_bytes:
            return 0, 0
        freed_rows = freed = 0
        for kind in victims:
            if freed >= need:
                break
            ids: list[int] = []
            got = 0
            for row_id, size in self._db.execute("SELECT id, size FROM outbox WHERE kind = ? ORDER BY id", (kind,)):
                ids.append(row_id)
                got += size
                if freed + got >= need:
                    break
            if ids:
                self._db.execute("DELETE FROM outbox WHERE kind = ? AND id <= ?", (kind, ids[-1]))
                result.shed_rows[kind] += len(ids)
                result.shed_bytes[kind] += got
                freed_rows += len(ids)
                freed += got
        return freed_rows, freed

    def peek(self, limit: int) -> list[Row]:
        """The oldest ``limit`` rows, in id order, without removing them."""
        with self._lock:
            cur = self._db.execute("SELECT id, kind, topic, key, value FROM outbox ORDER BY id LIMIT ?", (limit,))
            return [Row(int(i), k, t, bytes(key) if key is not None else None, bytes(v)) for i, k, t, key, v in cur]

    def delete(self, ids: Sequence[int]) -> int:
        """Remove rows the broker acknowledged; ids already shed are ignored. Returns rows removed."""
        if not ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = freed = 0
                for start in range(0, len(ids), 500):
                    chunk = list(ids[start: start + 500])
                    marks = ",".join("?" * len(chunk))
                    n, size = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",
                                               chunk).fetchone()
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                    removed += int(n)
                    freed += int(size)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._rows -= removed
            self._bytes -= freed
            return removed

    def count_by_kind(self) -> dict[str, int]:
        with self._lock:
            return {k: int(n) for k, n in self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The incident store: events keyed by ``event_id``, incidents, the alert and dead-letter outboxes,
per-partition progress and per-device state; SQLite (default) or PostgreSQL behind one class.

Both backends speak the same SQL through a DB-API connection in autocommit mode with explicit
``BEGIN``/``COMMIT``; only the connection, the paramstyle and the row lock differ
(:mod:`cloud.processor.backends`). Not thread-safe: one store object per thread. Every method
may block on the database and raises the driver's errors unchanged (the consumer loop counts
them as store errors and retries the batch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from cloud.processor import schema
from edge.contract import ConfigError

log = logging.getLogger(__name__)
MIGRATION_LOCK = 0x6564676577  # pg_advisory_xact_lock key for schema migrations ('edgew')

INCIDENT_COLUMNS = (
    "incident_id", "kind", "site", "device_id", "device_ids", "opened_at", "closed_at", "last_event_at", "event_count",
    "max_score", "model_name", "model_version", "statistic", "observed", "expected", "detail", "label", "labelled_at",
)
EVENT_COLUMNS = (
    "event_id", "device_id", "window_end", "score", "payload", "topic", "kafka_partition", "kafka_offset", "late", "ingested_at",
)
HELD_ALERT_MAX_S = 600.0  # the longest the outbox leaves an alert held for escalation verdicts (cloud.processor.verdicts)
LABELS = ("true_positive", "false_positive", "new_normal")  # new_normal: real, and accepted as the device's normal from then on
PG_INCIDENT_TYPES = {c: "float8" for c in ("opened_at", "closed_at", "last_event_at", "max_score", "observed", "expected", "updated_at")}
PG_INCIDENT_TYPES["event_count"] = "integer"
# PostgreSQL types of EVENT_COLUMNS, for binary COPY (no text formatting and escaping of every value)
PG_EVENT_TYPES = ["text", "text", "float8", "float8", "text", "text", "int4", "int8", "int4", "float8"]


class DuplicateEvents(Exception):
    """``events_writer(expect_new=True)`` met an ``event_id`` already stored: roll the transaction back."""


@dataclass(frozen=True)
class IncidentRow:
    """One incident as stored: a device incident, a fleet incident over a site, or a drift signal."""

    incident_id: str
    kind: str
    site: str
    device_id: str
    device_ids: tuple[str, ...]
    opened_at: float
    closed_at: float | None
    last_event_at: float
    event_count: int
    max_score: float
    model_name: str = ""
    model_version: str = ""
    statistic: str = ""
    observed: float | None = None
    expected: float | None = None
    detail: str = ""
    label: str | None = None
    labelled_at: float | None = None


@dataclass
class PartitionRow:
    """Progress of one partition: ``version`` counts writes (cache check), ``watermark`` is event time."""

    topic: str
    partition: int
    version: int
    watermark: float | None
    next_offset: int


class Store:
    """SQL shared by the SQLite and PostgreSQL backends; see the module docstring."""

    def __init__(self, conn: Any, dialect: str, connect: Callable[[], Any] | None = None) -> None:
        self.conn = conn
        self.dialect = dialect
        self._connect = connect  # a new connection, for reconnect_if_lost
        self._in_tx = False

    def reconnect_if_lost(self) -> bool:
        """After a failed statement: if the server closed the connection (PostgreSQL restarted, the backend was
        terminated), open a new one; False if none was lost or the server still refuses (the next failure retries)."""
        if self._connect is None or not getattr(self.conn, "closed", False):
            return False
        try:
            self.conn = self._connect()
        except Exception as exc:  # noqa: BLE001  # the driver's connection error; the caller's retry comes back here
            log.warning("store_reconnect_failed error=%r", exc)
            return False
        log.warning("store_reconnected dialect=%s", self.dialect)
        return True

    # -- plumbing ---------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            return list(cur.fetchall()) if cur.description else []
        finally:
            cur.close()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur = self.conn.cursor()
            try:
                cur.executemany(self._sql(sql), rows)
            finally:
                cur.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit: commits on success, rolls back on any exception (re-raised)."""
        self.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        self._in_tx = True
        try:
            yield
        except BaseException:
            self._in_tx = False
            self.execute("ROLLBACK")
            raise
        self._in_tx = False
        self.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in force."""
        with self.transaction():
            if self.dialect == "postgres":
                # processors starting together would race on CREATE TABLE IF NOT EXISTS (PostgreSQL
                # raises a unique violation on its catalog); one migrates at a time
                self.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = self.execute("SELECT version FROM schema_version")
            current = int(rows[0][0]) if rows else 0
            latest = len(schema.MIGRATIONS)
            if current > latest:
                raise ConfigError(f"store schema version {current} is newer than this processor ({latest})")
            for version in range(current + 1, latest + 1):
                for stmt in schema.statements(self.dialect, version):
                    self.execute(stmt)
                log.info("store_migrated dialect=%s version=%d", self.dialect, version)
            if rows:
                self.execute("UPDATE schema_version SET version = ?", (latest,))
            else:
                self.execute("INSERT INTO schema_version (version) VALUES (?)", (latest,))
        return latest

    # -- inside a batch transaction -------------------------------------------------------------
    def lock_partition(self, topic: str, partition: int, now: float) -> PartitionRow:
        """Lock (creating if missing) the progress row of a partition until the transaction ends."""
        self.execute("INSERT INTO partitions (topic, kafka_partition, version, watermark, next_offset, updated_at) "
                     "VALUES (?, ?, 0, NULL, 0, ?) ON CONFLICT (topic, kafka_partition) DO NOTHING", (topic, partition, now))
        lock = " FOR UPDATE" if self.dialect == "postgres" else ""
        row = self.execute("SELECT version, watermark, next_offset FROM partitions WHERE topic = ? AND kafka_partition = ?"
                           + lock, (topic, partition))[0]
        return PartitionRow(topic, partition, int(row[0]), row[1], int(row[2]))

    def save_partition(self, row: PartitionRow, now: float) -> None:
        self.execute("UPDATE partitions SET version = ?, watermark = ?, next_offset = ?, updated_at = ? "
                     "WHERE topic = ? AND kafka_partition = ?",
                     (row.version, row.watermark, row.next_offset, now, row.topic, row.partition))

    def existing_event_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` already stored."""
        if self.dialect == "postgres":
            return {r[0] for r in self.execute("SELECT event_id FROM events WHERE event_id = ANY(?)", (list(ids),))} if ids else set()
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk))
        return found

    @contextmanager
    def events_writer(self, *, expect_new: bool = False) -> Iterator[Callable[[Sequence[Any]], None]]:
        """Inside: a function taking event rows (``EVENT_COLUMNS`` order) one at a time, inserted by the exit.

        An ``event_id`` already stored keeps its first row. ``expect_new``: the caller believes none is stored
        yet; if one is, :class:`DuplicateEvents` is raised and the transaction must be rolled back. No other
        statement may run inside. PostgreSQL with ``expect_new`` streams the rows into the table as they come
        (binary COPY), so the server inserts them while the caller works out the next; otherwise they are
        collected and inserted on leaving.
        """
        cur = self.conn.cursor()
        try:
            if self.dialect == "postgres" and expect_new:
                import psycopg

                try:
                    with _copy_events(cur, "events") as write:
                        yield write
                except psycopg.errors.UniqueViolation as exc:
                    raise DuplicateEvents(str(exc).splitlines()[0]) from None
                return
            rows: list[Sequence[Any]] = []
            yield rows.append
            if rows:
                inserted = self._insert_events(cur, rows)
                if expect_new and inserted != len(rows):
                    raise DuplicateEvents(f"{len(rows) - inserted} of {len(rows)} events already stored")
        finally:
            cur.close()

    def _insert_events(self, cur: Any, rows: list[Sequence[Any]]) -> int:
        """Insert, keeping rows whose ``event_id`` is stored already; returns how many were inserted."""
        # in event_id order: the id index takes random keys, and sorted ones walk it once instead of all over
        # (a third less insert time on SQLite)
        rows.sort(key=itemgetter(0))
        cols = ", ".join(EVENT_COLUMNS)
        if self.dialect == "postgres":  # COPY into a transaction-local staging table: ~2.5x faster than executemany
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS events_in (LIKE events) ON COMMIT DELETE ROWS")
            with _copy_events(cur, "events_in") as write:
                for row in rows:
                    write(row)
            cur.execute(f"INSERT INTO events ({cols}) SELECT {cols} FROM events_in ON CONFLICT (event_id) DO NOTHING")
        else:
            marks = ", ".join("?" * len(EVENT_COLUMNS))
            cur.executemany(f"INSERT INTO events ({cols}) VALUES ({marks}) ON CONFLICT (event_id) DO NOTHING", rows)
        return int(cur.rowcount)

    def insert_deadletters(self, rows: Sequence[tuple[str, int, int, str, str, bytes, float]]) -> None:
        self.executemany("INSERT INTO deadletters (topic, kafka_partition, kafka_offset, field, reason, payload, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING", rows)

    def load_device_states(self, topic: str, partition: int) -> dict[str, str]:
        rows = self.execute("SELECT device_id, state FROM device_state WHERE topic = ? AND kafka_partition = ?", (topic, partition))
        return {r[0]: r[1] for r in rows}

    def save_device_states(self, topic: str, partition: int, states: dict[str, str]) -> None:
        if self.dialect == "postgres":  # one statement over binary arrays: executemany costs a server round per row
            if states:
                self.execute("INSERT INTO device_state (topic, device_id, kafka_partition, state) "
                             "SELECT ?, d, ?, s FROM unnest(%b::text[], %b::text[]) AS u(d, s) "
                             "ON CONFLICT (topic, device_id) DO UPDATE SET kafka_partition = excluded.kafka_partition, "
                             "state = excluded.state", (topic, partition, list(states), list(states.values())))
            return
        self.executemany("INSERT INTO device_state (topic, device_id, kafka_partition, state) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (topic, device_id) DO UPDATE SET kafka_partition = excluded.kafka_partition, "
                         "state = excluded.state", [(topic, d, partition, s) for d, s in states.items()])

    def upsert_incidents(self, rows: Iterable[IncidentRow], now: float) -> None:
        """Insert or update incidents; an operator's label is never overwritten."""
        cols = [c for c in INCIDENT_COLUMNS if c not in ("label", "labelled_at")] + ["updated_at"]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
        values = []
        for r in rows:
            d = {c: getattr(r, c) for c in cols[:-1]}
            d["device_ids"] = json.dumps(list(r.device_ids))
            values.append((*d.values(), now))
        if self.dialect == "postgres":  # one statement over column arrays: executemany costs a server round per row
            if values:  # arrays sent in binary (%b): as text, every element is escaped by a regular expression
                types = ", ".join(f"%b::{PG_INCIDENT_TYPES.get(c, 'text')}[]" for c in cols)
                arrays = [[None if v is None else float(v) for v in col] if PG_INCIDENT_TYPES.get(c) == "float8" else list(col)
                          for c, col in zip(cols, zip(*values, strict=True), strict=True)]  # one Python type per array
                self.execute(f"INSERT INTO incidents ({', '.join(cols)}) SELECT * FROM unnest({types}) "
                             f"ON CONFLICT (incident_id) DO UPDATE SET {updates}", arrays)
            return
        self.executemany(f"INSERT INTO incidents ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                         f"ON CONFLICT (incident_id) DO UPDATE SET {updates}", values)

    def insert_alerts(self, rows: Sequence[tuple[str, str, str, str, float, str]], now: float,
                      held: frozenset[str] = frozenset()) -> None:
        """``rows``: (alert_id, incident_id, kind, action, event_time, payload); an alert id already stored is kept.
        Alerts of a kind in ``held`` wait for the escalation thread (gate ``held``): never published by the outbox."""
        self.executemany("INSERT INTO alerts (alert_id, incident_id, kind, action, event_time, payload, created_at, gate) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (alert_id) DO NOTHING", [(*r, now, "held" if r[2] in held else None) for r in rows])

    # -- outboxes ------------------------------------------------------------------------------
    def unpublished(self, table: str, limit: int = 10_000, created_before: float | None = None) -> list[tuple[Any, ...]]:
        """Oldest unpublished rows: alerts (id, incident, payload); dead letters (topic, partition, offset, field, reason, payload)."""
        before = "" if created_before is None else " AND created_at < ?"
        params: tuple[Any, ...] = (limit,) if created_before is None else (created_before, limit)
        if table == "alerts":  # a held alert waits for the escalation thread, HELD_ALERT_MAX_S at most (it may be down)
            held_before = created_before - HELD_ALERT_MAX_S if created_before is not None else -1e300
            sql = (f"SELECT alert_id, incident_id, payload FROM alerts WHERE published_at IS NULL{before} "
                   "AND (gate IS NULL OR gate <> 'held' OR created_at < ?) "
                   "ORDER BY created_at, event_time, action DESC, alert_id LIMIT ?")
            params = (*params[:-1], held_before, limit)
        else:
            sql = ("SELECT topic, kafka_partition, kafka_offset, field, reason, payload FROM deadletters "
                   f"WHERE published_at IS NULL{before} ORDER BY created_at, kafka_offset LIMIT ?")
        return self.execute(sql, params)

    def mark_published(self, table: str, keys: Sequence[Sequence[Any]], now: float) -> None:
        if not keys:
            return
        with self.transaction():
            if table == "alerts":
                self.executemany("UPDATE alerts SET published_at = ? WHERE alert_id = ?", [(now, k[0]) for k in keys])
            else:
                self.executemany("UPDATE deadletters SET published_at = ? WHERE topic = ? AND kafka_partition = ? AND kafka_offset = ?",
                                 [(now, *k[:3]) for k in keys])

    # -- fleet and queries -------------------------------------------------------------------------
    def partition_watermarks(self, topic: str) -> dict[int, float | None]:
        rows = self.execute("SELECT kafka_partition, watermark FROM partitions WHERE topic = ? AND kafka_partition >= 0", (topic,))
        return {int(r[0]): r[1] for r in rows}

    def active_sites(self, since: float) -> list[str]:
        rows = self.execute("SELECT DISTINCT site FROM incidents WHERE kind IN ('incident', 'fleet_incident') AND site <> '' "
                            "AND (closed_at IS NULL OR closed_at >= ?)", (since,))
        return sorted(r[0] for r in rows)

    def incidents(self, *, kind: str | None = None, site: str | None = None, open_only: bool = False,
                  closed_after: float | None = None, limit: int = 1000) -> list[IncidentRow]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for col, value in (("kind", kind), ("site", site)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        if open_only:
            where.append("closed_at IS NULL")
        if closed_after is not None:
            where.append("(closed_at IS NULL OR closed_at >= ?)")
            params.append(closed_after)
        rows = self.execute(f"SELECT {', '.join(INCIDENT_COLUMNS)} FROM incidents WHERE {' AND '.join(where)} "
                            f"ORDER BY opened_at, incident_id LIMIT ?", (*params, limit))
        return [_incident(r) for r in rows]

    def incident(self, incident_id: str) -> IncidentRow | None:
        rows = self.execute(f"SELECT {', '.join(INCIDENT_COLUMNS)} FROM incidents WHERE incident_id = ?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def label_incident(self, incident_id: str, label: str, now: float) -> bool:
        """Store an operator's verdict; returns False when no such incident exists."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        with self.transaction():
            found = self.execute("SELECT 1 FROM incidents WHERE incident_id = ?", (incident_id,))
            if found:
                self.execute("UPDATE incidents SET label = ?, labelled_at = ? WHERE incident_id = ?", (label, now, incident_id))
        return bool(found)

    def events_between(self, device_id: str, start: float, end: float, limit: int = 1000) -> list[dict[str, Any]]:
        """A device's events by window end: the event's fields (from its payload) and the row's columns."""
        rows = self.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE device_id = ? AND window_end >= ? "
                            "AND window_end <= ? ORDER BY window_end LIMIT ?", (device_id, start, end, limit))
        payload = EVENT_COLUMNS.index("payload")
        return [{**orjson.loads(r[payload]), **dict(zip(EVENT_COLUMNS, r, strict=True))} for r in rows]

    def count(self, table: str) -> int:
        assert table in ("events", "incidents", "alerts", "deadletters", "device_state", "partitions")
        return int(self.execute(f"SELECT COUNT(*) FROM {table}")[0][0])


@contextmanager
def _copy_events(cur: Any, table: str) -> Iterator[Callable[[Sequence[Any]], None]]:
    """Inside: ``write(row)`` COPYs event rows (``EVENT_COLUMNS`` order) into ``table``, PostgreSQL's binary format."""
    with cur.copy(f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(PG_EVENT_TYPES)
        yield copy.write_row


def _incident(r: Sequence[Any]) -> IncidentRow:
    d = dict(zip(INCIDENT_COLUMNS, r, strict=True))
    d["device_ids"] = tuple(json.loads(d["device_ids"]))
    d["event_count"] = int(d["event_count"])
    return IncidentRow(**d)

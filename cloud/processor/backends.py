"""Opening the store: a SQLite file (default) or a PostgreSQL database (psycopg 3).

Both connections run in autocommit mode; :class:`~cloud.processor.store.Store` issues
``BEGIN``/``COMMIT`` itself so the two backends share one transaction shape. SQLite runs in WAL
mode with a busy timeout, so several processor processes may share one file on one host.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloud.processor.config import StoreSection
from cloud.processor.store import Store
from edge.contract import ConfigError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60.0
SQLITE_CACHE_KIB = 64 * 1024
SQLITE_PAGE_BYTES = 16 * 1024
SQLITE_CHECKPOINT_BYTES = 40 * 1024 * 1024
SQLITE_CHECKPOINT_INTERVAL_S = 1.0


def open_store(section: StoreSection, *, migrate: bool = True) -> Store:
    """Connect to the configured backend and (by default) create or upgrade its schema.

    Raises :class:`ConfigError` when the backend cannot be reached with what the config says.
    """
    if section.backend == "sqlite":
        store = open_sqlite(Path(section.sqlite_path))
    else:
        store = open_postgres(section.postgres_dsn)
    if migrate:
        store.migrate()
    return store


def open_sqlite(path: Path) -> Store:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
    # a new file only (an existing one keeps its size): 16 KiB pages halve the commit time against 4 KiB (fewer
    # WAL frames for the pages a batch dirties all over the random event_id index)
    conn.execute(f"PRAGMA page_size={SQLITE_PAGE_BYTES}")
    # WAL: readers (the operator CLI) never block the processor; NORMAL sync keeps every committed
    # transaction across a process crash (SIGKILL), only an OS crash may lose the last ones.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # the event_id index takes random keys, so every batch dirties pages all over it: a page cache that holds
    # the indexes, and checkpoints every ~40 MB of WAL instead of every 4 MB (each one syncs the WAL and the
    # database file), made the processor 1.2-1.5x faster on bench/processor_throughput.py
    conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    store = Store(conn, "sqlite")
    store.execute(f"PRAGMA wal_autocheckpoint={_checkpoint_pages(store)}")
    return store


def _checkpoint_pages(store: Store) -> int:
    return SQLITE_CHECKPOINT_BYTES // int(store.execute("PRAGMA page_size")[0][0])


def open_postgres(dsn: str) -> Store:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("store.backend = 'postgres' needs psycopg: pip install 'psycopg[binary]'") from None

    def connect() -> Any:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)

    try:
        conn = connect()
    except psycopg.OperationalError as exc:
        raise ConfigError(f"store.postgres_dsn: cannot connect ({str(exc).strip().splitlines()[0]})") from None
    return Store(conn, "postgres", connect)


@contextmanager
def background_checkpoints(store: Store, interval_s: float = SQLITE_CHECKPOINT_INTERVAL_S) -> Iterator[None]:
    """While inside: a SQLite store's WAL is checkpointed by a thread of its own, not by the commits.

    SQLite's automatic checkpoint runs inside the commit that crosses ``wal_autocheckpoint`` pages: it
    copies the WAL into the database file and syncs both on the writer's time, 60 % of the processor's
    commit time. A PASSIVE checkpoint from a second connection blocks neither the writer nor readers, and
    the sqlite3 module lets go of the GIL while it runs. PostgreSQL (and an in-memory SQLite): nothing.
    """
    path = store.execute("PRAGMA database_list")[0][2] if store.dialect == "sqlite" else ""
    if not path:
        yield
        return
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # the next round tries again; the WAL only grows meanwhile
                log.warning("sqlite_checkpoint_failed path=%s error=%r", path, exc)

    store.execute("PRAGMA wal_autocheckpoint=0")
    thread = threading.Thread(target=loop, name="sqlite-checkpoint", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        conn.close()
        store.execute(f"PRAGMA wal_autocheckpoint={_checkpoint_pages(store)}")

"""Fixtures for the cloud tests: a real PostgreSQL server per session (Debian's package), one
fresh database per test, and ``store``: the processor's store on SQLite and on PostgreSQL.

A missing PostgreSQL skips locally with the reason; under ``CI=true`` it is a failure, the same
convention as the broker fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.processor.backends import open_postgres, open_sqlite
from cloud.processor.store import Store
from localdev.pgserver import LocalPostgres, missing
from tests.tools import unavailable


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    reason = missing()
    if reason:
        unavailable(reason)
    server = LocalPostgres().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: LocalPostgres, unique: str) -> str:
    """A DSN of an empty database for this test only."""
    return postgres_server.create_database(f"test_{unique}")


@pytest.fixture(params=["sqlite", "postgres"])
def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store without its schema, on each backend."""
    s = open_sqlite(tmp_path / "store.db") if request.param == "sqlite" else open_postgres(request.getfixturevalue("postgres_dsn"))
    yield s
    s.close()


@pytest.fixture
def store(empty_store: Store) -> Store:
    """A migrated store, on each backend (a test module may define its own ``store``)."""
    empty_store.migrate()
    return empty_store

"""Fixtures for the cloud tests: a real PostgreSQL server per session (Debian's package), one
fresh database per test.

A missing PostgreSQL skips locally with the reason; under ``CI=true`` it is a failure, the same
convention as the broker fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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

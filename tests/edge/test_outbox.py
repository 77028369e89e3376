"""The SQLite outbox: bound in bytes, shedding order, survival across reopen, drain order."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge.outbox import Outbox, Record


def rec(kind: str, n: int, size: int = 100) -> Record:
    value = f"{kind}-{n}|".encode().ljust(size, b".")
    return Record(kind, f"topic.{kind}", b"dev", value[:size - 3])  # type: ignore[arg-type]  # 3-byte key


def names(box: Outbox) -> list[str]:
    return [r.value.split(b"|")[0].decode() for r in box.peek(10_000)]


def test_wal_mode_and_sync_policy(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10_000)
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, synchronous="NORMAL")
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    box.close()


def test_drains_in_insertion_order_across_kinds_and_deletes_only_what_was_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=100_000, clock=lambda: 5.0)
    box.append([rec("anomaly", 0), rec("telemetry", 1), rec("deadletter", 2)])
    box.append([rec("anomaly", 3)])
    rows = box.peek(3)
    assert [r.kind for r in rows] == ["anomaly", "telemetry", "deadletter"]
    assert rows[0].topic == "topic.anomaly" and rows[0].key == b"dev"
    assert box.delete([rows[1].id]) == 1
    assert names(box) == ["anomaly-0", "deadletter-2", "anomaly-3"]
    assert box.rows == 3 and box.bytes == 300
    assert box.delete([rows[1].id]) == 0  # already gone: ignored


def test_ids_never_reused_after_deleting_the_newest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=100_000)
    box.append([rec("anomaly", 0), rec("anomaly", 1)])
    last = box.peek(2)[-1].id
    box.delete([last])
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=100_000)
    box.append([rec("anomaly", 2)])
    assert box.peek(10)[-1].id > last
    assert names(box) == ["anomaly-0", "anomaly-2"]


def test_bound_sheds_telemetry_first_then_deadletters_never_anomalies(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=1000)  # ten 100-byte rows
    box.append([rec("telemetry", i) for i in range(4)] + [rec("deadletter", i) for i in range(3)]
               + [rec("anomaly", i) for i in range(3)])
    assert box.rows == 10 and box.bytes == 1000
    r = box.append([rec("anomaly", 3), rec("anomaly", 4)])
    assert r.stored == 2 and r.shed_rows == {"telemetry": 2}
    assert names(box)[:2] == ["telemetry-2", "telemetry-3"]
    r = box.append([rec("anomaly", i) for i in range(5, 9)])
    assert r.shed_rows == {"telemetry": 2, "deadletter": 2} and r.shed_bytes == {"telemetry": 200, "deadletter": 200}
    assert names(box) == ["deadletter-2"] + [f"anomaly-{i}" for i in range(9)]
    # only anomalies and one dead letter left: a new dead letter sheds the older one ...
    r = box.append([rec("deadletter", 9)])
    assert r.shed_rows == {"deadletter": 1} and names(box)[-1] == "deadletter-9"
    # ... telemetry may not displace a dead letter or an anomaly: refused and counted
    r = box.append([rec("telemetry", 9)])
    assert r.stored == 0 and r.shed_rows == {"telemetry": 1}
    # an anomaly never sheds an anomaly; with the dead letter gone, the new anomaly is refused
    r = box.append([rec("anomaly", 9), rec("anomaly", 10)])
    assert r.stored == 1 and r.shed_rows == {"deadletter": 1, "anomaly": 1}
    assert names(box) == [f"anomaly-{i}" for i in range(10)]
    assert box.bytes <= 1000 and box.rows == 10
    assert box.shed_rows == {"telemetry": 5, "deadletter": 4, "anomaly": 1}


def test_record_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=4096)
    box.append([rec("telemetry", 0)])
    r = box.append([rec("anomaly", 1, size=5000)])
    assert r.stored == 0 and r.shed_rows == {"anomaly": 1} and names(box) == ["telemetry-0"]


def test_survives_reopen_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_bytes=100_000)
    box.append([rec("anomaly", i) for i in range(5)])
    box.delete([box.peek(1)[0].id])
    box.close()
    again = Outbox(path, max_bytes=100_000)
    assert again.rows == 4 and again.bytes == 400
    assert names(again) == [f"anomaly-{i}" for i in range(1, 5)]


KILL_SCRIPT = """
import os, signal, sys
from edge.outbox import Outbox, Record
box = Outbox(sys.argv[1], max_bytes=10**7)
for i in range(50):
    box.append([Record("anomaly", "t", None, f"event-{i}".encode())])
print("committed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_committed_rows_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == -9 and "committed" in out.stdout, out.stderr
    box = Outbox(path, max_bytes=10**7)
    assert [r.value for r in box.peek(100)] == [f"event-{i}".encode() for i in range(50)]


def test_a_failed_transaction_stores_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=100_000)
    box.append([rec("anomaly", 0)])
    bad = Record("anomaly", "t", None, None)  # type: ignore[arg-type]  # NOT NULL value
    with pytest.raises((sqlite3.Error, TypeError)):
        box.append([rec("anomaly", 1), bad])
    assert names(box) == ["anomaly-0"] and box.rows == 1 and box.bytes == 100

"""The telemetry archive against the real Kafka: Parquet per device and UTC day, each window once,
uncommitted flushes removed on reassignment, malformed windows dead-lettered, failures restarted."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

import cloud.processor.archive as archive_module
from cloud.processor.archive import Archive, ArchiveMetrics, remove_uncommitted, run_archive, write_flush
from edge.contract import encode_telemetry, telemetry_from_window
from tests.cloud.processor_streams import config
from tests.cloud.test_processor_kafka import caught_up, read_all
from tests.kafka_util import create_topic
from tests.tools import wait_for

DAY = 86_400.0
T0 = 1_764_201_600.0  # midnight UTC


def windows(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        start = T0 + (i % 2) * DAY + i * 10.0  # two UTC days
        out.append(encode_telemetry(telemetry_from_window(
            device_id=f"pump-{i % 3}", agent_id="agent-1", reason="sampled" if i % 4 else "anomaly_context",
            channels=["vibration", "pressure"], ts=[start, start + 1, start + 2],
            values=[[0.1 * i, 4.0], [0.2, 4.1], [0.3, 4.2]], score=0.5 + i, threshold=3.0, anomalous=i % 5 == 0,
            model_sha256="ab" * 32)))
    return out


def archive_setup(bootstrap: str, unique: str, tmp_path: Path, payloads: list[bytes], flush_rows: int) -> tuple[Any, str, Path]:
    """A telemetry topic (2 partitions) holding ``payloads``, and a processor config with the archive on."""
    topic = f"anomalies.{unique}"
    telemetry = f"{topic}.telemetry"
    create_topic(bootstrap, telemetry, partitions=2)
    create_topic(bootstrap, f"{topic}.deadletter")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i, payload in enumerate(payloads):
        producer.send(telemetry, key=f"pump-{i % 3}".encode(), value=payload)
    producer.flush(30)
    producer.close()
    archive_dir = tmp_path / "archive"
    extra = (f'[archive]\nenabled = true\ndir = "{archive_dir}"\ngroup_id = "arch-{unique}"\nflush_rows = {flush_rows}\n'
             "flush_interval_s = 0.5")
    cfg = config(tmp_path / "c.toml", bootstrap=bootstrap, topic=topic, group=f"g-{unique}", sqlite_path=tmp_path / "s.db",
                 extra=extra)
    return cfg, telemetry, archive_dir


def test_remove_uncommitted_deletes_only_flushes_at_or_after_the_committed_offset(tmp_path: Path) -> None:
    row = {"device_id": "d", "agent_id": "a", "reason": "sampled", "window_start": T0, "window_end": T0 + 2, "channels": ["c"],
           "ts": [T0], "values": [[1.0]], "score": 1.0, "threshold": 2.0, "anomalous": False, "model_sha256": "ab" * 32,
           "kafka_partition": 0, "kafka_offset": 0}
    kept = write_flush(tmp_path, "tel", 0, [row])
    gone = write_flush(tmp_path, "tel", 0, [{**row, "kafka_offset": 10}])
    other = write_flush(tmp_path, "tel", 1, [{**row, "kafka_partition": 1, "kafka_offset": 10}])
    assert remove_uncommitted(tmp_path, "tel", 0, committed=10) == gone
    assert all(p.exists() for p in kept + other) and not any(p.exists() for p in gone)


@pytest.mark.brokers
def test_archive_writes_each_window_once_per_device_and_day(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    good = windows(60)
    bad = [b"{", b'{"schema": 1}', good[0].replace(b'"sampled"', b'"bogus"').replace(b'"anomaly_context"', b'"bogus"')]
    cfg, telemetry, archive_dir = archive_setup(kafka_bootstrap, unique, tmp_path, good + bad, flush_rows=7)
    def run_once(also: Any = lambda: True) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=Archive(cfg, ArchiveMetrics(CollectorRegistry()), stop).run, daemon=True)
        thread.start()
        wait_for(lambda: (caught_up(kafka_bootstrap, f"arch-{unique}", telemetry) and also()) or not thread.is_alive(), 120,
                 "the archive")
        stop.set()
        thread.join(30)
        assert not thread.is_alive()

    run_once()
    table = ds.dataset(archive_dir, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(good)
    keys = list(zip(table["kafka_partition"].to_pylist(), table["kafka_offset"].to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)
    for path in archive_dir.glob("device_id=*/date=*/*.parquet"):
        t = ds.dataset(path, format="parquet").to_table()
        device, day = path.parent.parent.name.split("=")[1], path.parent.name.split("=")[1]
        assert set(t["device_id"].to_pylist()) == {device}
        assert {str(v)[:10] for v in t["window_start"].to_pylist()} and day in ("2025-11-27", "2025-11-28")
    assert sorted({p.parent.name for p in archive_dir.glob("*/*/*.parquet")}) == ["date=2025-11-27", "date=2025-11-28"]
    dead = read_all(kafka_bootstrap, f"anomalies.{unique}.deadletter", len(bad))
    assert sorted(r.value for r in dead) == sorted(bad)
    # a flush written but never committed (a crash before the commit) is removed when the partition is assigned again
    stray = write_flush(archive_dir, telemetry, 0, [{**table.slice(0, 1).to_pylist()[0], "kafka_offset": 10**9}])
    run_once(also=lambda: not any(p.exists() for p in stray))  # the clean-up runs once the partitions are assigned
    assert not any(p.exists() for p in stray)
    assert ds.dataset(archive_dir, format="parquet", partitioning="hive").count_rows() == len(good)


@pytest.mark.brokers
def test_an_archive_whose_writes_fail_is_started_again_and_loses_nothing(kafka_bootstrap: str, unique: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    good = windows(40)
    cfg, telemetry, archive_dir = archive_setup(kafka_bootstrap, unique, tmp_path, good, flush_rows=5)
    real_write, calls = write_flush, []

    def failing_write(*args: Any) -> list[Path]:  # the disk fails on the 2nd and 3rd flush, after one has landed
        calls.append(1)
        if len(calls) in (2, 3):
            raise OSError(28, "No space left on device")
        return real_write(*args)

    monkeypatch.setattr(archive_module, "write_flush", failing_write)
    registry, stop = CollectorRegistry(), threading.Event()
    thread = threading.Thread(target=run_archive, args=(cfg, stop, registry), kwargs={"backoff_s": (0.1, 0.2)}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: caught_up(kafka_bootstrap, f"arch-{unique}", telemetry), 120, "the restarted archive")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert registry.get_sample_value("edgewatch_processor_archive_restarts_total") == 2
    table = ds.dataset(archive_dir, format="parquet", partitioning="hive").to_table()
    keys = list(zip(table["kafka_partition"].to_pylist(), table["kafka_offset"].to_pylist(), strict=True))
    assert table.num_rows == len(good) and len(set(keys)) == len(good)
    assert registry.get_sample_value("edgewatch_processor_archive_windows_total") == len(good)

"""The telemetry archive: ``edgewatch.telemetry`` windows into Parquet files per device and day.

A second consumer group (``archive.group_id``) reads the telemetry topic, buffers windows per
partition and flushes them when ``flush_rows`` windows are buffered or ``flush_interval_s`` has
passed: one Parquet file per device and UTC day in the flush, under Hive-style folders that
``pyarrow.dataset`` reads directly::

    <dir>/device_id=<device>/date=<YYYY-MM-DD>/<topic>-p<partition>-o<first offset>.parquet

Files are written to a temporary name and renamed; offsets are committed after the rename. A
crash between the two leaves files whose first offset is at or after the committed offset;
they are deleted when the partition is assigned again, before anything is re-read, so every
window is archived exactly once. Windows that fail the contract go to the dead-letter topic
with the reason. :func:`run_archive` blocks until ``stop`` is set, then flushes and commits.

An archive that fails (a full disk, a broker that refuses it) is not left dead behind a healthy
processor: :func:`run_archive` starts it again after a backoff (1 s doubling to 60 s), counted in
``edgewatch_processor_archive_restarts_total``; ``edgewatch_processor_archive_last_write_timestamp_seconds``
is the time of its last commit, watched by the alert ``EdgewatchArchiveStalled``. A restart
re-reads from the committed offsets, so every window is still archived once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.processor.alerts import deadletter_headers
from cloud.processor.config import ProcessorConfig
from cloud.processor.consumer import group_consumer, kafka_producer
from cloud.processor.sidethreads import run_restarting
from edge.contract import ContractError, TelemetryWindow, decode_telemetry
from edge.forwarder import close_producer

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("device_id", pa.string()), ("agent_id", pa.string()), ("reason", pa.string()), ("window_start", pa.float64()),
    ("window_end", pa.float64()), ("channels", pa.list_(pa.string())), ("ts", pa.list_(pa.float64())),
    ("values", pa.list_(pa.list_(pa.float64()))), ("score", pa.float64()), ("threshold", pa.float64()),
    ("anomalous", pa.bool_()), ("model_sha256", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
])
_FILE_RE = re.compile(r"^(?P<topic>.+)-p(?P<partition>\d+)-o(?P<offset>\d+)\.parquet$")


def window_row(w: TelemetryWindow, partition: int, offset: int) -> dict[str, Any]:
    return {"device_id": w.device_id, "agent_id": w.agent_id, "reason": w.reason, "window_start": w.ts[0] if w.ts else 0.0,
            "window_end": w.ts[-1] if w.ts else 0.0, "channels": list(w.channels), "ts": list(w.ts),
            "values": [list(r) for r in w.values], "score": w.score, "threshold": w.threshold, "anomalous": w.anomalous,
            "model_sha256": w.model_sha256, "kafka_partition": partition, "kafka_offset": offset}


def day_of(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


def write_flush(root: Path, topic: str, partition: int, rows: list[dict[str, Any]]) -> list[Path]:
    """Write one flush (rows of one partition, in offset order): a file per device and day. Returns the files."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["device_id"], day_of(r["window_start"])), []).append(r)
    first = rows[0]["kafka_offset"]
    written = []
    for (device, day), items in sorted(groups.items()):
        folder = root / f"device_id={device}" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{topic}-p{partition}-o{first:020d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pylist(items, schema=SCHEMA), tmp)
        os.replace(tmp, path)
        written.append(path)
    return written


def remove_uncommitted(root: Path, topic: str, partition: int, committed: int) -> list[Path]:
    """Delete files of ``topic``/``partition`` whose first offset is at or after ``committed`` (a flush never committed)."""
    removed = []
    for path in root.glob("device_id=*/date=*/*.parquet*"):
        m = _FILE_RE.match(path.name.removesuffix(".tmp"))
        if m and m["topic"] == topic and int(m["partition"]) == partition and int(m["offset"]) >= committed:
            path.unlink()
            removed.append(path)
    if removed:
        log.warning("archive_uncommitted_removed topic=%s partition=%d files=%d", topic, partition, len(removed))
    return removed


class ArchiveMetrics:
    """The archive's metrics, registered once per registry and kept across restarts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "edgewatch_processor_archive_"
        self.windows = Counter(p + "windows_total", "Telemetry windows archived", registry=registry)
        self.files = Counter(p + "files_total", "Parquet files written", registry=registry)
        self.deadletters = Counter(p + "deadletters_total", "Telemetry records that failed the contract", registry=registry)
        self.restarts = Counter(p + "restarts_total", "Times the archive failed and was started again", registry=registry)
        self.last_write = Gauge(p + "last_write_timestamp_seconds",
                                "Unix time of the archive's last commit (its start until the first)", registry=registry)
        self.last_write.set_to_current_time()


class Archive:
    """The archive consumer; see the module docstring. Runs on the calling thread."""

    def __init__(self, config: ProcessorConfig, metrics: ArchiveMetrics, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.root = Path(config.archive.dir)
        self.topic = config.kafka.telemetry_topic
        self.stop = stop
        self.clock = clock
        self.buffers: dict[int, list[dict[str, Any]]] = {}
        self.dead: dict[int, list[tuple[int, str, str, bytes]]] = {}
        self.last_flush: dict[int, float] = {}
        self.next_offsets: dict[int, int] = {}
        self.to_clean: set[TopicPartition] = set()
        self.metrics = metrics

    def run(self) -> None:
        k, a = self.config.kafka, self.config.archive
        self.root.mkdir(parents=True, exist_ok=True)  # an archive that has nothing yet is empty, not missing
        producer = kafka_producer(k, k.client_id + "-archive-dlq")
        try:
            consumer = group_consumer(k, self.topic, _Listener(self), group_id=a.group_id, client_id=k.client_id + "-archive")
        except BaseException:
            close_producer(producer, 10.0)
            raise
        log.info("archive_started topic=%s group=%s dir=%s", self.topic, a.group_id, self.root)
        try:
            while not self.stop.is_set():
                polled = consumer.poll(timeout_ms=int(k.poll_timeout_s * 1000))
                for tp in list(self.to_clean):  # before any flush of a newly assigned partition
                    remove_uncommitted(self.root, tp.topic, tp.partition, consumer.committed(tp) or 0)
                    self.to_clean.discard(tp)
                for tp, records in polled.items():
                    self._buffer(tp.partition, records)
                for p in list(self.buffers):
                    due = self.clock() - self.last_flush.get(p, self.clock()) >= a.flush_interval_s
                    if len(self.buffers[p]) + len(self.dead.get(p, [])) >= a.flush_rows or due:
                        self.flush(consumer, producer, p)
            for p in list(self.buffers):
                self.flush(consumer, producer, p)
        finally:
            consumer.close(autocommit=False)
            close_producer(producer, 10.0)
            log.info("archive_stopped")

    def _buffer(self, partition: int, records: list[Any]) -> None:
        rows = self.buffers.setdefault(partition, [])
        self.last_flush.setdefault(partition, self.clock())
        for r in records:
            try:
                if r.value is None:
                    raise ContractError("$", None, "a record without a value is not a telemetry window")
                rows.append(window_row(decode_telemetry(r.value), partition, r.offset))
            except ContractError as exc:
                self.dead.setdefault(partition, []).append((r.offset, exc.field, str(exc), r.value or b""))
            self.next_offsets[partition] = r.offset + 1

    def flush(self, consumer: KafkaConsumer, producer: KafkaProducer, partition: int) -> None:
        """Write, dead-letter and commit what is buffered for ``partition``."""
        rows = self.buffers.pop(partition, [])
        dead = self.dead.pop(partition, [])
        self.last_flush[partition] = self.clock()
        nxt = self.next_offsets.get(partition)
        if nxt is None or (not rows and not dead):
            return
        files = write_flush(self.root, self.topic, partition, rows) if rows else []
        for offset, field, reason, payload in dead:
            producer.send(self.config.kafka.deadletter_topic, key=f"{self.topic}/{partition}".encode(), value=payload,
                          headers=deadletter_headers(self.topic, partition, offset, field, reason))
        if dead:
            producer.flush(30)
        consumer.commit({TopicPartition(self.topic, partition): OffsetAndMetadata(nxt, "", -1)})
        m = self.metrics
        m.windows.inc(len(rows))
        m.files.inc(len(files))
        m.deadletters.inc(len(dead))
        m.last_write.set_to_current_time()
        log.info("archive_flushed partition=%d windows=%d files=%d deadletters=%d next_offset=%d", partition, len(rows),
                 len(files), len(dead), nxt)

    def forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self.buffers.pop(p, None)
            self.dead.pop(p, None)
            self.next_offsets.pop(p, None)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.archive.forget([tp.partition for tp in revoked])  # uncommitted: the next owner re-reads them

    def on_partitions_assigned(self, assigned: Any) -> None:
        # cleaned up after this poll returns: the consumer cannot fetch committed offsets from inside its callback
        self.archive.to_clean.update(assigned)


def run_archive(config: ProcessorConfig, stop: threading.Event, registry: CollectorRegistry, *,
                backoff_s: tuple[float, float] = (1.0, 60.0)) -> None:
    """Thread entry used by ``edgewatch process`` when ``[archive] enabled = true``: the archive
    until ``stop`` is set, started again after each failure (``backoff_s``: first and longest wait;
    the wait doubles while failures follow each other within a minute)."""
    metrics = ArchiveMetrics(registry)
    run_restarting(lambda: Archive(config, metrics, stop).run(), stop, metrics.restarts, "archive", backoff_s)

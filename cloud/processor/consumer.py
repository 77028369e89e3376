"""The processor's consumer loop: a Kafka consumer group on the anomalies topic.

Per poll: the batches of all its partitions are stored in one transaction; then fleet incidents are
brought up to the global final time (at most every ``fleet.evaluate_interval_s``), the alerts and
dead letters that transaction stored are produced (their acks collected later), and only then
are the batch's offsets committed explicitly, per partition (``commit_async``, one commit in
flight at a time: offsets stored meanwhile, or refused, go with the next; the drain commits
synchronously). A crash anywhere in between re-delivers records that the store de-duplicates:
at-least-once delivery, exactly-once effect. A store error rewinds the poll's partitions to their
batch starts and retries after a pause; bad records never stop the loop. :meth:`Processor.run`
blocks until ``stop`` is set (SIGTERM in the CLI), finishes the batch in hand, publishes, commits
and leaves the group.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from cloud.kafka_groups import subscribe
from cloud.processor.alerts import Outbox, alert_rows
from cloud.processor.backends import background_checkpoints
from cloud.processor.config import KafkaSection, ProcessorConfig
from cloud.processor.drift import load_expectations
from cloud.processor.fleet import FleetCorrelator
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.pipeline import Pipeline, paused_gc
from cloud.processor.store import Store
from edge.contract import BrokerUnavailable
from edge.kafka_security import client_kwargs, diagnose

log = logging.getLogger(__name__)

STORE_RETRY_S = 1.0
COMMIT_LOST_S = 60.0  # an async commit unanswered this long is taken as lost, and sent again


def store_errors() -> tuple[type[BaseException], ...]:
    """Driver exceptions that mean "the store write failed, retry the batch"."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(errors)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.processor.pipeline.forget([tp.partition for tp in revoked])
        for tp in revoked:  # a later owner commits them; ours would be stale if the partition came back
            self.processor._offsets.pop(tp, None)
        log.info("partitions_revoked partitions=%s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.processor.pipeline.forget([tp.partition for tp in assigned])
        now = time.monotonic()
        for tp in assigned:
            self.processor.last_seen[tp.partition] = now
        log.info("partitions_assigned partitions=%s", sorted(tp.partition for tp in assigned))


class Processor:
    """Owns one consumer, one producer and one store connection; runs on the calling thread."""

    def __init__(self, config: ProcessorConfig, store: Store, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, stop: threading.Event | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.stop = stop or threading.Event()
        self.metrics = ProcessorMetrics(registry or CollectorRegistry())
        self.pipeline = Pipeline(config, store, self.metrics, clock, load_expectations(config.drift))
        self.fleet = FleetCorrelator(config.fleet, config.kafka.anomalies_topic)
        self.topic = config.kafka.anomalies_topic
        self.last_seen: dict[int, float] = {}
        self._empty_checked = 0.0
        self._lag_checked = 0.0
        self._swept = -math.inf
        self._fleet_at = -math.inf
        self._fleet_pending = False  # batches stored since the last fleet evaluation
        self._offsets: dict[TopicPartition, OffsetAndMetadata] = {}  # of the last stored poll of each partition
        self._commit_due = False  # offsets stored since the last commit that was sent (or that failed)
        self._commit_sent: float | None = None  # monotonic time of the async commit in flight

    def run(self) -> None:
        k = self.config.kafka
        consumer, producer = group_clients(k, self.topic, _Rebalance(self), group_id=k.group_id, client_id=k.client_id,
                                           producer_id=k.client_id + "-outbox", linger_ms=5)
        outbox = Outbox(producer, self.store, alerts_topic=k.alerts_topic, deadletter_topic=k.deadletter_topic,
                        metrics=self.metrics, clock=self.clock)
        log.info("processor_started topic=%s group=%s bootstrap=%s", self.topic, k.group_id, k.bootstrap)
        try:
            with background_checkpoints(self.store):
                while not self.stop.is_set():
                    with paused_gc():  # the poll's records too; they are dropped when _poll_once returns
                        self._poll_once(consumer, outbox)
                    self._sweep(outbox)
                log.info("processor_draining")
                self._publish(outbox, self.evaluate_fleet(consumer) if self._fleet_pending else [], [], wait=True)
                self._commit_offsets(consumer)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=10)
            log.info("processor_stopped")

    def _poll_once(self, consumer: KafkaConsumer, outbox: Outbox) -> None:
        k = self.config.kafka
        polled = consumer.poll(timeout_ms=int(k.poll_timeout_s * 1000), max_records=k.max_poll_records)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        alerts: list[Any] = []
        dead: list[Any] = []
        batches = [(tp, records) for tp, records in polled.items() if records]
        for tp, _ in batches:
            self.last_seen[tp.partition] = time.monotonic()
        try:  # one store transaction for the whole poll (fewer commits); a failure rewinds every partition of it
            results = self.pipeline.process_many([(tp.topic, tp.partition, records) for tp, records in batches]) if batches else []
        except store_errors() as exc:
            self.metrics.store_errors.inc()
            log.error("store_write_failed partitions=%s error=%r; retrying", sorted(tp.partition for tp, _ in batches), exc)
            for tp, records in batches:
                consumer.seek(tp, records[0].offset)
            self.stop.wait(STORE_RETRY_S)
            batches, results = [], []
        for (tp, records), res in zip(batches, results, strict=True):
            offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
            alerts += res.alerts
            dead += res.dead
        alerts += self._advance_idle(consumer)
        self._fleet_pending |= bool(offsets)
        mono = time.monotonic()
        if self._fleet_pending and mono - self._fleet_at >= self.config.fleet.evaluate_interval_s:
            self._fleet_pending, self._fleet_at = False, mono
            alerts += self.evaluate_fleet(consumer)
        self._publish(outbox, alerts, dead)
        self._commit_async(consumer, offsets)
        self._update_gauges(consumer)

    def _commit_async(self, consumer: KafkaConsumer, stored: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Note the offsets of a stored poll (``stored``, may be empty) and send those of the partitions still ours,
        unless a commit is in flight (then they go with the next one, after its answer): no pile-up of commits on
        small polls, and a refused one is sent again."""
        if stored:
            self._offsets.update(stored)
            self._commit_due = True
        sent = self._commit_sent
        if not self._commit_due or (sent is not None and time.monotonic() - sent < COMMIT_LOST_S):
            return
        offsets = self._owned_offsets(consumer)
        self._commit_due = False
        if offsets:
            self._commit_sent = time.monotonic()
            consumer.commit_async(offsets, callback=self._committed)

    def _committed(self, offsets: Any, response: Any) -> None:
        """``commit_async`` callback (on kafka-python's IO thread)."""
        if isinstance(response, Exception):
            self._commit_due = True
            log.warning("offsets_commit_failed partitions=%s reason=%r; sent again after the next poll",
                        sorted(tp.partition for tp in offsets), response)
        self._commit_sent = None

    def _owned_offsets(self, consumer: KafkaConsumer) -> dict[TopicPartition, OffsetAndMetadata]:
        assigned = consumer.assignment()
        return {tp: o for tp, o in self._offsets.items() if tp in assigned}

    def _commit_offsets(self, consumer: KafkaConsumer) -> None:
        """Commit the stored polls' offsets of the partitions still ours and wait for the ack (on drain)."""
        offsets = self._owned_offsets(consumer)
        try:
            if offsets:
                consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            log.warning("offsets_commit_failed reason=%r; the next owner re-reads them and de-duplicates", exc)

    @staticmethod
    def _publish(outbox: Outbox, alerts: list[Any], dead: list[Any], *, wait: bool = False) -> None:
        try:
            outbox.publish(alerts, dead, wait=wait)
        except BrokerUnavailable as exc:  # the rows are safe in the store; the orphan sweep retries them
            log.error("outbox_publish_failed alerts=%d deadletters=%d error=%s", len(alerts), len(dead), exc)

    def evaluate_fleet(self, consumer: KafkaConsumer) -> list[tuple[str, str, str]]:
        """Bring fleet incidents up to the global final time; returns the alerts written, for the outbox."""
        final = self.global_final(consumer)
        if final is None:
            return []
        try:
            changes = self.fleet.evaluate(self.store, final, self.clock())
        except store_errors() as exc:
            self.metrics.store_errors.inc()
            log.error("fleet_evaluation_failed error=%r; retried after the next batch", exc)
            return []
        return [(r[0], r[1], r[5]) for r in alert_rows(changes.alerts)]

    def _sweep(self, outbox: Outbox) -> None:
        orphan_s = self.config.kafka.outbox_orphan_s
        mono = time.monotonic()
        if mono - self._swept >= orphan_s / 2:
            self._swept = mono
            try:
                outbox.sweep(orphan_s)
            except BrokerUnavailable as exc:
                log.error("outbox_sweep_failed error=%s", exc)

    def global_final(self, consumer: KafkaConsumer) -> float | None:
        """Smallest watermark over the topic's partitions that hold data, minus the allowed lateness."""
        marks = self.store.partition_watermarks(self.topic)
        parts = consumer.partitions_for_topic(self.topic) or set()
        missing = [p for p in parts if marks.get(p) is None]
        if missing:
            if time.monotonic() - self._empty_checked < 1.0:
                return None
            self._empty_checked = time.monotonic()
            ends = consumer.end_offsets([TopicPartition(self.topic, p) for p in missing])
            if any(v > 0 for v in ends.values()):
                return None  # a partition with data has not been processed yet
        present = [w for p, w in marks.items() if w is not None and p in parts]
        return min(present) - self.config.incidents.allowed_lateness_s if present else None

    def _advance_idle(self, consumer: KafkaConsumer) -> list[tuple[str, str, str]]:
        idle_s = self.config.incidents.idle_advance_s
        alerts: list[tuple[str, str, str]] = []
        if idle_s <= 0:
            return alerts
        mono = time.monotonic()
        for tp in consumer.assignment():
            if mono - self.last_seen.get(tp.partition, mono) >= idle_s:
                self.last_seen[tp.partition] = mono
                try:
                    alerts += self.pipeline.advance_idle(tp.topic, tp.partition, self.clock() - idle_s)
                except store_errors() as exc:
                    self.metrics.store_errors.inc()
                    log.error("idle_advance_failed partition=%d error=%r", tp.partition, exc)
        return alerts

    def _update_gauges(self, consumer: KafkaConsumer) -> None:
        mono = time.monotonic()
        if mono - self._lag_checked < self.config.metrics.lag_interval_s:
            return
        self._lag_checked = mono
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(partition=str(tp.partition)).set(max(0, high - consumer.position(tp)))
        for kind, n in self.pipeline.open_incidents().items():
            self.metrics.incidents_open.labels(kind=kind).set(n)
        self.metrics.incidents_open.labels(kind="fleet_incident").set(len(self.store.incidents(kind="fleet_incident", open_only=True)))


def group_clients(k: KafkaSection, topic: str, listener: ConsumerRebalanceListener, *, group_id: str, client_id: str,
                  producer_id: str, **producer: Any) -> tuple[KafkaConsumer, KafkaProducer]:
    """A manual-commit consumer subscribed to ``topic`` in ``group_id``, and an acks=all producer (``producer``:
    more of its settings), both with the section's bootstrap and security; :class:`BrokerUnavailable` saying why."""
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap, group_id=group_id, client_id=client_id, enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset, max_poll_records=k.max_poll_records,
            session_timeout_ms=int(k.session_timeout_s * 1000), heartbeat_interval_ms=max(100, int(k.session_timeout_s * 250)),
            **client_kwargs(k),
        )
        try:
            made = KafkaProducer(bootstrap_servers=k.bootstrap, client_id=producer_id, acks="all", **producer, **client_kwargs(k))
        except KafkaError:
            consumer.close(autocommit=False)
            raise
    except KafkaError as exc:
        raise BrokerUnavailable(f"kafka at {k.bootstrap}: {diagnose(k.bootstrap, k)} [{exc!r}]") from exc
    subscribe(consumer, [topic], listener)
    return consumer, made


def run_processor(config: ProcessorConfig, store: Store, stop: threading.Event, registry: CollectorRegistry) -> None:
    """Entry used by the CLI: run until ``stop`` is set."""
    Processor(config, store, registry=registry, stop=stop).run()

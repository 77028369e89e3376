"""The processor's consumer side: a Kafka consumer group on the anomalies topic.

Each poll's records go to the store side (:mod:`cloud.processor.storeside`, in a process of its own
by default), which stores the batches of all its partitions in one transaction. When it answers that
a poll is stored, the alerts and dead letters stored with it are produced (the outbox; their acks
are collected later) and only then are the poll's offsets committed, per partition
(:class:`cloud.processor.offsets.OffsetBook`: one ``commit_async`` in flight at a time, offsets
stored meanwhile, or refused, go with the next; the drain commits synchronously). Fleet incidents
are brought up to the global final time at most every ``fleet.evaluate_interval_s``. A crash
anywhere in between re-delivers records that the store de-duplicates: at-least-once delivery,
exactly-once effect. A store error rewinds the partitions of the polls in flight to their first
records not stored and retries after a pause; bad records never stop the loop. :meth:`Processor.run`
blocks until ``stop`` is set (SIGTERM in the CLI), finishes the polls in flight, publishes, commits
and leaves the group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from cloud.kafka_groups import subscribe
from cloud.processor.alerts import OutboxPublisher
from cloud.processor.config import ProcessorConfig, ProcessorKafkaSection
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.offsets import OffsetBook, Polled
from cloud.processor.pipeline import paused_gc
from cloud.processor.routes import AlertRoutes, parse_routes
from cloud.processor.store import Store
from cloud.processor.storeside import ChildChannel, LocalChannel, OutboxRows, Reply, StoreClient, store_errors, store_failed
from edge.contract import BrokerUnavailable
from edge.forwarder import close_producer
from edge.kafka_security import client_kwargs, diagnose

log = logging.getLogger(__name__)

STORE_RETRY_S = 1.0
IN_FLIGHT_POLL_S = 0.05  # the longest poll while a poll is with the store side: its answer should not wait for records
DRAIN_COMMIT_S = 10.0  # the longest the last commit waits when the processor stops
PRODUCER_MAX_BLOCK_S = 10.0  # the longest a send waits for a topic's metadata (the brokers away) before it fails
R = TypeVar("R")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.processor.rebalanced(revoked=list(revoked))
        log.info("partitions_revoked partitions=%s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.processor.rebalanced(assigned=list(assigned))
        log.info("partitions_assigned partitions=%s", sorted(tp.partition for tp in assigned))


class _OutboxRows:
    """The outbox's part of the store (unpublished rows; marking rows published), asked of the store side."""

    def __init__(self, processor: Processor, consumer: KafkaConsumer) -> None:
        self.processor, self.consumer = processor, consumer

    def unpublished(self, table: str, *, created_before: float) -> list[tuple[Any, ...]]:
        return self.processor.wait(self.consumer, self.processor.side.unpublished(table, created_before))

    def mark_published(self, table: str, keys: Sequence[Sequence[Any]], now: float) -> None:
        self.processor.side.mark_published(table, keys, now)


class Processor:
    """Owns one consumer, one producer and the store side; reads ``store`` (watermarks) itself; runs on the calling thread."""

    def __init__(self, config: ProcessorConfig, store: Store, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, stop: threading.Event | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.stop = stop or threading.Event()
        self.metrics = ProcessorMetrics(registry or CollectorRegistry())
        self.topic = config.kafka.anomalies_topic
        self.last_seen: dict[int, float] = {}
        self._empty_checked = 0.0
        self._lag_checked = 0.0
        self._swept = -math.inf
        self._fleet_at = -math.inf
        self._fleet_pending = False  # polls stored since the last fleet evaluation
        self.offsets = OffsetBook()
        self._side: StoreClient | None = None
        self._outbox: OutboxPublisher | None = None
        self._forget: set[int] = set()  # partitions revoked or assigned since the last poll: the store side drops their state

    def run(self) -> None:
        k = self.config.kafka
        with contextlib.ExitStack() as stack:
            # the child starts first: its imports and store connection overlap the group join
            channel = ChildChannel(self.config, self.clock, self.metrics) if self.config.store.own_process else \
                LocalChannel(self.config, self.store, self.metrics, self.clock)
            stack.callback(channel.close)
            self._side = StoreClient(channel)
            producer = kafka_producer(k, k.client_id + "-outbox", linger_ms=5)
            stack.callback(close_producer, producer, 10.0)
            consumer = group_consumer(k, self.topic, _Rebalance(self), group_id=k.group_id, client_id=k.client_id)
            stack.callback(consumer.close, autocommit=False)
            self._outbox = OutboxPublisher(producer, _OutboxRows(self, consumer), alerts_topic=k.alerts_topic,
                                           deadletter_topic=k.deadletter_topic, metrics=self.metrics, clock=self.clock,
                                           routes=AlertRoutes(parse_routes(self.config.alerts.routes, "[alerts]"), k.alerts_topic))
            channel.started()
            log.info("processor_started topic=%s group=%s bootstrap=%s store_process=%s", self.topic, k.group_id,
                     k.bootstrap, "own" if self.config.store.own_process else "shared")
            while not self.stop.is_set():
                with paused_gc():  # the poll's records too; they are dropped when _poll_once returns
                    self._poll_once(consumer)
                self._sweep()
            log.info("processor_draining")
            self._answers(consumer, keep=0)
            if self._fleet_pending:
                self._evaluate_fleet(consumer)
                self._answers(consumer, keep=0)
            self._publish([], [], wait=True)
            self._answers(consumer, keep=0)  # the rows it marked published
            self._commit_offsets(consumer)
        log.info("processor_stopped")

    @property
    def side(self) -> StoreClient:
        """The store side (while :meth:`run` runs)."""
        assert self._side is not None
        return self._side

    def rebalanced(self, *, revoked: Sequence[TopicPartition] = (), assigned: Sequence[TopicPartition] = ()) -> None:
        """From the listener (inside a poll): in-flight polls' offsets are not noted, revoked partitions' offsets
        are dropped, and the store side is told after the poll to drop the partitions' state (the listener itself
        asks nothing of it)."""
        self.offsets.rebalanced(revoked)
        now = time.monotonic()
        for tp in assigned:
            self.last_seen[tp.partition] = now
        self._forget.update(tp.partition for tp in [*revoked, *assigned])

    def _answers(self, consumer: KafkaConsumer, keep: int) -> None:
        """Read answers until at most ``keep`` polls (and nothing before them) are unanswered; after a poll that was
        not stored, until none is, then rewind."""
        side, offsets = self.side, self.offsets
        while side.unanswered and (offsets.rewind_due or side.polls > keep or not side.unanswered[0].poll):
            side.read_answer()
        if offsets.rewind_due and not side.unanswered:
            rewind = offsets.take_rewind()
            assigned = consumer.assignment()
            for tp, first in rewind.items():
                if tp in assigned:
                    consumer.seek(tp, first)
            log.info("partitions_rewound offsets=%s", {tp.partition: o for tp, o in rewind.items()})
            side.resume()
            self.stop.wait(STORE_RETRY_S)

    def wait(self, consumer: KafkaConsumer, reply: Reply[R]) -> R:
        """The answer of a request that is needed now (read after those in flight)."""
        self._answers(consumer, keep=0)
        return reply.value

    def _stored(self, consumer: KafkaConsumer, epoch: int, poll: Polled, rows: OutboxRows | None) -> None:
        """The store side's answer to a poll: publish its outbox rows, then note its offsets; or rewind it."""
        if rows is None:
            self.offsets.not_stored(poll)
            return
        self._publish_rows(rows)
        self._fleet_pending = True
        self.offsets.stored(poll, epoch)
        self._commit_async(consumer)

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        k, side = self.config.kafka, self.side
        timeout_s = min(k.poll_timeout_s, IN_FLIGHT_POLL_S) if side.polls else k.poll_timeout_s
        try:
            polled = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=k.max_poll_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            # the brokers are away (kafka-python 3 raises a lost coordinator from poll): wait, then poll again
            log.warning("kafka_poll_failed error=%r; polling again in %.0f s", exc, STORE_RETRY_S)
            self.stop.wait(STORE_RETRY_S)
            return
        batches = [(tp, records) for tp, records in polled.items() if records]
        mono = time.monotonic()
        if self._forget:
            side.forget(sorted(self._forget))
            self._forget.clear()
        for tp, _ in batches:
            self.last_seen[tp.partition] = mono
        if batches:
            poll = {tp: (records[0].offset, records[-1].offset + 1) for tp, records in batches}
            side.process([(tp.topic, tp.partition, [r.offset for r in records], [r.value for r in records])
                          for tp, records in batches]).then(partial(self._stored, consumer, self.offsets.epoch, poll))
        else:
            self._publish([], [])  # collects the acks that came meanwhile
        # in its own process, the store side works on this poll while the next one is fetched (none came: wait for it)
        self._answers(consumer, keep=side.depth - 1 if batches else 0)
        self._advance_idle(consumer)
        if self._fleet_pending and mono - self._fleet_at >= self.config.fleet.evaluate_interval_s:
            self._evaluate_fleet(consumer)
        self._commit_async(consumer)
        self._update_gauges(consumer)

    def _commit_async(self, consumer: KafkaConsumer) -> None:
        """Send the offsets the book says are due (none while a commit is in flight)."""
        offsets = self.offsets.next_commit(consumer.assignment)
        if offsets:
            consumer.commit_async(offsets, callback=self._committed)

    def _committed(self, offsets: Any, response: Any) -> None:
        """``commit_async`` callback (on kafka-python's IO thread)."""
        failed = isinstance(response, Exception)
        if failed:
            log.warning("offsets_commit_failed partitions=%s reason=%r; sent again after the next poll",
                        sorted(tp.partition for tp in offsets), response)
        self.offsets.committed(response if failed else None)

    def _commit_offsets(self, consumer: KafkaConsumer) -> None:
        """Commit the stored polls' offsets of the partitions still ours and wait for the ack (on drain).

        Waits at most ``DRAIN_COMMIT_S``: with the brokers away (an outage below ``min.insync.replicas``, a lost
        coordinator) the commit fails, and the processor still stops cleanly; the store holds every event, and
        the next owner re-reads the uncommitted offsets and de-duplicates them.
        """
        offsets = self.offsets.owned(consumer.assignment())
        try:
            if offsets:
                consumer.commit(offsets, timeout_ms=int(DRAIN_COMMIT_S * 1000))
        except KafkaError as exc:
            log.warning("offsets_commit_failed reason=%r; the next owner re-reads them and de-duplicates", exc)

    def _publish(self, alerts: list[Any], dead: list[Any], *, wait: bool = False) -> None:
        assert self._outbox is not None
        try:
            self._outbox.publish(alerts, dead, wait=wait)
        except BrokerUnavailable as exc:  # the rows are safe in the store; the orphan sweep retries them
            log.error("outbox_publish_failed alerts=%d deadletters=%d error=%s", len(alerts), len(dead), exc)

    def _publish_rows(self, rows: OutboxRows) -> None:
        self._publish(*rows)

    def _evaluate_fleet(self, consumer: KafkaConsumer) -> None:
        """Have the store side bring fleet incidents up to the global final time (if there is one yet)."""
        self._fleet_pending, self._fleet_at = False, time.monotonic()
        final = self.global_final(consumer)
        if final is not None:
            self.side.fleet(final).then(self._publish_rows)

    def _sweep(self) -> None:
        assert self._outbox is not None
        orphan_s = self.config.kafka.outbox_orphan_s
        mono = time.monotonic()
        if mono - self._swept >= orphan_s / 2:
            self._swept = mono
            try:
                self._outbox.sweep(orphan_s)
            except BrokerUnavailable as exc:
                log.error("outbox_sweep_failed error=%s", exc)

    def global_final(self, consumer: KafkaConsumer) -> float | None:
        """Smallest watermark over the topic's partitions that hold data, minus the allowed lateness."""
        try:
            marks = self.store.partition_watermarks(self.topic)
        except store_errors() as exc:  # tried again at the next evaluation
            store_failed(self.metrics, self.store, "watermarks_read_failed error=%r", exc)
            return None
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

    def _advance_idle(self, consumer: KafkaConsumer) -> None:
        idle_s = self.config.incidents.idle_advance_s
        if idle_s <= 0:
            return
        mono = time.monotonic()
        for tp in consumer.assignment():
            if mono - self.last_seen.get(tp.partition, mono) >= idle_s:
                self.last_seen[tp.partition] = mono
                self.side.advance_idle(tp.topic, tp.partition, self.clock() - idle_s).then(self._publish_rows)

    def _update_gauges(self, consumer: KafkaConsumer) -> None:
        mono = time.monotonic()
        if mono - self._lag_checked < self.config.metrics.lag_interval_s:
            return
        self._lag_checked = mono
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(partition=str(tp.partition)).set(max(0, high - consumer.position(tp)))
        self.side.open_incidents().then(self._set_incidents_open)  # answered in turn: the polls in flight keep going

    def _set_incidents_open(self, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            self.metrics.incidents_open.labels(kind=kind).set(n)


def kafka_producer(k: ProcessorKafkaSection, client_id: str, **settings: Any) -> KafkaProducer:
    """An acks=all, idempotent producer with the section's bootstrap and security; :class:`BrokerUnavailable` saying why."""
    try:
        return KafkaProducer(bootstrap_servers=k.bootstrap, client_id=client_id, acks="all", enable_idempotence=True,
                             max_block_ms=int(PRODUCER_MAX_BLOCK_S * 1000), **settings, **client_kwargs(k))
    except KafkaError as exc:
        raise BrokerUnavailable(f"kafka at {k.bootstrap}: {diagnose(k.bootstrap, k)} [{exc!r}]") from exc


def group_consumer(k: ProcessorKafkaSection, topic: str | Sequence[str], listener: ConsumerRebalanceListener | None = None, *,
                   group_id: str, client_id: str) -> KafkaConsumer:
    """A manual-commit consumer subscribed to ``topic`` (or several) in ``group_id``, with the section's bootstrap and
    security; :class:`BrokerUnavailable` saying why. No ``listener``: nothing to do on a rebalance (a consumer
    that stores each poll before it commits its offsets)."""
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap, group_id=group_id, client_id=client_id, enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset, max_poll_records=k.max_poll_records,
            session_timeout_ms=int(k.session_timeout_s * 1000), heartbeat_interval_ms=max(100, int(k.session_timeout_s * 250)),
            **client_kwargs(k),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"kafka at {k.bootstrap}: {diagnose(k.bootstrap, k)} [{exc!r}]") from exc
    subscribe(consumer, [topic] if isinstance(topic, str) else list(topic), listener)
    return consumer

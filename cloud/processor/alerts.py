"""The alert and dead-letter outboxes: rows written with the batch, produced to Kafka afterwards.

A batch's transaction stores its alerts and dead letters; :class:`OutboxPublisher` then produces them
(alerts to ``edgewatch.alerts`` keyed by incident id, dead letters to ``edgewatch.deadletter``
with the original payload and the reason in headers) and marks them published as the broker's
acks arrive (collected by a later call, so the consumer loop does not wait for them). Rows a
crashed process stored but never published are swept up by any processor after
``kafka.outbox_orphan_s``: delivery is at least once, and alert ids are deterministic so consumers
de-duplicate. Called from the consumer thread; a waiting call blocks up to ``timeout_s`` on the
broker; a refused send raises :class:`BrokerUnavailable`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from edge.contract import Alert, BrokerUnavailable, encode_alert

if TYPE_CHECKING:  # kafka and prometheus_client stay out of the store process, which needs only alert_rows
    from kafka import KafkaProducer

    from cloud.processor.metrics import ProcessorMetrics
    from cloud.processor.routes import AlertRoutes

log = logging.getLogger(__name__)
COLLECT_INTERVAL_S = 1.0  # acks are marked in the store (one transaction) at most this often, or when waited for


def alert_rows(alerts: Sequence[Alert]) -> list[tuple[str, str, str, str, float, str]]:
    """Store rows (alert_id, incident_id, kind, action, event_time, payload) for the alert outbox."""
    return [(a.alert_id, a.incident_id, a.kind, a.action, a.closed_at if a.closed_at is not None and a.action == "close"
             else a.opened_at, encode_alert(a).decode()) for a in alerts]


def deadletter_headers(topic: str, partition: int, offset: int, field: str, reason: str) -> list[tuple[str, bytes]]:
    return [("edgewatch-reason", reason.encode()), ("edgewatch-field", field.encode()),
            ("edgewatch-source", f"{topic}/{partition}/{offset}".encode())]


class OutboxStore(Protocol):
    """What the outbox needs of the store (a :class:`~cloud.processor.store.Store` has it; the processor asks its
    store side)."""

    def unpublished(self, table: str, *, created_before: float) -> list[tuple[Any, ...]]: ...

    def mark_published(self, table: str, keys: Sequence[Sequence[Any]], now: float) -> None: ...


class OutboxPublisher:
    """Publishes the store's unpublished alerts and dead letters; see the module docstring."""

    def __init__(self, producer: KafkaProducer, store: OutboxStore, *, alerts_topic: str, deadletter_topic: str,
                 metrics: ProcessorMetrics, clock: Callable[[], float], timeout_s: float = 30.0,
                 routes: AlertRoutes | None = None) -> None:
        self.producer = producer
        self.store = store
        self.alerts_topic = alerts_topic
        self.deadletter_topic = deadletter_topic
        self.metrics = metrics
        self.clock = clock
        self.timeout_s = timeout_s
        self.routes = routes  # [alerts] routes: a kind's topic and labels
        self._sent: list[tuple[str, Sequence[Any], Any]] = []  # (table, row, send future) not yet acked
        self._collected = -math.inf

    def publish(self, alerts: Sequence[Sequence[Any]], dead: Sequence[Sequence[Any]], *, wait: bool = False) -> int:
        """Produce rows this process stored; each is marked published once the broker has acked it.

        ``alerts``: (alert_id, incident_id, payload); ``dead``: (topic, partition, offset, field, reason, payload).
        Acks are collected by a later call (at most every ``COLLECT_INTERVAL_S``; ``wait``: now, up to
        ``timeout_s``), so the consumer loop never waits for them; a send the broker refused leaves its row for
        the sweep and raises :class:`BrokerUnavailable`.
        """
        from kafka.errors import KafkaError, KafkaTimeoutError

        try:
            for row in alerts:
                _alert_id, incident_id, payload = row
                topic, payload = self.routes.route(payload) if self.routes is not None else (self.alerts_topic, payload)
                self._sent.append(("alerts", row, self.producer.send(topic, key=incident_id.encode(), value=payload.encode())))
            for row in dead:
                topic, partition, offset, field, reason, payload = row
                headers = deadletter_headers(topic, partition, offset, field, reason)
                self._sent.append(("deadletters", row, self.producer.send(
                    self.deadletter_topic, key=f"{topic}/{partition}".encode(), value=bytes(payload) if payload is not None else None,
                    headers=headers)))
        except KafkaError as exc:  # no metadata for the topic within the producer's max_block_ms: the brokers are away
            raise BrokerUnavailable(f"outbox: cannot send ({exc!r}); rows stay unpublished and are retried") from exc
        if wait:
            try:
                self.producer.flush(self.timeout_s)
            except KafkaTimeoutError:  # the brokers are away: the sends not done are refused below, their rows wait
                pass
        if wait or time.monotonic() - self._collected >= COLLECT_INTERVAL_S:
            self._collected = time.monotonic()
            self._collect(wait)
        return len(alerts) + len(dead)

    def _collect(self, wait: bool) -> None:
        from kafka.errors import KafkaError

        done: list[tuple[str, Sequence[Any], Any]] = []
        pending: list[tuple[str, Sequence[Any], Any]] = []
        for sent in self._sent:
            (done if wait or sent[2].is_done else pending).append(sent)
        self._sent = pending
        if not done:
            return
        acked: dict[str, list[Sequence[Any]]] = {"alerts": [], "deadletters": []}
        refused: KafkaError | None = None
        for table, row, future in done:
            if not future.is_done:  # a flush that timed out
                refused = KafkaError(f"no acknowledgement within {self.timeout_s} s")
                continue
            try:
                future.get()
            except KafkaError as exc:
                refused = exc
                continue
            acked[table].append(row)
        now = self.clock()
        for table, rows in acked.items():
            self.store.mark_published(table, rows, now)
        for _, _, payload in acked["alerts"]:
            doc = orjson.loads(payload)
            self.metrics.alerts_emitted.labels(kind=doc["kind"], action=doc["action"]).inc()
            if doc["action"] == "open":
                self.metrics.incidents_opened.labels(kind=doc["kind"]).inc()
        self.metrics.deadletters_published.inc(len(acked["deadletters"]))
        log.debug("outbox_published alerts=%d deadletters=%d", len(acked["alerts"]), len(acked["deadletters"]))
        if refused is not None:
            raise BrokerUnavailable(f"outbox: produce failed ({refused!r}); rows stay unpublished and are retried")

    def sweep(self, older_than_s: float) -> int:
        """Publish rows left unpublished for ``older_than_s`` (their writer crashed before publishing them)."""
        total = 0
        while True:
            before = self.clock() - older_than_s
            alerts = self.store.unpublished("alerts", created_before=before)
            dead = self.store.unpublished("deadletters", created_before=before)
            if not alerts and not dead:
                return total
            log.info("outbox_orphans_publishing alerts=%d deadletters=%d", len(alerts), len(dead))
            total += self.publish(alerts, dead, wait=True)

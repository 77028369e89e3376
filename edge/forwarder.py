"""Drains the outbox into Kafka: kafka-python 3.x, ``acks=all``, idempotent, in id order.

Runs on its own thread (:meth:`Forwarder.run`). Each round peeks the oldest rows, sends them,
waits until every send is acknowledged or has failed, and deletes only the acknowledged rows.
After a failure the producer is closed and rebuilt after a capped exponential backoff, and the
unacknowledged rows are sent again: delivery is at least once, and consumers de-duplicate
(anomaly events on ``event_id``). A row the broker acknowledged is never sent again, unless the
agent dies between the acknowledgement and the delete.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import AuthorizationError, KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from edge.config import KafkaSection
from edge.contract import BrokerUnavailable
from edge.kafka_security import client_kwargs, diagnose
from edge.metrics import AgentMetrics
from edge.outbox import Outbox, Row

log = logging.getLogger(__name__)

ProducerFactory = Callable[[KafkaSection], Any]

BATCH_BYTES = 256 << 10
"""The producer's bound on one partition's record batch. kafka-python's default, 16 KiB, holds about three
telemetry windows: a drain of a few hundred rows became a hundred produce requests, and the producer's
network thread used ~10 % of a draining agent's CPU (~2 % at this bound). A batch must stay under the
broker's ``message.max.bytes`` (1 MiB by default); a larger record still goes alone."""


def make_producer(cfg: KafkaSection) -> KafkaProducer:
    """An idempotent ``acks=all`` producer, TLS and SASL per ``cfg``. Raises :class:`BrokerUnavailable`
    if no broker lets it in within ``bootstrap_timeout_ms``, saying why (:func:`edge.kafka_security.diagnose`:
    unreachable, untrusted certificate, refused login)."""
    try:
        return KafkaProducer(
            bootstrap_servers=cfg.bootstrap.split(","), client_id=cfg.client_id, acks="all", enable_idempotence=True,
            max_in_flight_requests_per_connection=5, linger_ms=5, batch_size=BATCH_BYTES, request_timeout_ms=cfg.request_timeout_ms,
            delivery_timeout_ms=max(cfg.delivery_timeout_ms, cfg.request_timeout_ms + 5),
            max_block_ms=cfg.request_timeout_ms, bootstrap_timeout_ms=cfg.bootstrap_timeout_ms,
            reconnect_backoff_max_ms=int(cfg.backoff_max_s * 1000), **client_kwargs(cfg),
        )
    except KafkaError as exc:
        why = diagnose(cfg.bootstrap, cfg, timeout_s=cfg.bootstrap_timeout_ms / 1000)
        raise BrokerUnavailable(f"kafka: {why} [{exc.__class__.__name__}: {exc}]") from exc


class Backoff:
    """Capped exponential backoff with full jitter; :meth:`reset` after a success."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.min_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return float(self.min_s + self._rng.random() * (ceiling - self.min_s))

    def reset(self) -> None:
        self.failures = 0


class Forwarder:
    """Moves rows from an :class:`Outbox` to Kafka until stopped."""

    def __init__(self, outbox: Outbox, cfg: KafkaSection, metrics: AgentMetrics, *,
                 producer_factory: ProducerFactory = make_producer, idle_s: float = 0.5) -> None:
        self.outbox = outbox
        self.cfg = cfg
        self.metrics = metrics
        self._factory = producer_factory
        self._idle_s = idle_s
        self._producer: Any = None
        self._backoff = Backoff(cfg.backoff_min_s, cfg.backoff_max_s)
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._deadline: float | None = None
        self._wake = threading.Event()
        self.forwarded = 0

    def wake(self) -> None:
        """Tell the forwarder new rows are there (called by the worker after an append)."""
        self._wake.set()

    def stop(self, deadline: float) -> None:
        """Ask :meth:`run` to finish: it keeps draining until the outbox is empty or
        ``time.monotonic()`` passes ``deadline``, then closes the producer."""
        self._deadline = deadline
        self._stop.set()
        self._wake.set()

    def abort(self) -> None:
        """Stop at once: cut a backoff wait short (the deadline passed)."""
        self._deadline = time.monotonic()
        self._stop.set()
        self._abort.set()
        self._wake.set()

    def _time_left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def run(self) -> None:
        """The forwarder thread's body. Never raises; errors are logged, counted and retried."""
        try:
            while True:
                left = self._time_left()
                if self._stop.is_set() and (self.outbox.rows == 0 or (left is not None and left <= 0)):
                    break
                try:
                    sent = self.drain_once()
                except Exception as exc:  # noqa: BLE001 - any producer failure: count, back off, rebuild
                    self._fail(exc)
                    continue
                if sent == 0 and not self._stop.is_set():
                    self._wake.wait(self._idle_s)
                    self._wake.clear()
        finally:
            self._close_producer()
            left = self.outbox.rows
            log.info("forwarder_stopped rows_left=%d forwarded=%d", left, self.forwarded)

    def drain_once(self) -> int:
        """Send the oldest batch, wait for every acknowledgement, delete the acknowledged rows.

        Returns the number of rows acknowledged. Raises :class:`KafkaError` when any send failed
        (after deleting the rows that did succeed) or when the producer cannot start, and
        :class:`BrokerUnavailable` naming the user and the topic when the broker's ACLs refuse a row
        (that row stays, the acknowledged rows around it are deleted).
        """
        rows = self.outbox.peek(self.cfg.batch_rows)
        if not rows:
            return 0
        producer = self._ensure_producer()
        futures = []
        for row in rows:
            try:
                futures.append((row, producer.send(row.topic, key=row.key, value=row.value)))
            except MessageSizeTooLargeError as exc:
                self._drop_poison(row, exc)  # would block the outbox forever
        self._await(producer, [f for _, f in futures])
        acked: list[Row] = []
        error: Exception | None = None
        failed: Row | None = None
        for row, fut in futures:
            if fut.succeeded():
                acked.append(row)
            elif error is None:
                error = fut.exception if fut.failed() else KafkaError(f"send of outbox row {row.id} did not complete")
                failed = row
        self.outbox.delete([r.id for r in acked])
        for row in acked:
            self.metrics.forwarded.labels(row.kind).inc()
        self.forwarded += len(acked)
        if acked:
            log.debug("outbox_forwarded rows=%d last_id=%d", len(acked), acked[-1].id)
        if isinstance(error, AuthorizationError) and failed is not None:
            raise BrokerUnavailable(self._refusal(failed, error)) from error
        if error is not None:
            raise error
        self._backoff.reset()
        self.metrics.kafka_connected.set(1)
        return len(acked)

    def _refusal(self, row: Row, exc: Exception) -> str:
        """Why the broker refused ``row``: who this agent is to Kafka and which topic (an ACL is missing)."""
        cfg = self.cfg
        who = f"user {cfg.username!r}" if cfg.username else f"the certificate {cfg.ssl_certfile!r}" if cfg.ssl_certfile else "this client"
        return (f"kafka: {who} may not write to topic {row.topic!r} ({exc.__class__.__name__}); the broker's ACLs must "
                f"allow it (edgewatch acls, docs/deploy.md); outbox row {row.id} waits")

    def _drop_poison(self, row: Row, exc: Exception) -> None:
        """Remove a row Kafka can never take (larger than ``max_request_size``), counted as shed."""
        self.outbox.delete([row.id])
        size = len(row.value) + len(row.key or b"")
        self.metrics.shed_rows.labels(row.kind).inc()
        self.metrics.shed_bytes.labels(row.kind).inc(size)
        log.error("outbox_row_dropped id=%d kind=%s topic=%s bytes=%d error=%s", row.id, row.kind, row.topic, size, exc)

    def _await(self, producer: Any, futures: list[Any]) -> None:
        """Wait until every send completed (kafka-python fails them after ``delivery_timeout_ms``);
        drop ``kafka_connected`` once a round has waited longer than ``request_timeout_ms``. During
        shutdown, give up at the deadline (the rows stay in the outbox)."""
        started = time.monotonic()
        limit = started + self.cfg.delivery_timeout_ms / 1000 + 5
        while not all(f.is_done for f in futures):
            now = time.monotonic()
            left = self._time_left()
            if now > limit or (left is not None and left <= 0):
                raise KafkaTimeoutError(f"{sum(not f.is_done for f in futures)} sends still pending after {now - started:.1f} s")
            if now - started > self.cfg.request_timeout_ms / 1000:
                self.metrics.kafka_connected.set(0)
            try:
                producer.flush(timeout=0.5)
            except KafkaTimeoutError:
                continue

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            self._producer = self._factory(self.cfg)
            log.info("kafka_producer_started bootstrap=%s client_id=%s", self.cfg.bootstrap, self.cfg.client_id)
        return self._producer

    def _fail(self, exc: Exception) -> None:
        self.metrics.forward_errors.inc()
        self.metrics.kafka_connected.set(0)
        self._close_producer()
        delay = self._backoff.next_delay()
        left = self._time_left()
        if left is not None:
            delay = max(0.0, min(delay, left))
        log.warning("kafka_forward_failed error=%s rows_waiting=%d retry_in_s=%.2f", exc.__class__.__name__ + ": " + str(exc)[:200],
                    self.outbox.rows, delay)
        self._abort.wait(delay)

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            close_producer(producer)


def close_producer(producer: KafkaProducer, timeout_s: float = 0.0) -> None:
    """Close ``producer``, waiting up to ``timeout_s`` for its unfinished sends; never raises.

    kafka-python's ``close()`` flushes first and raises on sends still unfinished (the brokers away)
    without stopping its sender thread; that thread is stopped too, or every outage would leak one.
    The records not sent are dropped: their rows are still in the outbox (or the store) and are sent again.
    """
    try:
        producer.close(timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a producer that cannot finish is discarded anyway
        log.debug("kafka_producer_close_failed error=%s", exc)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()

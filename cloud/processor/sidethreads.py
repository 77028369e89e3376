"""The threads ``edgewatch process`` runs beside the processor, each with a consumer group of its
own: the archive, the rollout monitor, the fleet watch and the escalation scorer. A failed one is
not left dead behind a healthy processor: it starts again after a backoff, counted in its
``restarts`` metric, and re-reads from its committed offsets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer
from prometheus_client import Counter

from cloud.processor.backends import open_store
from cloud.processor.config import ProcessorConfig
from cloud.processor.consumer import group_consumer, kafka_producer
from cloud.processor.store import Store
from edge.forwarder import close_producer

log = logging.getLogger(__name__)


def run_restarting(body: Callable[[], None], stop: threading.Event, restarts: Counter, what: str,
                   backoff_s: tuple[float, float] = (1.0, 60.0)) -> None:
    """Run ``body`` until it returns or ``stop`` is set; after each failure (logged as ``<what>_failed``,
    counted in ``restarts``) wait, then run it again: ``backoff_s`` is the first and the longest wait,
    doubling while failures follow each other within a minute."""
    first, longest = backoff_s
    delay = first
    while not stop.is_set():
        started = time.monotonic()
        try:
            body()
            return
        except Exception:
            restarts.inc()
            delay = first if time.monotonic() - started > 60 else delay
            log.exception("%s_failed restart_in_s=%.1f", what, delay)
            stop.wait(delay)
            delay = min(delay * 2, longest)


def run_with_store(config: ProcessorConfig, work: Callable[[Store], None], stop: threading.Event, restarts: Counter,
                   what: str, backoff_s: tuple[float, float] = (1.0, 60.0)) -> None:
    """:func:`run_restarting` of ``work`` on a store connection of its own, opened for each start and closed after."""
    def body() -> None:
        store = open_store(config.store)
        try:
            work(store)
        finally:
            store.close()

    run_restarting(body, stop, restarts, what, backoff_s)


def consume(config: ProcessorConfig, topic: str, *, group_id: str, name: str, stop: threading.Event,
            handle: Callable[[Sequence[Any], KafkaProducer], object], tick: Callable[[KafkaProducer], object],
            interval_s: float) -> None:
    """The loop of a side thread until ``stop`` is set: poll ``topic`` in ``group_id``, ``handle`` each
    poll's records (kafka-python's, in partition order), commit after it, and ``tick`` every
    ``interval_s``; with a producer of its own (client id ``<kafka.client_id>-<name>``) for both."""
    k = config.kafka
    producer = kafka_producer(k, f"{k.client_id}-{name}")
    try:
        consumer = group_consumer(k, topic, group_id=group_id, client_id=f"{k.client_id}-{name}")
    except BaseException:
        close_producer(producer, 10.0)
        raise
    log.info("%s_started topic=%s group=%s", name, topic, group_id)
    next_tick = 0.0
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=int(k.poll_timeout_s * 1000))
            records = [r for rs in polled.values() for r in rs]
            if records:
                handle(records, producer)
                consumer.commit()
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + interval_s
                tick(producer)
    finally:
        consumer.close(autocommit=False)
        close_producer(producer, 10.0)
        log.info("%s_stopped", name)

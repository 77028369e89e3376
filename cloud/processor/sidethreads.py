"""The threads ``edgewatch process`` runs beside the processor, each with a consumer group of its
own: the archive, the rollout monitor, the fleet watch and the escalation scorer. A failed one is
not left dead behind a healthy processor: it starts again after a backoff, counted in its
``restarts`` metric, and re-reads from its committed offsets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter

from cloud.processor.backends import open_store
from cloud.processor.config import ProcessorConfig
from cloud.processor.store import Store

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

"""The processor's Prometheus metrics, registered on an injected :class:`CollectorRegistry`.

Names follow ``edgewatch_processor_<thing>_<unit>``; labels are bounded (partition numbers,
alert kinds and actions, a fixed set of dead-letter causes).
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProcessorMetrics:
    """Created once per processor (never at import); pass a fresh registry in tests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "edgewatch_processor_"
        self.events_consumed = Counter(p + "events_consumed_total", "Kafka records read from the anomalies topic",
                                       registry=registry)
        self.events_processed = Counter(p + "events_processed_total", "Valid anomaly events stored for the first time",
                                        registry=registry)
        self.duplicates_dropped = Counter(p + "duplicates_dropped_total", "Events whose event_id was already stored",
                                          registry=registry)
        self.late_events = Counter(p + "late_events_total", "Events older than the partition watermark",
                                   ["applied"], registry=registry)
        self.deadletters = Counter(p + "deadletters_total",
                                   "Records that failed the contract, or whose window_end is ahead of the clock (cause future)",
                                   ["cause"], registry=registry)
        self.deadletters_published = Counter(p + "deadletters_published_total", "Dead letters produced to the dead-letter topic",
                                             registry=registry)
        self.alerts_emitted = Counter(p + "alerts_emitted_total", "Alerts produced to the alerts topic", ["kind", "action"],
                                      registry=registry)
        self.store_errors = Counter(p + "store_errors_total", "Failed store transactions (the batch is retried)",
                                    registry=registry)
        self.processing_seconds = Histogram(p + "processing_seconds", "Time to process one polled batch of one partition",
                                            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=registry)
        self.incidents_open = Gauge(p + "incidents_open", "Incidents open in the partitions this process owns", ["kind"],
                                    registry=registry)
        self.lag = Gauge(p + "lag_records", "Records behind the partition end", ["partition"], registry=registry)
        self.incidents_opened = incidents_opened(registry)


_OPENED: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def incidents_opened(registry: CollectorRegistry) -> Counter:
    """``edgewatch_processor_incidents_opened_total{kind}``: one counter per registry, shared by the processor's
    outbox and the fleet watch thread (both publish incident alerts); counted when an open alert is acked."""
    counter = _OPENED.get(registry)
    if counter is None:
        counter = _OPENED[registry] = Counter("edgewatch_processor_incidents_opened_total",
                                              "Incidents opened (their open alert produced), by kind", ["kind"], registry=registry)
    return counter

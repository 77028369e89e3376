"""The agent's Prometheus metrics, registered on an injected :class:`CollectorRegistry`.

Names follow ``edgewatch_agent_<thing>_<unit>``; labels come from bounded sets only (reject
reasons, drop reasons, outbox kinds). Nothing is registered at import: build one
:class:`AgentMetrics` per agent, and serve it with :func:`serve`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import get_args
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from edge.contract.errors import ErrorKind
from edge.contract.event import FAULT_CHECKS
from edge.contract.update import STATUS_ACTIONS
from edge.outbox import KINDS
from edge.shadow import REJECT_REASONS as SHADOW_REJECT_REASONS

_go_float: Callable[[float], str] = floatToGoString  # the "le" label as prometheus-client's own histograms spell it

REJECT_REASONS = (*get_args(ErrorKind), "unknown_channel", "missing_channel", "bad_topic", "too_many_devices")
DROP_REASONS = ("late", "duplicate", "future", "past")
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class BatchHistogram(Collector):
    """A histogram (``_bucket``, ``_count``, ``_sum``, as prometheus-client's) that takes a whole
    array per call: one numpy pass instead of a Python call per value, for the per-window score
    ratio. Thread-safe: the worker observes, the HTTP thread collects."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.array([*buckets, math.inf] if buckets[-1] != math.inf else buckets, dtype=np.float64)
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)  # per bucket, not cumulative
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value of ``values`` (NaN is not counted)."""
        values = values[~np.isnan(values)]
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._bounds))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many(np.array([value], dtype=np.float64))

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        buckets = [(_go_float(b), c) for b, c in zip(self._bounds.tolist(), cumulative, strict=True)]
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)]


class _AdaptiveCollector(Collector):
    """``edgewatch_agent_device_threshold``, ``_device_warming`` and ``_device_alert_budget_burn``
    per device; the worker thread owns the state, the HTTP thread reads a snapshot."""

    def __init__(self, devices: Callable[[], Iterable[tuple[str, float, bool, float]]]) -> None:
        self._devices = devices

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # dynamic labels: nothing to check at registration

    def collect(self) -> Iterable[GaugeMetricFamily]:
        p = "edgewatch_agent_device_"
        threshold = GaugeMetricFamily(p + "threshold", "The device's current threshold (adaptive layer), in score units",
                                      labels=["device_id"])
        warming = GaugeMetricFamily(p + "warming", "1 while the device warms up from the model's prior", labels=["device_id"])
        burn = GaugeMetricFamily(p + "alert_budget_burn", "Recent share of the device's windows over its threshold divided by "
                                 "adaptive.target_rate (1: on budget)", labels=["device_id"])
        for device_id, thr, warm, rate in list(self._devices()):
            threshold.add_metric([device_id], thr)
            warming.add_metric([device_id], 1.0 if warm else 0.0)
            burn.add_metric([device_id], rate)
        return [threshold, warming, burn]


class AgentMetrics:
    """Every metric the agent exports. Thread-safe (prometheus-client metrics are)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "edgewatch_agent_"
        self.messages_received = Counter(p + "messages_received", "MQTT messages taken off the intake queue", registry=registry)
        self.readings_received = Counter(p + "readings_received", "Readings decoded from accepted payloads", registry=registry)
        self.rejected = Counter(p + "payloads_rejected", "Payloads refused and dead-lettered, by reason", ["reason"],
                                registry=registry)
        self.readings_dropped = Counter(p + "readings_dropped",
                                        "Readings dropped by the windows (late, duplicate, future or past)",
                                        ["reason"], registry=registry)
        self.window_resets = Counter(p + "window_resets", "Windows restarted after a gap in a device's readings", registry=registry)
        self.devices_tracked = Gauge(p + "devices_tracked", "Devices whose windows the agent holds (at most agent.max_devices)",
                                     registry=registry)
        self.devices_evicted = Counter(p + "devices_evicted", "Devices forgotten after agent.device_idle_evict_s without a "
                                       "reading (their partial window lost)", registry=registry)
        self.windows_scored = Counter(p + "windows_scored", "Windows scored by the model", registry=registry)
        self.inference_seconds = Histogram(p + "inference_seconds", "Wall time of one batched inference call",
                                           buckets=INFERENCE_BUCKETS, registry=registry)
        self.inference_batch = Histogram(p + "inference_batch_windows", "Windows per inference call",
                                         buckets=BATCH_BUCKETS, registry=registry)
        self.score_ratio = BatchHistogram(p + "score_threshold_ratio", "Window score divided by its device's threshold",
                                          RATIO_BUCKETS, registry)
        self.invalid_scores = Counter(p + "invalid_scores", "Windows whose score was not finite (skipped)", registry=registry)
        self.anomalies = Counter(p + "anomalies", "Anomaly events written to the outbox", registry=registry)
        self.sensor_faults = Counter(p + "sensor_faults", "Sensor fault events written to the outbox (one per fault episode, "
                                     "repeated every sensor_health.repeat_windows), by check", ["check"], registry=registry)
        self.anomalies_suppressed = Counter(p + "anomalies_suppressed", "Windows over the threshold not reported as process "
                                            "anomalies because a sensor health check failed on them", registry=registry)
        self.telemetry_windows = Counter(p + "telemetry_windows", "Telemetry windows written to the outbox", ["reason"],
                                         registry=registry)
        self.queue_depth = Gauge(p + "queue_depth_messages", "Messages waiting in the intake queue", registry=registry)
        self.queue_bytes = Gauge(p + "queue_depth_bytes", "Payload bytes waiting in the intake queue", registry=registry)
        self.queue_dropped = Counter(p + "queue_dropped_messages",
                                     "Messages dropped by the intake queue's overflow policy (full in messages or bytes)",
                                     registry=registry)
        self.outbox_rows = Gauge(p + "outbox_rows", "Rows waiting in the outbox", registry=registry)
        self.outbox_bytes = Gauge(p + "outbox_bytes", "Payload bytes waiting in the outbox", registry=registry)
        self.shed_rows = Counter(p + "outbox_shed_rows", "Outbox rows shed or refused because the bound was reached", ["kind"],
                                 registry=registry)
        self.shed_bytes = Counter(p + "outbox_shed_bytes", "Payload bytes shed or refused by the outbox", ["kind"],
                                  registry=registry)
        self.forwarded = Counter(p + "forwarded_messages", "Outbox rows acknowledged by Kafka", ["kind"], registry=registry)
        self.forward_errors = Counter(p + "forward_errors", "Failed Kafka sends or producer start-ups", registry=registry)
        self.mqtt_connected = Gauge(p + "mqtt_connected", "1 while the MQTT session is connected", registry=registry)
        self.kafka_connected = Gauge(p + "kafka_connected", "1 while the last Kafka exchange succeeded", registry=registry)
        self.model = Info(p + "model", "The model in use", registry=registry)
        self.shadow_model = Info(p + "shadow_model", "The candidate scoring in shadow (empty version: none)", registry=registry)
        self.model_updates = Counter(p + "model_updates", "Model update decisions, by action", ["action"], registry=registry)
        self.model_rejections = Counter(p + "model_rejections", "Candidate models rejected in shadow, by short reason "
                                        "(the status event carries the full one)", ["reason"], registry=registry)
        for action in STATUS_ACTIONS:
            self.model_updates.labels(action)
        for shadow_reason in SHADOW_REJECT_REASONS:
            self.model_rejections.labels(shadow_reason)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for check in FAULT_CHECKS:
            self.sensor_faults.labels(check)
        for reason in DROP_REASONS:
            self.readings_dropped.labels(reason)
        for kind in KINDS:
            self.shed_rows.labels(kind)
            self.shed_bytes.labels(kind)
            self.forwarded.labels(kind)

    def track_adaptive(self, devices: Callable[[], Iterable[tuple[str, float, bool, float]]]) -> None:
        """Per-device gauges of the adaptive layer, read at scrape time from ``devices()``:
        ``(device_id, threshold, warming, burn)`` for every device the agent holds (bounded by
        ``agent.max_devices``)."""
        self.registry.register(_AdaptiveCollector(devices))

    def track_queue(self, depth: Callable[[], int], size: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))
        self.queue_bytes.set_function(lambda: float(size()))

    def track_outbox(self, rows: Callable[[], int], size: Callable[[], int]) -> None:
        self.outbox_rows.set_function(lambda: float(rows()))
        self.outbox_bytes.set_function(lambda: float(size()))


def serve(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` from a daemon thread; raises :class:`OSError` if the port is taken."""
    return start_http_server(port, addr=host, registry=registry)

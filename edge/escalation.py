"""Which scored windows the agent escalates to the cloud, under a per-device cap.

A window whose score divided by its threshold falls within ``[escalation] band_low`` ..
``band_high`` (fractions of the threshold: 0.8-1.25 sends the windows just under and just over
it) is borderline: the edge model is most often wrong there. Each is sent, raw, as an
:class:`~edge.contract.escalation.Escalation` record to ``kafka.escalations_topic``, with the
event id when the window also fired. A token bucket per device (``max_per_device_per_hour``
tokens an hour, at most ``burst`` held) caps the bandwidth: a window over the cap is counted
(``outcome="capped"``) and not sent. What each device sent, in windows and bytes, is exported
per device, so its bandwidth is the rate of those counters.

Pure logic with the pipeline's clock; called on the worker thread in window order per device.
State is per device and forgotten with the device (:meth:`Escalator.forget`). Outbox records of
kind ``escalation`` are shed before dead letters, after telemetry, when the outbox is full.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from edge.contract import ModelManifest, make_event_id
from edge.contract.escalation import Escalation, encode_escalation
from edge.outbox import Record
from edge.windows import WindowBatch

OUTCOMES = ("sent", "capped")


@dataclass(frozen=True)
class EscalationSettings:
    """``[escalation]``: the band (fractions of the threshold) and the per-device cap."""

    enabled: bool = False
    band_low: float = 0.8
    band_high: float = 1.25
    max_per_device_per_hour: float = 60.0
    burst: int = 10  # windows a device may send at once after a quiet spell

    def problems(self) -> list[tuple[str, float, str]]:
        """(key, value, rule) for each setting out of range."""
        out: list[tuple[str, float, str]] = []
        if not 0 < self.band_low <= 1:
            out.append(("band_low", self.band_low, "must be in (0, 1]"))
        if self.band_high < 1:
            out.append(("band_high", self.band_high, "must be >= 1"))
        if self.max_per_device_per_hour <= 0:
            out.append(("max_per_device_per_hour", self.max_per_device_per_hour, "must be > 0"))
        if self.burst < 1:
            out.append(("burst", self.burst, "must be >= 1"))
        return out


@dataclass
class _Bucket:
    tokens: float
    at: float
    windows: int = 0
    bytes: int = 0


class EscalationMetrics:
    """``edgewatch_agent_escalations_total{outcome}`` and, per device, the windows and bytes sent."""

    def __init__(self, registry: CollectorRegistry, devices: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.escalations = Counter("edgewatch_agent_escalations", "Borderline windows escalated to the cloud (sent) or "
                                   "over the device's cap (capped)", ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.escalations.labels(outcome)
        registry.register(_DeviceCollector(devices))


class _DeviceCollector(Collector):
    """Per-device escalation counters, read at scrape time (devices bounded by ``agent.max_devices``)."""

    def __init__(self, devices: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self._devices = devices

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []

    def collect(self) -> Iterable[CounterMetricFamily]:
        p = "edgewatch_agent_device_escalated_"
        windows = CounterMetricFamily(p + "windows", "Windows the device escalated to the cloud", labels=["device_id"])
        size = CounterMetricFamily(p + "bytes", "Payload bytes of the device's escalations", labels=["device_id"])
        for device_id, n, b in list(self._devices()):
            windows.add_metric([device_id], n)
            size.add_metric([device_id], b)
        return [windows, size]


class Escalator:
    """Selects and encodes a device's borderline windows; see the module docstring."""

    def __init__(self, settings: EscalationSettings, topic: str, agent_id: str, registry: CollectorRegistry) -> None:
        self.s = settings
        self.topic = topic
        self.agent_id = agent_id
        self._rate_s = settings.max_per_device_per_hour / 3600.0
        self._buckets: dict[str, _Bucket] = {}
        self.metrics = EscalationMetrics(registry, lambda: [(d, b.windows, b.bytes) for d, b in list(self._buckets.items())])

    def select(self, batch: WindowBatch, device: str, idx: np.ndarray, scores: np.ndarray, thresholds: np.ndarray,
               fire: np.ndarray, manifest: ModelManifest, channels: tuple[str, ...], now: float,
               skip: np.ndarray | None = None) -> list[Record]:
        """The escalation records of one device's scored windows (``idx``: batch rows; ``scores``, ``thresholds``,
        ``fire``: per row), in window order; windows over the cap are counted, not sent. ``skip`` (per row): windows
        not to escalate whatever their score (a failed sensor check: the sensor, not the process, is in question)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = scores / thresholds
        borderline = (thresholds > 0) & (ratio >= self.s.band_low) & (ratio <= self.s.band_high)
        band = np.flatnonzero(borderline if skip is None else borderline & ~skip)
        if not len(band):
            return []
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = _Bucket(float(self.s.burst), now)
        bucket.tokens = min(float(self.s.burst), bucket.tokens + (now - bucket.at) * self._rate_s)
        bucket.at = now
        records: list[Record] = []
        key = device.encode()
        for j in band.tolist():
            if bucket.tokens < 1.0:
                self.metrics.escalations.labels("capped").inc(len(band) - len(records))
                break
            bucket.tokens -= 1.0
            window = batch.window(int(idx[j]), device)
            end = window.end
            value = encode_escalation(Escalation(
                device_id=device, agent_id=self.agent_id, model_name=manifest.name, model_version=manifest.version,
                model_sha256=manifest.sha256, window_start=window.start, window_end=end, channels=channels,
                ts=tuple(window.ts.tolist()), values=tuple(tuple(r) for r in window.values.tolist()),
                score=float(scores[j]), threshold=float(thresholds[j]),
                event_id=make_event_id(device, end, manifest.sha256) if fire[j] else ""))
            records.append(Record("escalation", self.topic, key, value))
            bucket.windows += 1
            bucket.bytes += len(value) + len(key)
        if records:
            self.metrics.escalations.labels("sent").inc(len(records))
        return records

    def forget(self, device_id: str) -> None:
        """Drop a device's bucket and counters (the agent forgot the device)."""
        self._buckets.pop(device_id, None)

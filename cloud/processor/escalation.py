"""The processor's escalation thread (``[escalation] enabled = true``): borderline windows scored again.

A consumer group of its own (``escalation.group_id``) reads ``kafka.escalations_topic``. Each
poll's escalations are decoded and checked; the valid ones are scored by the heavier model
(:class:`~cloud.processor.cloudscore.CloudScorer`, loaded from the registry at start) in one call
per member, and their verdicts stored in one transaction (:func:`cloud.processor.verdicts.store_verdicts`);
only then are the offsets committed, so a crash re-scores, and the first verdict stored is kept.

Bad input is data: a payload over ``escalation.max_payload_bytes``, one that fails the contract,
one from an edge model the registry does not hold (name, version and sha256 must match a
registered version) or whose window does not fit the cloud model, goes to the dead-letter topic
with the reason in its headers (``edgewatch-reason``: ``<label>: <detail>``) and is counted in
``edgewatch_processor_escalation_deadletters_total{reason}``.

Every ``escalation.interval_s`` the held incident alerts are decided
(:func:`cloud.processor.verdicts.decide_held`): released ones are produced here, routed by
``[alerts] routes`` as the outbox routes them (left for the outbox's sweep if the broker refuses
them); suppressed ones never are. :func:`run_escalation` blocks until ``stop`` is set and starts
the thread again after a failure, like the archive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter

from cloud.processor.alerts import deadletter_headers
from cloud.processor.cloudscore import CloudScorer
from cloud.processor.config import ProcessorConfig
from cloud.processor.routes import AlertRoutes, parse_routes
from cloud.processor.sidethreads import consume, run_with_store
from cloud.processor.store import Store
from cloud.processor.verdicts import Gate, backfill_events, decide_held, mark_released, store_verdicts
from cloud.registry import Registry
from edge.contract import ContractError
from edge.contract.escalation import Escalation, decode_escalation

log = logging.getLogger(__name__)

DEAD_REASONS = ("too_large", "not_json", "non_finite", "wrong_type", "invalid", "unknown_model", "shape")
Bad = tuple[int, int, str, str, str, bytes]  # (partition, offset, field, reason label, detail, payload)


class EscalationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "edgewatch_processor_escalation_"
        self.verdicts = Counter(p + "verdicts_total", "Escalated windows scored by the cloud model, by verdict", ["verdict"],
                                registry=registry)
        self.deadletters = Counter(p + "deadletters_total", "Escalations dead-lettered, by reason", ["reason"], registry=registry)
        self.alerts = Counter(p + "alerts_total", "Held incident alerts decided: released or suppressed (every event dismissed)",
                              ["decision"], registry=registry)
        self.restarts = Counter(p + "restarts_total", "Times the escalation thread failed and was started again", registry=registry)
        for v in ("confirmed", "dismissed"):
            self.verdicts.labels(v)
        for r in DEAD_REASONS:
            self.deadletters.labels(r)
        for d in ("released", "suppressed"):
            self.alerts.labels(d)


class EscalationScorer:
    """See the module docstring. Runs on the calling thread; owns its store connection and Kafka clients."""

    def __init__(self, config: ProcessorConfig, store: Store, scorer: CloudScorer, metrics: EscalationMetrics,
                 stop: threading.Event, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.scorer = scorer
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        e = config.escalation
        self.registry = Registry(Path(e.registry))
        self.gate = Gate(e.band_low, e.band_high, config.incidents.window_s, e.verdict_wait_s)
        self._known: dict[tuple[str, str], str | None] = {}  # (edge model, version) -> its registered sha256
        self.routes = AlertRoutes(parse_routes(config.alerts.routes, "[alerts]"), config.kafka.alerts_topic)

    def run(self) -> None:
        e = self.config.escalation
        log.info("escalation_scorer model=%s confirm_ratio=%g", self.scorer.name, self.scorer.confirm_ratio)
        consume(self.config, self.config.kafka.escalations_topic, group_id=e.group_id, name="escalation", stop=self.stop,
                handle=lambda records, producer: self.on_records([(r.partition, r.offset, r.value) for r in records], producer),
                tick=self.tick, interval_s=e.interval_s)

    def on_records(self, records: Sequence[tuple[int, int, bytes | None]], producer: KafkaProducer | None) -> int:
        """Score and store one poll's escalations, dead-letter the bad ones; returns how many were stored."""
        good: list[Escalation] = []
        bad: list[Bad] = []
        for partition, offset, value in records:
            try:
                esc = decode_escalation(value or b"", max_bytes=self.config.escalation.max_payload_bytes)
                self._check(esc)
                good.append(esc)
            except _Refused as exc:
                bad.append((partition, offset, exc.field, exc.label, str(exc), value or b""))
            except ContractError as exc:
                bad.append((partition, offset, exc.field, exc.kind, str(exc), value or b""))
        if good:
            self._store(good)
        if bad:
            self._dead_letter(bad, producer)
        return len(good)

    def _check(self, esc: Escalation) -> None:
        key = (esc.model_name, esc.model_version)
        if key not in self._known:
            if len(self._known) >= 1000:  # bounded whatever names arrive
                self._known.clear()
            try:
                self._known[key] = _sha_of(self.registry.version_dir(*key))
            except Exception:  # noqa: BLE001  # ConfigError (not registered) or an unreadable manifest: unknown
                self._known[key] = None
        if self._known[key] != esc.model_sha256:
            raise _Refused("model_name", "unknown_model", f"edge model {esc.model_name} {esc.model_version} "
                           f"(sha256 {esc.model_sha256[:12]}) is not in the registry {self.registry.root}")
        if esc.channels != self.scorer.channels or len(esc.ts) != self.scorer.window_length:
            raise _Refused("channels", "shape", f"window {len(esc.ts)} x {list(esc.channels)} does not fit the cloud model's "
                           f"{self.scorer.window_length} x {list(self.scorer.channels)}")

    def _store(self, good: list[Escalation]) -> None:
        from edge.contract.escalation import encode_escalation

        windows = np.array([e.values for e in good], dtype=np.float32)
        cloud = self.scorer.ratios(windows)
        verdicts = self.scorer.verdicts(cloud)
        now = self.clock()
        rows = []
        for e, c, v in zip(good, cloud.tolist(), verdicts, strict=True):
            edge = e.score / e.threshold if e.threshold > 0 else float("inf")
            rows.append((e.escalation_id, e.device_id, e.agent_id, e.event_id, e.window_end, f"{e.model_name}:{e.model_version}",
                         edge, self.scorer.name, c, v, abs(edge - c), encode_escalation(e).decode(), now))
            self.metrics.verdicts.labels(v).inc()
        with self.store.transaction():
            store_verdicts(self.store, rows, self.config.incidents.window_s)
        log.info("escalations_scored count=%d confirmed=%d dismissed=%d", len(rows), verdicts.count("confirmed"),
                 verdicts.count("dismissed"))

    def _dead_letter(self, bad: list[Bad], producer: KafkaProducer | None) -> None:
        topic = self.config.kafka.escalations_topic
        for partition, offset, field, label, detail, payload in bad:
            self.metrics.deadletters.labels(label if label in DEAD_REASONS else "invalid").inc()
            log.warning("escalation_deadlettered partition=%d offset=%d reason=%s detail=%s", partition, offset, label, detail[:200])
            if producer is not None:
                producer.send(self.config.kafka.deadletter_topic, key=f"{topic}/{partition}".encode(), value=payload,
                              headers=deadletter_headers(topic, partition, offset, field, f"{label}: {detail}"[:1000]))
        if producer is not None:
            producer.flush(30)

    def tick(self, producer: KafkaProducer | None = None) -> tuple[int, int]:
        """Decide the held alerts once: returns (released, suppressed)."""
        now = self.clock()
        with self.store.transaction():
            backfill_events(self.store, now - 600.0)
        released, suppressed = decide_held(self.store, self.gate, now)
        self.metrics.alerts.labels("suppressed").inc(suppressed)
        if released:
            published = False
            if producer is not None:
                try:  # left unpublished, the processor's outbox sweep sends them after kafka.outbox_orphan_s
                    sends = [(*self.routes.route(p), i) for _, i, p in released]  # [alerts] routes, as the outbox
                    futures = [producer.send(topic, key=i.encode(), value=p.encode()) for topic, p, i in sends]
                    for f in futures:
                        f.get(30)
                    published = True
                except Exception as exc:  # noqa: BLE001  # kafka's errors: the sweep retries
                    log.warning("escalation_alerts_unpublished count=%d error=%r", len(released), exc)
            mark_released(self.store, [a for a, _, _ in released], self.clock(), published)
            self.metrics.alerts.labels("released").inc(len(released))
        if released or suppressed:
            log.info("held_alerts_decided released=%d suppressed=%d", len(released), suppressed)
        return len(released), suppressed


class _Refused(Exception):
    def __init__(self, field: str, label: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.label = label


def _sha_of(path: Path) -> str:
    from edge.detector import load_manifest

    return load_manifest(path).sha256


def run_escalation(config: ProcessorConfig, stop: threading.Event, registry: CollectorRegistry, *,
                   backoff_s: tuple[float, float] = (1.0, 60.0), clock: Callable[[], float] = time.time) -> None:
    """Thread entry used by ``edgewatch process`` when ``[escalation] enabled = true``: the scorer, on a store
    connection of its own, until ``stop`` is set; started again after a failure as the archive is. The model is
    loaded on each start (a :class:`~edge.contract.ConfigError` for a model the registry lacks is logged and retried)."""
    metrics = EscalationMetrics(registry)
    e = config.escalation

    def work(store: Store) -> None:
        scorer = CloudScorer.from_registry(Path(e.registry), e.model, confirm_ratio=e.confirm_ratio, threads=e.threads)
        EscalationScorer(config, store, scorer, metrics, stop, clock).run()

    run_with_store(config, work, stop, metrics.restarts, "escalation_scorer", backoff_s)

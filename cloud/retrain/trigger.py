"""The drift trigger: a Kafka consumer of ``edgewatch.alerts`` that starts a retraining of the
affected model when a drift alert opens, with a cool-down per model.

Decisions per alert (counted in ``edgewatch_retrain_alerts_total{decision}``):

- ``started``: a ``drift``/``open`` alert naming a model with no job queued or running and whose
  last job ended at least ``cooldown_s`` ago (or never ran): a job is submitted.
- ``skipped_running``: a job for that model is queued or running.
- ``skipped_cooldown``: its last job ended less than ``cooldown_s`` ago, whatever its outcome (a
  failing job does not become a hot loop).
- ``ignored``: not a drift opening (incidents, closes) or a drift alert without a model name.
- ``invalid``: the payload breaks the alert contract (logged with the reason, skipped).

Jobs run on a pool of ``max_jobs`` worker threads; a job for another model waits for a free
worker. Offsets are committed after each polled batch is decided, so a restart does not replay
decided alerts (and the in-memory cool-down starts empty). :meth:`DriftTrigger.run` blocks on the
calling thread until ``stop`` is set; then it stops consuming, asks running jobs to stop at their
next stage boundary and waits up to ``drain_timeout_s`` for them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import KafkaConsumer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cloud.kafka_groups import subscribe
from cloud.retrain.config import TriggerSection
from edge.config_parse import check_host_ports
from edge.contract import Alert, ContractError, decode_alert
from edge.kafka_security import client_kwargs

if TYPE_CHECKING:
    from cloud.retrain.config import RetrainConfig
    from cloud.retrain.job import Release, RetrainInputs, Watch

log = logging.getLogger(__name__)
JobRunner = Callable[[str, Alert, Callable[[], bool]], Any]  # (model, alert, should_stop) -> exit code or RetrainResult
_OUTCOMES = {0: "registered", 3: "rejected", 4: "no_data"}


@dataclass
class _ModelState:
    busy: bool = False
    last_end: float | None = None
    jobs: int = 0
    skipped: int = 0


@dataclass
class TriggerMetrics:
    alerts: Counter
    jobs: Counter
    running: Gauge
    seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TriggerMetrics:
        p = "edgewatch_retrain_"
        return cls(Counter(p + "alerts_total", "Alerts seen by the drift trigger, by decision", ["decision"], registry=registry),
                   Counter(p + "jobs_total", "Retraining jobs by outcome", ["outcome"], registry=registry),
                   Gauge(p + "jobs_running", "Retraining jobs queued or running", registry=registry),
                   Histogram(p + "job_seconds", "Duration of retraining jobs", registry=registry,
                             buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)))


@dataclass
class DriftTrigger:
    """See the module docstring. ``clock`` (monotonic seconds) decides the cool-down."""

    section: TriggerSection
    runner: JobRunner
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (model or "", decision), in order

    def __post_init__(self) -> None:
        """Raises :class:`ConfigError` on a bad ``section.bootstrap`` (a flag may have replaced the loaded one)."""
        check_host_ports(self.section.bootstrap, "trigger.bootstrap", "retrain --on-drift ([trigger] or --kafka-bootstrap)")
        self.metrics = TriggerMetrics.create(self.registry)
        self.models: dict[str, _ModelState] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.section.max_jobs, thread_name_prefix="retrain")
        self._futures: list[Future[None]] = []

    def run(self) -> None:
        """Consume until ``stop`` is set, then drain; blocks. Raises kafka-python's errors on a broker it cannot use."""
        s = self.section
        consumer = KafkaConsumer(bootstrap_servers=s.bootstrap, group_id=s.group_id, client_id=s.client_id,
                                 enable_auto_commit=False, auto_offset_reset=s.auto_offset_reset,
                                 session_timeout_ms=10_000, heartbeat_interval_ms=2_000, **client_kwargs(s))
        log.info("retrain_trigger_started topic=%s group=%s cooldown_s=%g", s.alerts_topic, s.group_id, s.cooldown_s)
        try:
            subscribe(consumer, [s.alerts_topic])
            while not self.stop.is_set():
                batch = consumer.poll(timeout_ms=int(s.poll_timeout_s * 1000))
                for records in batch.values():
                    for record in records:
                        self.on_payload(record.value)
                if batch:
                    consumer.commit()
        finally:
            consumer.close(autocommit=False)
            self.drain()

    def on_payload(self, payload: bytes | None) -> str:
        """Decode one alert record and decide; returns the decision."""
        try:
            if payload is None:
                raise ContractError("$", None, "an alert record needs a value")
            alert = decode_alert(payload)
        except ContractError as exc:
            log.warning("retrain_alert_invalid reason=%s", exc)
            return self._count("", "invalid")
        return self.on_alert(alert)

    def on_alert(self, alert: Alert) -> str:
        """Decide what one alert does (see the module docstring); submits the job when it starts one."""
        if alert.kind != "drift" or alert.action != "open" or not alert.model_name:
            return self._count(alert.model_name, "ignored")
        model = alert.model_name
        with self._lock:
            st = self.models.setdefault(model, _ModelState())
            now = self.clock()
            if st.busy:
                decision = "skipped_running"
            elif st.last_end is not None and now - st.last_end < self.section.cooldown_s:
                decision = "skipped_cooldown"
            else:
                decision = "started"
                st.busy, st.jobs = True, st.jobs + 1
                self.metrics.running.inc()
                self._futures.append(self._pool.submit(self._job, model, alert))
            if decision != "started":
                st.skipped += 1
        log.info("retrain_alert_decided model=%s decision=%s alert_id=%s devices=%s statistic=%s", model, decision,
                 alert.alert_id, ",".join(alert.device_ids), alert.statistic)
        return self._count(model, decision)

    def _job(self, model: str, alert: Alert) -> None:
        started = time.monotonic()
        outcome = "failed"
        try:
            value = self.runner(model, alert, self.stop.is_set)
            code = getattr(value, "exit_code", value)
            outcome = _OUTCOMES.get(int(code), "failed") if isinstance(code, int) else "failed"
            log.info("retrain_job_finished model=%s outcome=%s reason=%s", model, outcome, getattr(value, "reason", ""))
        except Exception as exc:
            if self.stop.is_set():  # cancelled between two stages on shutdown: nothing was registered
                outcome = "cancelled"
                log.info("retrain_job_cancelled model=%s reason=%s", model, exc)
            else:
                log.exception("retrain_job_failed model=%s alert_id=%s", model, alert.alert_id)
        finally:
            self.metrics.jobs.labels(outcome).inc()
            self.metrics.seconds.observe(time.monotonic() - started)
            self.metrics.running.dec()
            with self._lock:
                st = self.models[model]
                st.busy, st.last_end = False, self.clock()

    def _count(self, model: str, decision: str) -> str:
        self.metrics.alerts.labels(decision).inc()
        with self._lock:
            self.decisions.append((model, decision))
        return decision

    def drain(self) -> bool:
        """Wait up to ``drain_timeout_s`` for submitted jobs; True when all finished."""
        deadline = time.monotonic() + self.section.drain_timeout_s
        for f in list(self._futures):
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("retrain_trigger_drain_timeout timeout_s=%g", self.section.drain_timeout_s)
                self._pool.shutdown(wait=False, cancel_futures=True)
                return False
        self._pool.shutdown(wait=True)
        log.info("retrain_trigger_stopped jobs=%d", len(self._futures))
        return True


def drift_runner(section: TriggerSection, *, registry: Path, inputs: RetrainInputs, release: Release | None = None,
                 config: RetrainConfig | None = None, watch: Watch | None = None) -> JobRunner:
    """The trigger's usual job: :func:`cloud.retrain.job.retrain` of the alert's model on ``inputs``
    (the archive) since the alert's event time minus ``section.lookback_s``, with ``exclude_flagged``
    set from ``section.exclude_flagged`` (after a drift, most windows the live model flags are the new
    normal, not faults; true-positive incidents stay excluded); the trigger's stop check between stages."""
    from cloud.retrain.config import RetrainConfig
    from cloud.retrain.job import Release, Watch

    base = config or RetrainConfig()
    config = dataclasses.replace(base, retrain=dataclasses.replace(base.retrain, exclude_flagged=section.exclude_flagged))
    release, watch = release or Release(), watch or Watch()

    def run(model: str, alert: Alert, should_stop: Callable[[], bool]) -> Any:
        from cloud.retrain.job import retrain

        return retrain(model, registry=registry, inputs=dataclasses.replace(inputs, since=alert.opened_at - section.lookback_s),
                       release=release, config=config, watch=dataclasses.replace(watch, should_stop=should_stop),
                       trigger=f"drift alert {alert.alert_id}: {alert.statistic} on {','.join(alert.device_ids)}")

    return run

"""The processor's rollout thread (``[rollout] enabled = true``): reports in, waves advanced or paused.

A consumer group of its own (``rollout.group_id``) reads the agents' status topic and stores
every report (exposure, what an agent can run) and model status (:mod:`cloud.rollout.state`);
offsets are committed after the store writes, and a status read twice changes nothing. Every
``rollout.interval_s`` each running rollout is compared (:mod:`cloud.rollout.cohort`):

- diverged (a rate of the new cohort over ``max_ratio`` x the rest's with ``min_exposure_device_hours``
  on both sides, or a shadow rejection share over ``max_shadow_rejection_share``): the rollout is
  paused, the decision recorded, and a ``rollout_paused`` alert stored in the alert outbox and
  produced to the alerts topic (left for the processor's outbox sweep if the broker refuses it);
- healthy, and the wave has run ``min_wave_s``: the next of ``rollout.waves`` is announced;
- otherwise it waits.

Nothing lives only in memory: a restart reads the rollouts, members, exposure and statuses from
the store and the status topic from the committed offsets. :func:`run_rollout` blocks until
``stop`` is set and starts the monitor again after a failure, like the archive.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter

from cloud.processor.alerts import alert_rows
from cloud.processor.config import ProcessorConfig
from cloud.processor.sidethreads import consume, run_with_store
from cloud.processor.store import Store
from cloud.registry import Registry
from cloud.rollout import cohort, state
from cloud.rollout.publish import Broker, publish_wave
from edge.contract import Alert, ContractError
from edge.contract.alert import make_incident_id
from edge.contract.update import ModelStatus, decode_status

log = logging.getLogger(__name__)


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "edgewatch_processor_rollout_"
        self.statuses = Counter(p + "statuses_total", "Agent statuses read from the status topic", ["action"], registry=registry)
        self.bad = Counter(p + "bad_statuses_total", "Status records that failed the contract (logged, skipped)", registry=registry)
        self.decisions = Counter(p + "decisions_total", "Rollout decisions the processor took", ["action"], registry=registry)
        self.restarts = Counter(p + "restarts_total", "Times the rollout thread failed and was started again", registry=registry)


def broker_of(config: ProcessorConfig) -> Broker:
    r = config.rollout
    return Broker(r.mqtt_host, r.mqtt_port, r.mqtt_prefix, r.mqtt_username or None, r.mqtt_password or None,
                  r.mqtt_tls_ca_file or None)


def store_status(store: Store, status: ModelStatus) -> None:
    """Store one status: a report (with its exposure) or a model status."""
    info = getattr(status, "agent", None)
    if status.action == "report":
        state.record_report(store, state.AgentReport(
            status.agent_id, info.group if info else "", status.model_name, status.live_version or status.model_version,
            info.devices if info else 0, dataclasses.asdict(info) if info else None, status.at))
    elif not status.command_id:
        state.record_status(store, status.agent_id, status.model_name, status.model_version, status.action, status.reason,
                            status.at, status.live_version)


class RolloutMonitor:
    """See the module docstring. Runs on the calling thread; owns its store connection and Kafka clients."""

    def __init__(self, config: ProcessorConfig, store: Store, metrics: RolloutMetrics, stop: threading.Event,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        self.registry = Registry(Path(config.rollout.registry))
        self.broker = broker_of(config)

    def run(self) -> None:
        r = self.config.rollout
        consume(self.config, r.status_topic, group_id=r.group_id, name="rollout", stop=self.stop,
                handle=self.on_records, tick=self.tick, interval_s=r.interval_s)

    def on_records(self, records: Sequence[Any], producer: KafkaProducer) -> None:
        for rec in records:
            self.on_record(rec.value)

    def on_record(self, value: bytes | None) -> None:
        try:
            status = decode_status(value or b"")
        except ContractError as exc:
            self.metrics.bad.inc()
            log.warning("rollout_status_malformed field=%s error=%s", exc.field, exc)
            return
        store_status(self.store, status)
        self.metrics.statuses.labels(status.action).inc()

    def tick(self, producer: KafkaProducer | None = None) -> list[tuple[str, str]]:
        """Judge every running rollout once; returns (rollout id, action taken: pause, wave, wait)."""
        r = self.config.rollout
        done = []
        for ro in state.rollouts(self.store, state="running"):
            verdict, reason = cohort.judge(cohort.compare(self.store, ro), min_exposure_device_hours=r.min_exposure_device_hours,
                                           max_ratio=r.max_ratio, max_shadow_rejection_share=r.max_shadow_rejection_share,
                                           min_events=r.min_events)
            now = self.clock()
            action = "wait"
            if verdict == "diverged":
                action = "pause"
                self._pause(ro, reason, now, producer)
            elif verdict == "healthy" and now - ro.wave_started_at >= r.min_wave_s:
                nxt = next((w for w in r.waves if w > ro.percent), None)
                if nxt is not None:
                    action = "wave"
                    publish_wave(self.store, self.registry, self.broker, name=ro.name, version=ro.version, group=ro.group,
                                 percent=nxt, now=now, by=f"processor ({reason})")
            if action != "wait":
                self.metrics.decisions.labels(action).inc()
            log.log(logging.WARNING if action == "pause" else logging.INFO if action == "wave" else logging.DEBUG,
                    "rollout_judged rollout=%s percent=%g verdict=%s action=%s reason=%s", ro.rollout_id, ro.percent, verdict,
                    action, reason)
            done.append((ro.rollout_id, action))
        return done

    def _pause(self, ro: state.Rollout, reason: str, now: float, producer: KafkaProducer | None) -> None:
        wave = tuple(m.agent_id for m in state.members(self.store, ro.rollout_id) if m.skipped is None)
        alert = Alert(kind="rollout_paused", action="open", incident_id=make_incident_id("rollout_paused", ro.rollout_id,
                                                                                             ro.wave_started_at),
                      site=ro.group, device_ids=wave, opened_at=now, model_name=ro.name, model_version=ro.version,
                      detail=f"rollout {ro.rollout_id} paused at {ro.percent:g}%: {reason}"[:1000])
        rows = alert_rows([alert])
        with self.store.transaction():
            self.store.insert_alerts(rows, now)
        state.set_state(self.store, ro.rollout_id, "paused", now, "pause", reason)
        if producer is None:
            return
        try:  # left unpublished, the processor's outbox sweep sends it after kafka.outbox_orphan_s
            producer.send(self.config.kafka.alerts_topic, key=alert.incident_id.encode(), value=rows[0][5].encode()).get(30)
            self.store.mark_published("alerts", [(alert.alert_id,)], self.clock())
        except Exception as exc:  # noqa: BLE001  # kafka's errors: the sweep retries
            log.warning("rollout_alert_unpublished alert_id=%s error=%r", alert.alert_id, exc)


def run_rollout(config: ProcessorConfig, stop: threading.Event, registry: CollectorRegistry, *,
                backoff_s: tuple[float, float] = (1.0, 60.0), clock: Callable[[], float] = time.time) -> None:
    """Thread entry used by ``edgewatch process`` when ``[rollout] enabled = true``: the monitor, on a
    store connection of its own, until ``stop`` is set; started again after a failure as the archive is."""
    metrics = RolloutMetrics(registry)
    run_with_store(config, lambda store: RolloutMonitor(config, store, metrics, stop, clock).run(), stop, metrics.restarts,
                   "rollout_monitor", backoff_s)

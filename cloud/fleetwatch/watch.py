"""The processor's fleet watch thread (``[peers] enabled`` and/or ``[silence] enabled``).

A consumer group of its own (``<kafka.group_id>-fleetwatch``) reads the telemetry topic (peers) and the
agents' status topic (silence: their ``report`` statuses). Per poll, one store transaction holds the devices'
states, the incidents opened, grown or closed, their alert rows and the peer scorer's progress; then the
offsets are committed and the alerts produced (routed by kind as the processor's are; a refused send is left
for the processor's outbox sweep). A record read twice changes nothing. Telemetry windows of a poll are
applied in event-time order, each peer tick (:mod:`cloud.fleetwatch.peers`) as soon as the windows pass it by
``incidents.allowed_lateness_s``. Reports are stored in ``agent_reports`` as the rollout thread stores them
(not twice when ``[rollout] enabled``: that thread does). Bad records are counted and logged, never fatal.

The peer groups need every device of a group in one place: run the fleet watch in one processor of a group
(one member of its consumer group). :func:`run_fleetwatch` blocks until ``stop`` is set and starts the watch
again after a failure, like the archive.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.fleetwatch import state as fstate
from cloud.fleetwatch.fastwindow import FastWindows, WindowMeans, means_of
from cloud.fleetwatch.peers import PeerScorer, forget_stale
from cloud.fleetwatch.silence import SilenceWatch
from cloud.processor.alerts import alert_rows
from cloud.processor.config import ProcessorConfig
from cloud.processor.incidents import Changes
from cloud.processor.metrics import incidents_opened
from cloud.processor.routes import AlertRoutes, parse_routes
from cloud.processor.store import Store
from edge.contract import ContractError, decode_manifest
from edge.contract.samples import decode_telemetry
from edge.contract.update import ModelStatus, decode_status

log = logging.getLogger(__name__)

MAX_TICKS_PER_POLL = 10_000
RETIRED_REFRESH_S = 1.0


class FleetWatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "edgewatch_processor_"
        self.records = Counter(p + "fleetwatch_records_total", "Telemetry windows and agent reports read", ["kind"],
                               registry=registry)
        self.bad = Counter(p + "fleetwatch_bad_records_total", "Records that failed the contract (logged, skipped)", ["kind"],
                           registry=registry)
        self.alerts = Counter(p + "fleetwatch_alerts_total", "Alerts the fleet watch produced", ["kind", "action"],
                              registry=registry)
        self.ticks = Counter(p + "peer_ticks_total", "Peer comparisons made (event-time ticks)", registry=registry)
        self.groups_skipped = Counter(p + "peer_groups_skipped_total",
                                      "Peer groups skipped at a tick: fewer devices than peers.min_group_size", registry=registry)
        self.ungrouped = Gauge(p + "peer_devices_ungrouped", "Devices with telemetry whose group key matched nothing",
                               registry=registry)
        self.key_unmatched = Gauge(p + "peer_group_key_unmatched",
                                   "1: the peers group key matched no device after peers.startup_grace_s", registry=registry)
        self.restarts = Counter(p + "fleetwatch_restarts_total", "Times the fleet watch failed and was started again",
                                registry=registry)
        self.incidents_opened = incidents_opened(registry)


def load_periods(manifest_dir: str) -> dict[tuple[str, str], float]:
    """Sample periods by (model name, version) from the manifests under ``manifest_dir`` (drift.manifest_dir)."""
    out: dict[tuple[str, str], float] = {}
    if manifest_dir:
        for path in sorted(Path(manifest_dir).rglob("*.json")):
            try:
                m = decode_manifest(path.read_bytes())
            except (ContractError, OSError):
                continue  # drift's loader logs it
            out[m.name, m.version] = m.sample_period_s
    return out


class FleetWatch:
    """See the module docstring. Runs on the calling thread (:meth:`run`); :meth:`apply` is the per-poll step."""

    def __init__(self, config: ProcessorConfig, store: Store, metrics: FleetWatchMetrics, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.clock = clock
        p = config.peers
        self.pattern = re.compile(p.pattern) if p.group_by == "regex" else None
        self.scorer = PeerScorer(p, self.key_of)
        self.silence = SilenceWatch(config.silence, config.fleet.site_of)
        self.periods = load_periods(config.drift.manifest_dir)
        self.routes = AlertRoutes(parse_routes(config.alerts.routes, "[alerts]"), config.kafka.alerts_topic)
        self.lateness = config.incidents.allowed_lateness_s
        self.fast = FastWindows()
        self.peers = fstate.load_states(store, "peer_state")
        self.silent = fstate.load_states(store, "silence_state")
        meta = fstate.load_meta(store)
        tick = meta.get("peers_tick")
        self.tick_at: float = -math.inf if tick is None else float(tick)
        self.retired: set[str] = set(fstate.retired(store))
        self._retired_at = time.monotonic()
        self._started = time.monotonic()
        self._key_reported = False
        self._small: dict[str, int] = {}
        self.check_group_key(at_start=True)

    def key_of(self, device: str, agent: str) -> str:
        """The device's peer group ("" when the key names none)."""
        by = self.config.peers.group_by
        if by == "agent":
            return agent
        if by == "site":
            return self.config.fleet.site_of(device)
        assert self.pattern is not None
        m = self.pattern.search(device)
        return (m.group(1) or "") if m else ""

    def check_group_key(self, *, at_start: bool = False) -> bool:
        """Report (log and gauge) a group key that matches none of the devices with telemetry; True if it does."""
        if not self.config.peers.enabled or not self.peers:
            return False
        groups = [self.key_of(d, st.get("a", "")) if at_start else st["g"] for d, st in self.peers.items()]
        ungrouped = sum(1 for g in groups if not g)
        self.metrics.ungrouped.set(ungrouped)
        if ungrouped < len(groups):
            self.metrics.key_unmatched.set(0)
            return False
        self.metrics.key_unmatched.set(1)
        if not self._key_reported:
            self._key_reported = True
            p = self.config.peers
            log.error("peers_group_key_matches_no_device group_by=%s pattern=%r devices=%d example=%s%s", p.group_by, p.pattern,
                      len(groups), sorted(self.peers)[0], " (stored devices, at start-up)" if at_start else "")
        return True

    # -- one poll --------------------------------------------------------------------------------------------------
    def apply(self, records: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, str, str]]:
        """Apply a poll's (topic, value) records and the ticks they make due, in one store transaction; returns the
        alert rows stored, (alert_id, incident_id, payload), for the caller to produce."""
        self._refresh_retired()
        telemetry_topic = self.config.kafka.telemetry_topic
        windows: list[WindowMeans] = []
        reports: list[ModelStatus] = []
        for topic, value in records:
            if topic == telemetry_topic:
                w = self.fast.window_means(value) if value is not None else None
                if w is None:  # the fast path declined: the contract decides, and names the problem
                    try:
                        w = means_of(decode_telemetry(value or b""))
                    except ContractError as exc:
                        self._bad("telemetry", exc)
                        continue
                if w is not None:
                    windows.append(w)
            else:
                try:
                    status = decode_status(value or b"")
                except ContractError as exc:
                    self._bad("status", exc)
                    continue
                if status.action == "report" and status.agent is not None:
                    reports.append(status)
        changes = Changes()
        touched_peers: set[str] = set()
        touched_silent: set[str] = set()
        dropped: list[str] = []
        if self.config.peers.enabled:
            windows.sort(key=lambda w: w.t)
            for w in windows:
                self._ticks_until(w.t, changes, touched_peers, dropped)
                if self.scorer.add_means(self.peers, w.device_id, w.agent_id, w.t, w.channels, w.means):
                    touched_peers.add(w.device_id)
            self.metrics.records.labels("telemetry").inc(len(windows))
        if self.config.silence.enabled:
            for status in reports:
                assert status.agent is not None
                period = self.periods.get((status.model_name, status.live_version or status.model_version),
                                          self.config.silence.default_period_s)
                res = self.silence.on_report(self.silent, status.agent_id, status.at, status.agent.last_seen, period, self.retired)
                _merge(changes, res.changes)
                touched_silent |= res.touched
            self.metrics.records.labels("report").inc(len(reports))
        now = self.clock()
        with self.store.transaction():
            fstate.save_states(self.store, "peer_state", self.peers, touched_peers - set(dropped), dropped, now)
            fstate.save_states(self.store, "silence_state", self.silent, touched_silent, (), now)
            self.store.upsert_incidents(changes.incidents.values(), now)
            rows = alert_rows(changes.alerts)
            self.store.insert_alerts(rows, now)
            fstate.save_meta(self.store, {"peers_tick": self.tick_at if math.isfinite(self.tick_at) else None})
        if reports and not self.config.rollout.enabled:
            from cloud.rollout.monitor import store_status

            for status in reports:  # agent_reports, as the rollout thread keeps them (one copy)
                store_status(self.store, status)
        if time.monotonic() - self._started >= self.config.peers.startup_grace_s:
            self.check_group_key()
        return [(r[0], r[1], r[5]) for r in rows]

    def _ticks_until(self, t: float, changes: Changes, touched: set[str], dropped: list[str]) -> None:
        """Evaluate every tick that a window ending at ``t`` shows is complete (``t`` past it by the lateness)."""
        p = self.config.peers
        due = math.floor((t - self.lateness) / p.tick_s) * p.tick_s
        if not math.isfinite(self.tick_at):
            self.tick_at = due - p.tick_s  # first telemetry: start at the tick before it (nothing older to compare)
        n = 0
        while self.tick_at + p.tick_s <= due and n < MAX_TICKS_PER_POLL:
            self.tick_at += p.tick_s
            n += 1
            res = self.scorer.tick(self.peers, self.tick_at, self.retired)
            self.metrics.ticks.inc()
            _merge(changes, res.changes)
            touched |= res.touched
            if res.skipped:
                self.metrics.groups_skipped.inc(len(res.skipped))
            if res.skipped != self._small:
                for g, size in sorted(res.skipped.items()):
                    if self._small.get(g) != size:
                        log.warning("peer_group_skipped group=%r devices=%d min_group_size=%d tick=%.0f", g, size,
                                    p.min_group_size, self.tick_at)
                self._small = dict(res.skipped)
            gone = forget_stale(self.peers, self.tick_at, p.span_s + self.lateness + p.tick_s, p.max_devices)
            dropped.extend(gone)
            touched.difference_update(gone)
        if n == MAX_TICKS_PER_POLL:
            self.tick_at = max(self.tick_at, due)  # a jump over a long gap: the ticks between had no data to compare

    def _refresh_retired(self) -> None:
        if time.monotonic() - self._retired_at >= RETIRED_REFRESH_S:
            self._retired_at = time.monotonic()
            self.retired = set(fstate.retired(self.store))

    def _bad(self, kind: str, exc: ContractError) -> None:
        self.metrics.bad.labels(kind).inc()
        log.warning("fleetwatch_record_malformed kind=%s field=%s error=%s", kind, exc.field, exc)

    # -- the thread ------------------------------------------------------------------------------------------------
    def topics(self) -> list[str]:
        out = []
        if self.config.peers.enabled:
            out.append(self.config.kafka.telemetry_topic)
        if self.config.silence.enabled:
            out.append(self.config.rollout.status_topic)
        return out

    def run(self) -> None:
        from cloud.processor.consumer import group_consumer, kafka_producer
        from edge.forwarder import close_producer

        k = self.config.kafka
        producer = kafka_producer(k, k.client_id + "-fleetwatch")
        try:
            consumer = group_consumer(k, self.topics(), group_id=k.group_id + "-fleetwatch",
                                      client_id=k.client_id + "-fleetwatch")
        except BaseException:
            close_producer(producer, 10.0)
            raise
        log.info("fleetwatch_started topics=%s peers=%s silence=%s", self.topics(), self.config.peers.enabled,
                 self.config.silence.enabled)
        try:
            while not self.stop.is_set():
                polled = consumer.poll(timeout_ms=int(k.poll_timeout_s * 1000), max_records=k.max_poll_records)
                records = [(tp.topic, r.value) for tp, rs in polled.items() for r in rs]
                if not records:
                    continue
                rows = self.apply(records)
                consumer.commit()
                self.publish(producer, rows)
        finally:
            consumer.close(autocommit=False)
            close_producer(producer, 10.0)
            log.info("fleetwatch_stopped")

    def publish(self, producer: Any, rows: Sequence[tuple[str, str, str]]) -> None:
        """Produce alert rows (routed by kind) and mark them published; a refused send is left for the outbox sweep."""
        import orjson

        sent = []
        for alert_id, incident_id, payload in rows:
            topic, routed = self.routes.route(payload)
            sent.append((alert_id, payload, producer.send(topic, key=incident_id.encode(), value=routed.encode())))
        done = []
        for alert_id, payload, future in sent:
            try:
                future.get(30)
            except Exception as exc:  # noqa: BLE001  # kafka's errors: the processor's sweep retries the row
                log.warning("fleetwatch_alert_unpublished alert_id=%s error=%r", alert_id, exc)
                continue
            done.append((alert_id,))
            doc = orjson.loads(payload)
            self.metrics.alerts.labels(doc["kind"], doc["action"]).inc()
            if doc["action"] == "open":
                self.metrics.incidents_opened.labels(kind=doc["kind"]).inc()
        self.store.mark_published("alerts", done, self.clock())


def _merge(into: Changes, other: Changes) -> None:
    into.incidents.update(other.incidents)
    into.alerts.extend(other.alerts)


def run_fleetwatch(config: ProcessorConfig, stop: threading.Event, registry: CollectorRegistry, *,
                   backoff_s: tuple[float, float] = (1.0, 60.0), clock: Callable[[], float] = time.time) -> None:
    """Thread entry used by ``edgewatch process`` when ``[peers]`` or ``[silence]`` is enabled: the watch, on a store
    connection of its own, until ``stop`` is set; started again after a failure."""
    from cloud.processor.sidethreads import run_with_store

    metrics = FleetWatchMetrics(registry)
    run_with_store(config, lambda store: FleetWatch(config, store, metrics, stop, clock).run(), stop, metrics.restarts,
                   "fleetwatch", backoff_s)

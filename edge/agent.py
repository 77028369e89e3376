"""The edge agent: wires intake, pipeline, outbox and forwarder together with three threads.

- paho's network thread: :class:`~edge.intake.MqttIntake` puts messages on the bounded queue.
- the worker thread: takes messages off the queue, runs the :class:`~edge.pipeline.Pipeline`
  (decode, windows, one inference call per round, decide, sample) and commits the resulting
  records to the outbox. A round starts once its oldest message has waited ``agent.batch_linger_s``
  (5 ms), or ``agent.tick_s`` (50 ms) while the process is busy (over 60 % of a core in the last
  second, until under 30 %): a busy agent batches more readings per device and per inference
  call, an idle one answers within milliseconds. A round takes everything queued (at most 2,000
  messages or 2 MiB of payload). A round that decided an anomaly commits at its end; telemetry
  samples and status records wait up to ``agent.tick_s`` to share a commit (one fsync, not one
  per record or per round).
- the forwarder thread: drains the outbox into Kafka (:class:`~edge.forwarder.Forwarder`).

Under systemd (``Type=notify``) it sends ``READY=1`` once started, ``WATCHDOG=1`` from the worker
loop and ``STOPPING=1`` when the drain begins (:mod:`edge.sdnotify`; no-ops elsewhere).

In-process use::

    agent = Agent(load_config("agent.toml"))
    agent.start()          # loads the model, opens the outbox, connects; returns at once
    ...
    agent.stop()           # graceful: stop intake, score what is queued, flush within the bound

What a ``kill -9`` loses: messages in the intake queue, readings in incomplete windows and
records not yet committed (anomalies: the round in progress; other records: at most one tick);
paho has already acknowledged those messages to the broker. Everything committed to the outbox survives and is sent after the restart.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from edge.adaptive_store import AdaptiveStore, state_path
from edge.config import Config
from edge.contract import ConfigError
from edge.forwarder import Forwarder, ProducerFactory, make_producer
from edge.intake import IntakeQueue, MqttIntake
from edge.metrics import AgentMetrics, serve
from edge.outbox import Outbox, Record
from edge.pipeline import Pipeline, Scorer
from edge.sdnotify import Notifier

if TYPE_CHECKING:  # imported in _start_updates: with updates off, cryptography is never loaded (~6 MiB)
    from wsgiref.simple_server import WSGIServer

    from edge.commands import CommandReceiver
    from edge.modelswap import ModelUpdates
    from edge.updates import ModelDownloader

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_TICK = 2000
MAX_BYTES_PER_TICK = 2 << 20  # payload bytes per round: bounds a round's decoded readings and windows in memory
BUSY_ENTER, BUSY_LEAVE = 0.6, 0.3  # share of a core the process used in the last BUSY_WINDOW_S: pace rounds at tick_s above
BUSY_WINDOW_S = 0.25  # short, so that a burst of a second or two is taken in large rounds too
MAX_PENDING_RECORDS = 50_000


class Agent:
    """One agent process's worth of machinery; not restartable (build a new one)."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 scorer: Scorer | None = None, producer_factory: ProducerFactory = make_producer,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self._clock = clock
        self._scorer = scorer
        self._producer_factory = producer_factory
        self.queue = IntakeQueue(config.agent.queue_max_messages, config.agent.overflow, config.agent.queue_max_bytes,
                                 config.agent.queue_wait_s)
        self.intake: MqttIntake | None = None
        self.outbox: Outbox | None = None
        self.forwarder: Forwarder | None = None
        self.pipeline: Pipeline | None = None
        self.state: AdaptiveStore | None = None
        self.metrics_port: int | None = None
        self._http: WSGIServer | None = None
        self._worker: threading.Thread | None = None
        self._forward_thread: threading.Thread | None = None
        self._draining = threading.Event()
        self._drain_deadline = float("inf")
        self._stop_requested = threading.Event()
        self._stopped = False
        self.worker_errors = 0
        self.updates: ModelUpdates | None = None
        self.downloader: ModelDownloader | None = None
        self.commands: CommandReceiver | None = None
        self._status_records: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self._report_s = config.updates.report_interval_s if config.updates.enabled else 0.0
        self._reported_at = float("-inf")  # the clock at the last report: devices seen since are counted in the next

    def load_scorer(self) -> Scorer:
        """The configured model, verified, loaded and warmed up (:class:`~edge.detector.OnnxDetector`)."""
        from edge.detector import OnnxDetector

        model_dir = Path(self.config.model.path)
        if not model_dir.is_dir():
            raise ConfigError(f"{self.config.source}: 'model.path' {model_dir} is not a folder with model.onnx and manifest.json")
        detector = OnnxDetector.load(model_dir, threads=self.config.model.threads)
        detector.warm_up()
        return detector

    def start(self) -> None:
        """Load the model, open the outbox, serve metrics, start the threads and connect to MQTT.

        Raises :class:`ConfigError`, :class:`~edge.contract.ManifestError` or
        :class:`~edge.contract.ModelLoadError` before anything is started; a broker that is
        down is not an error (both clients retry in the background).
        """
        cfg = self.config
        log.info("agent_starting agent_id=%s config=%s settings=%s", cfg.agent.id, cfg.source, cfg.describe())
        scorer = self._scorer or self.load_scorer()
        m = scorer.manifest
        self.state = AdaptiveStore(state_path(cfg.outbox.path)) if cfg.adaptive.enabled else None
        self.pipeline = Pipeline(cfg, scorer, self.metrics, clock=self._clock, state=self.state)
        self.metrics.model.info({"name": m.name, "version": m.version, "sha256": m.sha256})
        self.outbox = Outbox(cfg.outbox.path, max_bytes=cfg.outbox.max_bytes, synchronous=cfg.outbox.synchronous, clock=self._clock)
        self.metrics.track_outbox(lambda: self.outbox.rows if self.outbox else 0, lambda: self.outbox.bytes if self.outbox else 0)
        self.metrics.track_queue(lambda: len(self.queue), lambda: self.queue.bytes)
        if cfg.metrics.port:
            server, _thread = serve(self.registry, cfg.metrics.host, cfg.metrics.port)
            self._http = server
            self.metrics_port = int(server.server_port)
        self.forwarder = Forwarder(self.outbox, cfg.kafka, self.metrics, producer_factory=self._producer_factory)
        self._forward_thread = threading.Thread(target=self.forwarder.run, name="edgewatch-forwarder", daemon=True)
        self._forward_thread.start()
        self._worker = threading.Thread(target=self._work, name="edgewatch-worker", daemon=True)
        self._worker.start()
        if cfg.updates.enabled:
            self._start_updates(scorer)
        self.intake = MqttIntake(cfg.mqtt, self.queue, clock=self._clock,
                                 on_connection=lambda up: self.metrics.mqtt_connected.set(1 if up else 0),
                                 on_drop=self.metrics.queue_dropped.inc)
        self.intake.start()
        self.notifier.ready(f"model {m.name} {m.version}, outbox {self.outbox.rows} rows")
        log.info("agent_started agent_id=%s model=%s version=%s sha256=%s outbox_rows=%d metrics_port=%s", cfg.agent.id,
                 m.name, m.version, m.sha256[:12], self.outbox.rows, self.metrics_port)

    def _start_updates(self, live: Scorer) -> None:
        """Model updates: a downloader on its own MQTT session, candidates tried in shadow."""
        from edge.commands import CommandReceiver
        from edge.contract.update import ModelStatus, encode_status
        from edge.modelswap import ModelUpdates
        from edge.shadow import ShadowPolicy
        from edge.signing import load_trusted_keys
        from edge.updates import ModelDownloader

        cfg = self.config
        u = cfg.updates
        keys = load_trusted_keys(Path(u.trusted_keys_dir))
        if not keys:
            raise ConfigError(f"{cfg.source}: 'updates.trusted_keys_dir' {u.trusted_keys_dir} holds no public key (*.pub)")
        assert self.pipeline is not None
        pipeline = self.pipeline

        def report(status: ModelStatus) -> None:  # any thread; the worker commits it with the next round
            self._status_records.put(Record("status", cfg.kafka.status_topic, cfg.agent.id.encode(), encode_status(status)))
            if status.action in ("shadow_started", "promoted", "rejected", "rolled_back"):
                cand = self.updates.candidate if self.updates else None
                self.metrics.shadow_model.info({"name": cand.detector.manifest.name if cand else "",
                                                "version": cand.detector.manifest.version if cand else ""})

        policy = ShadowPolicy(min_windows=u.shadow_min_windows, min_seconds=u.shadow_min_seconds, rate_factor=u.shadow_rate_factor,
                              rate_floor=u.shadow_rate_floor, latency_factor=u.shadow_latency_factor,
                              prediction_tolerance=u.shadow_prediction_tolerance, baseline_floor=u.shadow_baseline_floor)
        self.updates = updates = ModelUpdates(live=live, swap=pipeline.swap_scorer, report=report, trusted_keys=keys, agent_id=cfg.agent.id,
                                    threads=cfg.model.threads, policy=policy, clock=self._clock,
                                    on_action=lambda action: self.metrics.model_updates.labels(action).inc(),
                                    on_rejected=lambda reason: self.metrics.model_rejections.labels(reason).inc())
        pipeline.shadow = self.updates.shadow_score
        self.metrics.shadow_model.info({"name": "", "version": ""})
        self.downloader = ModelDownloader(
            host=cfg.mqtt.host, port=cfg.mqtt.port, group=u.group, state_dir=Path(u.state_dir), trusted_keys=keys,
            on_ready=self.updates.on_ready, on_refused=self.updates.on_refused, compatible=self.updates.compatible,
            prefix=cfg.mqtt.topic_prefix, client_id=f"{cfg.mqtt.client_id}-updates", username=cfg.mqtt.username or None,
            password=cfg.mqtt.password or None, tls_ca_file=cfg.mqtt.tls_ca_file or None,
            max_artifact_bytes=u.max_artifact_bytes, max_download_bytes=u.max_download_bytes, agent_id=cfg.agent.id,
            previous=lambda: updates.previous.manifest if updates.previous is not None else None,
            live=lambda: updates.live_manifest, on_live_announced=updates.on_live_announced)
        m = live.manifest
        self.downloader.skip.add((m.name, m.version))
        self.downloader.start()
        self.commands = CommandReceiver(  # signed operator commands (--new-normal), same keys, applied by the worker
            cfg.mqtt, agent_id=cfg.agent.id, trusted_keys=keys, rebaseline=pipeline.rebaseline, report=report,
            live=lambda: pipeline.manifest, max_age_s=u.command_max_age_s, max_skew_s=cfg.windows.max_clock_skew_s,
            clock=self._clock, on_action=lambda action: self.metrics.model_updates.labels(action).inc())
        self.commands.start()

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return; safe to call from a signal handler."""
        self._stop_requested.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`request_stop`; returns whether it was requested."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._stop_requested.is_set():
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                return False
            self._stop_requested.wait(left)
        return True

    def stop(self, timeout_s: float | None = None) -> int:
        """Stop intake, score what is queued, flush the outbox; returns the rows left in it.

        Bounded by ``timeout_s`` (default ``agent.shutdown_timeout_s``); rows not sent in time
        stay in the outbox for the next start. Idempotent.
        """
        if self._stopped:
            return self.outbox.rows if self.outbox else 0
        self._stopped = True
        bound = self.config.agent.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + bound
        log.info("agent_stopping queued=%d timeout_s=%.1f", len(self.queue), bound)
        self.notifier.stopping(f"draining: {len(self.queue)} queued, {self.outbox.rows if self.outbox else 0} outbox rows")
        if self.intake is not None:
            self.intake.stop()
        if self.downloader is not None:
            self.downloader.stop()
        if self.commands is not None:
            self.commands.stop()
        if self.updates is not None:
            self.updates.close()
        self._drain_deadline = deadline
        self._draining.set()
        self.queue.wake()
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
        if self.pipeline is not None and self.state is not None and not (self._worker and self._worker.is_alive()):
            self.pipeline.save_state()  # the worker is done: each device resumes here after a restart
            self.state.close()
        left = 0
        if self.forwarder is not None and self._forward_thread is not None:
            self.forwarder.stop(deadline)
            self._forward_thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
            if self._forward_thread.is_alive():
                self.forwarder.abort()
                self._forward_thread.join(2.0)
        if self.outbox is not None:
            left = self.outbox.rows
            if not (self._forward_thread and self._forward_thread.is_alive()) and not (self._worker and self._worker.is_alive()):
                self.outbox.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("agent_stopped outbox_rows_left=%d queue_left=%d", left, len(self.queue))
        return left

    def _work(self) -> None:
        """The worker thread: queue -> pipeline -> outbox, until draining and the queue is empty.

        A round waits for a message, lets it linger ``batch_linger_s`` so that others arriving
        with it share the round (``tick_s`` while the process is busy: each round has a fixed cost
        per device, so small rounds cost CPU that a busy agent lacks), then commits: at once if
        the round produced an anomaly event, otherwise once the oldest uncommitted record is
        ``tick_s`` old.
        """
        assert self.pipeline is not None and self.outbox is not None and self.forwarder is not None
        tick = self.config.agent.tick_s
        linger = self.config.agent.batch_linger_s
        ping_s = self.notifier.ping_interval_s
        last_ping = 0.0
        pending: list[Record] = []
        commit_by = float("inf")  # when the oldest uncommitted record is due
        report_by = 0.0 if self._report_s > 0 else float("inf")  # the first report goes out at once
        busy = False
        since, cpu_since = time.monotonic(), time.process_time()
        while True:
            started = time.monotonic()
            if started - since >= BUSY_WINDOW_S:
                share = (time.process_time() - cpu_since) / (started - since)
                busy = share > (BUSY_LEAVE if busy else BUSY_ENTER)
                since, cpu_since = started, time.process_time()
            if ping_s is not None and started - last_ping >= ping_s:
                self.notifier.watchdog()  # systemd restarts the agent if this loop stalls
                last_ping = started
            draining = self._draining.is_set()
            wait = 0.0 if draining else max(0.0, min(tick, commit_by - started))
            batch = self.queue.get_batch(MAX_MESSAGES_PER_TICK, wait, linger_s=0.0 if draining else tick if busy else linger,
                                         max_bytes=MAX_BYTES_PER_TICK)
            if started >= report_by and not draining:
                report_by = started + self._report_s
                self._report()
            try:
                if self.updates is not None:
                    self.updates.poll()
                if self.commands is not None:
                    self.commands.poll()
                records = self.pipeline.process(batch)
            except Exception:  # noqa: BLE001 - a failing model call must not end the agent; input never raises
                self.worker_errors += 1
                log.exception("worker_tick_failed messages=%d", len(batch))
                records = []
            while not self._status_records.empty():
                records.append(self._status_records.get_nowait())
            if records and not pending:
                commit_by = time.monotonic() + tick
            pending.extend(records)
            urgent = any(r.kind == "anomaly" for r in records)
            if pending and (urgent or draining or time.monotonic() >= commit_by):
                pending = self._commit(pending)
                commit_by = time.monotonic() + tick if pending else float("inf")
            if draining and (not batch or time.monotonic() >= self._drain_deadline):
                if batch:
                    log.warning("agent_drain_timeout queue_left=%d", len(self.queue))
                if pending:
                    self._commit(pending)
                return

    def _report(self) -> None:
        """Queue the periodic ``report`` status: the live version and :func:`~edge.sysinfo.agent_info`,
        with the devices that sent a valid payload since the last report and when each tracked device last
        did (``last_seen``). Worker thread, before the round's readings (so those count in the next
        report); a failure is logged, not raised."""
        from edge.contract.update import ModelStatus, encode_status
        from edge.sysinfo import agent_info

        assert self.pipeline is not None
        cfg, m = self.config, self.pipeline.manifest
        since, self._reported_at = self._reported_at, self._clock()
        try:
            info = agent_info(Path(cfg.updates.state_dir), self.pipeline.devices_seen_since(since), cfg.updates.group,
                              self.pipeline.last_seen())
        except OSError as exc:
            log.error("agent_report_failed error=%s", exc)
            return
        status = ModelStatus(agent_id=cfg.agent.id, action="report", model_name=m.name, model_version=m.version, reason="",
                             at=self._reported_at, live_version=m.version, agent=info)
        self._status_records.put(Record("status", cfg.kafka.status_topic, cfg.agent.id.encode(), encode_status(status)))

    def _commit(self, records: list[Record]) -> list[Record]:
        """Append to the outbox; on a disk error keep the records for the next tick (bounded)."""
        assert self.outbox is not None and self.forwarder is not None
        try:
            result = self.outbox.append(records)
        except sqlite3.Error as exc:
            log.error("outbox_append_failed records=%d error=%s", len(records), exc)
            if len(records) > MAX_PENDING_RECORDS:
                dropped = records[: len(records) - MAX_PENDING_RECORDS]
                for rec in dropped:
                    self.metrics.shed_rows.labels(rec.kind).inc()
                    self.metrics.shed_bytes.labels(rec.kind).inc(rec.size)
                return records[len(dropped):]
            return records
        for kind, n in result.shed_rows.items():
            self.metrics.shed_rows.labels(kind).inc(n)
            self.metrics.shed_bytes.labels(kind).inc(result.shed_bytes[kind])
            log.warning("outbox_shed kind=%s rows=%d bytes=%d", kind, n, result.shed_bytes[kind])
        self.forwarder.wake()
        return []

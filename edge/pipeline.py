"""From MQTT messages to outbox records: decode, window, score, decide, sample.

Pure logic with injected time (``clock`` stamps events and dead letters, bounds how far ahead a
reading's ``ts`` may be, and times idle devices); no threads, so a test drives it message by
message. The agent calls :meth:`Pipeline.process` from its worker thread.
Nothing raises on input: every refused payload becomes a dead-letter record and a count by
reason. Only a failing model (onnxruntime error) raises.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Protocol

import numpy as np

from edge.adaptive import layer_for
from edge.adaptive_store import AdaptiveStore
from edge.config import Config
from edge.contract import (
    ConfigError,
    ContractError,
    ModelManifest,
    SensorFault,
    decode_readings,
    device_from_topic,
    encode_deadletter,
    encode_event,
    encode_telemetry,
    make_deadletter,
    telemetry_from_window,
)
from edge.contract.update import MAX_LAST_SEEN
from edge.decision import Decider, build_event
from edge.escalation import Escalator
from edge.fastdecode import FastReadingDecoder, as_arrays
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.outbox import Record
from edge.sensorhealth import BatchHealth, SensorHealth
from edge.telemetry import Sample, Scored, TelemetrySampler
from edge.windows import Added, Window, WindowBatch, Windows, channel_problem

log = logging.getLogger(__name__)


FLUSH_ROWS = 8192
"""Readings gathered before they go to the windows even mid-round (bounds the lists)."""


@dataclass(slots=True)
class Gathered:
    """One device's readings of a round not yet in the windows, in arrival order: its batches as
    arrays (converted at once, so the decoded objects are freed while still in cache), then its
    single readings since the last batch as lists (one array for all of them, at :meth:`take`)."""

    width: int
    parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    rows: list[tuple[float, ...]] = field(default_factory=list)
    size: int = 0  # readings held

    def add(self, stamps: list[float], rows: list[tuple[float, ...]]) -> None:
        if len(stamps) > 1:
            self._close_singles()
            self.parts.append(as_arrays(stamps, rows, self.width))
        else:
            self.stamps.extend(stamps)
            self.rows.extend(rows)
        self.size += len(stamps)

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """All readings held, as one ``(ts, values)`` pair in arrival order."""
        self._close_singles()
        if len(self.parts) == 1:
            return self.parts[0]
        return np.concatenate([ts for ts, _ in self.parts]), np.concatenate([values for _, values in self.parts])

    def _close_singles(self) -> None:
        if self.stamps:
            self.parts.append(as_arrays(self.stamps, self.rows, self.width))
            self.stamps, self.rows = [], []


class Scorer(Protocol):
    """What the pipeline needs of a model: :class:`edge.detector.OnnxDetector` is one."""

    manifest: ModelManifest

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def score_members(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class Pipeline:
    """One model's view of the fleet: windows per device, a decider, a telemetry sampler."""

    def __init__(self, config: Config, scorer: Scorer, metrics: AgentMetrics, *, clock: Callable[[], float] = time.time,
                 timer: Callable[[], float] = time.perf_counter, state: AdaptiveStore | None = None) -> None:
        m = scorer.manifest
        self.config = config
        self.scorer = scorer
        self.metrics = metrics
        self.manifest = m
        self.channels = m.channel_names
        self.windows = Windows(self.channels, m.window_length, m.stride, m.sample_period_s, config.windows.gap_periods)
        threshold = config.decision.threshold if config.decision.threshold is not None else m.threshold
        self.decider = Decider(threshold, k=config.decision.k, n=config.decision.n,
                               device_thresholds=config.decision.device_thresholds)
        self.adaptive = layer_for(config.adaptive, m, config.decision.threshold) if config.adaptive.enabled else None
        self.state = state if self.adaptive is not None else None
        if self.adaptive is not None:
            layer = self.adaptive
            metrics.track_adaptive(lambda: [] if (a := self.adaptive) is None else
                                   [(d, a.threshold(d), a.warming(d), a.burn(d)) for d in list(a.devices)])
            if self.state is not None:
                restored = layer.restore(self.state.load(m.sha256))
                log.info("adaptive_state_restored devices=%d model_sha256=%s path=%s", restored, m.sha256[:12], self.state.path)
        self._next_save = clock() + config.adaptive.save_interval_s
        self.sampler = TelemetrySampler(config.telemetry.every_n_windows, config.telemetry.anomaly_context_windows)
        self._clock = clock
        self._timer = timer
        self._prefix = config.mqtt.topic_prefix
        self._max_payload = config.agent.max_payload_bytes
        self._agent_id = config.agent.id
        self._kafka = config.kafka
        self._fast = FastReadingDecoder(self.channels)
        self._devices: dict[str, str] = {}  # topic -> device id of the tracked devices, a cache of device_from_topic
        self._max_devices = config.agent.max_devices
        self._idle_evict_s = config.agent.device_idle_evict_s
        self._max_skew_s = config.windows.max_clock_skew_s
        self._now = clock()  # the clock at the start of the current process() round
        self._seen: dict[str, float] = {}  # tracked device -> the clock when its last valid payload came
        self._sweep_s = min(60.0, self._idle_evict_s / 10)  # idle devices are looked for this often (clock seconds)
        self._next_sweep = self._now + self._sweep_s
        metrics.devices_tracked.set_function(lambda: float(len(self._seen)))
        self._accepted = 0
        self._pending: dict[str, Gathered] = {}  # device -> readings not yet in the windows
        self._pending_rows = 0
        self.shadow: Callable[[np.ndarray, np.ndarray, float, float], None] | None = None
        self.health = SensorHealth(config.sensor_health, m, source=config.source) if config.sensor_health.enabled else None
        self.escalator = Escalator(config.escalation, config.kafka.escalations_topic, config.agent.id, metrics.registry) \
            if config.escalation.enabled else None

    def swap_scorer(self, scorer: Scorer) -> None:
        """Put another model in place between two batches. Windows and debounce state are kept,
        so the new model must have the same channels, window, stride and sample period
        (:func:`edge.modelswap.incompatibility`). Worker thread only."""
        m = scorer.manifest
        self.scorer = scorer
        self.manifest = m
        if self.config.decision.threshold is None:
            self.decider.threshold = m.threshold
        if self.adaptive is not None:  # every device starts again from the new model's prior (or members' priors)
            self.adaptive = layer_for(self.config.adaptive, m, self.config.decision.threshold)
            self.save_state()  # the old model's rows go now: a restart must not resume them on the new model
        self.metrics.model.info({"name": m.name, "version": m.version, "sha256": m.sha256})
        if self.health is not None:  # the new manifest's channel ranges; open faults are reported again
            try:
                self.health = SensorHealth(self.config.sensor_health, m, source=self.config.source)
            except ConfigError as exc:
                log.error("sensor_health_ranges_kept model_version=%s error=%s", m.version, exc)

    def process(self, messages: Sequence[Message]) -> list[Record]:
        """Ingest messages, then score every window that became ready; returns the records to store.
        Every ``min(60, agent.device_idle_evict_s / 10)`` seconds of the clock it also forgets the
        devices idle for longer than ``agent.device_idle_evict_s``."""
        self._now = now = self._clock()
        self._accepted = 0
        records = [r for msg in messages if (r := self.ingest(msg)) is not None]
        self.flush()
        self.metrics.messages_received.inc(len(messages))
        self.metrics.readings_received.inc(self._accepted)
        records.extend(self.score_ready())
        if now >= self._next_sweep:
            self._evict_idle(now)
        if now >= self._next_save:
            self.save_state()
        return records

    def save_state(self) -> None:
        """Write the adaptive state of the devices changed since the last save (and delete the
        forgotten ones) beside the outbox. Worker thread, or after it stopped. A disk error is
        logged, not raised: the state is kept in memory and saved with the next one."""
        self._next_save = self._clock() + self.config.adaptive.save_interval_s
        if self.state is None or self.adaptive is None:
            return
        rows, gone = self.adaptive.take_changes()
        try:
            self.state.save(self.manifest.sha256, rows, gone)
        except sqlite3.Error as exc:
            self.adaptive.unsaved(rows, gone)
            log.error("adaptive_state_save_failed devices=%d error=%s", len(rows), exc)

    def devices_seen_since(self, since: float) -> int:
        """How many tracked devices sent a valid payload at or after ``since`` (this pipeline's clock)."""
        return sum(1 for seen in self._seen.values() if seen >= since)

    def last_seen(self, limit: int = MAX_LAST_SEEN) -> dict[str, float]:
        """Device id -> this pipeline's clock when its last valid payload came, for the ``limit`` most
        recent of the tracked devices, most recent first (a report's ``last_seen``)."""
        return dict(heapq.nlargest(limit, self._seen.items(), key=itemgetter(1)))

    def forget_device(self, device_id: str) -> None:
        """Drop everything held for ``device_id``: its windows (partial and ready), debounce history,
        telemetry sampler state, readings gathered this round and its topic. Every owner of
        per-device state is called from here. The device's next valid payload admits it afresh."""
        self.windows.forget(device_id)
        self.decider.reset(device_id)
        if self.adaptive is not None:
            self.adaptive.forget(device_id)
        self.sampler.forget(device_id)
        if self.health is not None:
            self.health.forget(device_id)
        if self.escalator is not None:
            self.escalator.forget(device_id)
        pending = self._pending.pop(device_id, None)
        if pending is not None:
            self._pending_rows -= pending.size
        self._seen.pop(device_id, None)
        self._devices.pop(f"{self._prefix}/{device_id}/readings", None)

    def rebaseline(self, device_id: str) -> bool:
        """A new normal by decision (``--new-normal``): the device's adaptive state restarts its
        warm-up from its next windows. Worker thread only. False when the layer is off."""
        if self.adaptive is None:
            return False
        self.adaptive.rebaseline(device_id)
        log.info("device_rebaselined device_id=%s", device_id)
        return True

    def _evict_idle(self, now: float) -> None:
        """Forget the devices without a valid payload for longer than ``agent.device_idle_evict_s``."""
        self._next_sweep = now + self._sweep_s
        cutoff = now - self._idle_evict_s
        idle = [device for device, last in self._seen.items() if last < cutoff]
        for device in idle:
            self.forget_device(device)
        if idle:
            self.metrics.devices_evicted.inc(len(idle))
            log.info("devices_evicted count=%d idle_s=%g tracked=%d", len(idle), self._idle_evict_s, len(self._seen))

    def ingest(self, msg: Message) -> Record | None:
        """Decode one message into the windows; returns a dead-letter record if it was refused.

        A payload's readings (one or a batch) wait, with the device's other readings of this round
        (:class:`Gathered`), for :meth:`flush` to place them in one array: the same windows and
        outcomes as placing each payload in turn (:meth:`Windows.add_rows` is :meth:`Windows.add`
        row by row), without the per-message window work.

        Counts accepted readings in ``_accepted`` (added to the metric once per :meth:`process`)."""
        device = self._devices.get(msg.topic)
        if device is None:
            try:
                device = device_from_topic(msg.topic, self._prefix)
            except ContractError as exc:
                return self._reject("bad_topic", str(exc), msg, None)
        if len(msg.payload) > self._max_payload:
            return self._reject("too_large", f"payload of {len(msg.payload)} bytes exceeds {self._max_payload}", msg, device)
        decoded = self._fast.decode_lists(msg.payload, device)
        if decoded is None:
            try:
                readings = decode_readings(msg.payload, topic_device=device, max_bytes=self._max_payload)
            except ContractError as exc:
                return self._reject(exc.kind, str(exc), msg, device)
            except Exception as exc:  # noqa: BLE001 - the decoder must not stop the agent, whatever it raises
                return self._reject("invalid", f"{exc.__class__.__name__}: {exc}", msg, device)
            problem = channel_problem(readings, self.channels)
            if problem is not None:
                got = sorted(next(r for r in readings if r.values.keys() != set(self.channels)).values)
                return self._reject(problem, f"channels {got} do not match the model's {list(self.channels)}", msg, device)
            decoded = ([r.ts for r in readings], [tuple(r.values[c] for c in self.channels) for r in readings])
        seen = self._seen
        if device not in seen:  # a new device: admitted while fewer than agent.max_devices are tracked
            if len(seen) >= self._max_devices:
                return self._reject("too_many_devices", f"{len(seen)} devices tracked, agent.max_devices is {self._max_devices}",
                                    msg, device)
            self._devices[msg.topic] = device
        seen[device] = self._now
        stamps, rows = decoded
        self._accepted += len(stamps)
        pending = self._pending.get(device)
        if pending is None:
            self.windows.register(device)  # devices keep the order they came in, gathered or not
            pending = self._pending[device] = Gathered(len(self.channels))
        pending.add(stamps, rows)
        self._pending_rows += len(stamps)
        if self._pending_rows >= FLUSH_ROWS:
            self.flush()
        return None

    def flush(self) -> None:
        """Place the readings :meth:`ingest` gathered in the windows, one array per device."""
        pending, self._pending, self._pending_rows = self._pending, {}, 0
        for device, gathered in pending.items():
            self._place(device, *gathered.take())

    def _place(self, device: str, ts: np.ndarray, values: np.ndarray) -> None:
        """Put readings in the device's windows; counts late, duplicate, future and past readings and
        gap resets. A reading stamped more than ``windows.max_clock_skew_s`` after the clock is future."""
        outcomes = self.windows.add_rows(device, ts, values, self._now + self._max_skew_s)
        if len(outcomes) > 1 or Added.OK not in outcomes:
            for added, n in outcomes.items():
                if added is Added.RESET:
                    self.metrics.window_resets.inc(n)
                elif added is not Added.OK:
                    self.metrics.readings_dropped.labels(added.value).inc(n)
                    if added is Added.FUTURE or added is Added.PAST:
                        log.debug("readings_dropped reason=%s device_id=%s count=%d clock=%.3f", added.value, device, n, self._now)

    def _reject(self, reason: str, detail: str, msg: Message, device: str | None) -> Record:
        self.metrics.rejected.labels(reason).inc()
        log.debug("payload_rejected reason=%s topic=%s bytes=%d detail=%s", reason, msg.topic, len(msg.payload), detail[:200])
        letter = make_deadletter(agent_id=self._agent_id, source=f"mqtt:{msg.topic}", reason=reason, detail=detail,
                                 received_at=msg.received_at, payload=msg.payload,
                                 max_bytes=self.config.agent.deadletter_max_bytes, device_id=device)
        return Record("deadletter", self._kafka.deadletter_topic, device.encode() if device else None, encode_deadletter(letter))

    def score_ready(self) -> list[Record]:
        """Score all ready windows, across devices, in as few calls as ``max_batch_windows`` allows
        (one call per tick unless more are ready); decide and sample them."""
        records: list[Record] = []
        while self.windows.ready_count:
            batch = self.windows.take_batch(self.config.agent.max_batch_windows)
            started = self._timer()
            windows = batch.values.astype(np.float32)
            members = None
            if self.manifest.members is not None:
                scores, channel_scores, members = self.scorer.score_members(windows)
            else:
                scores, channel_scores = self.scorer.score(windows)
            elapsed = self._timer() - started
            self.metrics.inference_seconds.observe(elapsed)
            if self.shadow is not None:
                self.shadow(windows, scores, self.decider.threshold, elapsed)
            self.metrics.inference_batch.observe(len(batch))
            self.metrics.windows_scored.inc(len(batch))
            health = self.health.check(batch.ts, batch.values) if self.health is not None else None
            records.extend(self._decide(batch, np.asarray(scores, dtype=np.float64), channel_scores, health, members))
        return records

    def _decide(self, batch: WindowBatch, scores: np.ndarray, channel_scores: np.ndarray,
                health: BatchHealth | None = None, members: np.ndarray | None = None) -> list[Record]:
        """Decide a scored batch device by device in whole-array passes (:meth:`_fire`); then only
        firing windows, and windows while a device still owes anomaly context, are visited one by one.
        With ``health`` (:meth:`SensorHealth.check` of the batch), a device's sensor fault events come
        first, and its windows failing a check do not fire as process anomalies (counted). An ensemble's
        ``members`` scores (batch, members) are what its layer decides."""
        records: list[Record] = []
        ratios: list[np.ndarray] = []
        look = health is not None and self.health is not None and (self.health.devices > 0 or bool(health.any.any()))
        for device, lo, hi in batch.runs:
            suspect = None
            if look and health is not None and self.health is not None:
                suspect, faults = self.health.device(device, health, lo, hi)
                records.extend(self._fault_event(batch.window(i, device), float(scores[i]), fault) for i, fault in faults)
            idx = self._finite(batch, device, scores, lo, hi)
            if not len(idx):
                continue
            device_scores = scores[idx]
            fire, thresholds = self._fire(batch, device, idx, device_scores, None if members is None else members[idx])
            if suspect is not None and (fire & suspect[idx - lo]).any():  # the sensor fault, not the process
                self.metrics.anomalies_suppressed.inc(int((fire & suspect[idx - lo]).sum()))
                fire = fire & ~suspect[idx - lo]
            ratios.append((device_scores / thresholds)[thresholds > 0])
            records.extend(self._device_records(batch, device, idx, device_scores, thresholds, fire, channel_scores))
            if self.escalator is not None:
                records.extend(self.escalator.select(batch, device, idx, device_scores, thresholds, fire, self.manifest,
                                                     self.channels, self._now,
                                                     skip=None if suspect is None else suspect[idx - lo]))
        if ratios:
            self.metrics.score_ratio.observe_many(np.concatenate(ratios))
        return records

    def _finite(self, batch: WindowBatch, device: str, scores: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """The batch rows ``lo``..``hi`` (one device's windows) with a finite score; the others are counted and logged."""
        idx = np.arange(lo, hi)
        finite = np.isfinite(scores[lo:hi])
        if finite.all():
            return idx
        for i in idx[~finite].tolist():
            self.metrics.invalid_scores.inc()
            log.warning("score_invalid device_id=%s window_end=%s score=%s", device, float(batch.ts[i, -1]), scores[i])
        kept: np.ndarray = idx[finite]
        return kept

    def _device_records(self, batch: WindowBatch, device: str, idx: np.ndarray, scores: np.ndarray, thresholds: np.ndarray,
                        fire: np.ndarray, channel_scores: np.ndarray) -> list[Record]:
        """One device's records in window order (``idx``: its batch rows; ``scores``, ``thresholds``, ``fire``:
        per row): the quiet stretch before each firing window, then that window (its event and samples)."""
        key = device.encode()
        records: list[Record] = []
        start = 0
        for fired in [*np.flatnonzero(fire).tolist(), len(idx)]:  # the last "firing window" is the end
            records.extend(self._quiet_stretch(batch, device, idx, scores, thresholds, start, fired, key))
            if fired < len(idx):
                i = int(idx[fired])
                records.extend(self._observe(batch, device, i, float(scores[fired]), float(thresholds[fired]), channel_scores[i], key))
            start = fired + 1
        return records

    def _quiet_stretch(self, batch: WindowBatch, device: str, idx: np.ndarray, scores: np.ndarray, thresholds: np.ndarray,
                       start: int, end: int, key: bytes) -> list[Record]:
        """The samples of a device's quiet windows ``start``..``end`` (positions in ``idx``): one by one while it
        still owes anomaly context, the rest in one call to the sampler."""
        records: list[Record] = []
        while start < end and not self.sampler.quiet(device):
            records.extend(self._observe(batch, device, int(idx[start]), float(scores[start]), float(thresholds[start]), None, key))
            start += 1
        if start < end:
            first = start

            def scored(m: int) -> Scored:
                at = first + m
                return Scored(batch.window(int(idx[at]), device), float(scores[at]), float(thresholds[at]), False)

            records.extend(self._telemetry(sample, key) for sample in self.sampler.observe_quiet(device, end - first, scored))
        return records

    def _fire(self, batch: WindowBatch, device: str, idx: np.ndarray, scores: np.ndarray,
              members: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Which of a device's scored windows fire, and each one's threshold: the adaptive layer's
        (per device, moving; an ensemble's decides its ``members`` scores) unless it is off or the device
        has a fixed ``decision.device_thresholds`` entry; then the decider's fixed threshold. k-of-n
        debounce in both cases."""
        if self.adaptive is None or device in self.decider.device_thresholds:
            fire, _over, threshold = self.decider.decide_many(device, scores, batch.segment[idx])
            return fire, np.full(len(scores), threshold)
        over, _surprise, thresholds = self.adaptive.decide_many(device, scores if members is None else members,
                                                                batch.ts[idx, -1], batch.values[idx, -1, :])
        return self.decider.debounce(device, over, batch.segment[idx]), thresholds

    def _observe(self, batch: WindowBatch, device: str, i: int, score: float, threshold: float,
                 fired_channel_scores: Sequence[float] | None, key: bytes) -> list[Record]:
        """One window's records: its event if it fired (``fired_channel_scores`` given), then its samples."""
        window = batch.window(i, device)
        fires = fired_channel_scores is not None
        records = [self._event(window, score, threshold, fired_channel_scores, key)] if fired_channel_scores is not None else []
        records.extend(self._telemetry(sample, key) for sample in self.sampler.observe(Scored(window, score, threshold, fires)))
        return records

    def _event(self, window: Window, score: float, threshold: float, channel_scores: Sequence[float], key: bytes) -> Record:
        event = build_event(device_id=window.device_id, window_start=window.start, window_end=window.end, score=score,
                            threshold=threshold, channel_scores=channel_scores, manifest=self.manifest,
                            agent_id=self._agent_id, clock=self._clock)
        self.metrics.anomalies.inc()
        log.info("anomaly_detected device_id=%s window_end=%s score=%.4g threshold=%.4g event_id=%s",
                 window.device_id, window.end, score, threshold, event.event_id)
        return Record("anomaly", self._kafka.anomalies_topic, key, encode_event(event))

    def _fault_event(self, window: Window, score: float, fault: SensorFault) -> Record:
        """The ``sensor_fault`` event of a window that failed a check: the model's score (0 if not finite)
        and the device's threshold come along for context."""
        device = window.device_id
        threshold = self.adaptive.threshold(device) if self.adaptive is not None and device not in self.decider.device_thresholds \
            else self.decider.threshold_for(device)
        event = build_event(device_id=device, window_start=window.start, window_end=window.end,
                            score=score if np.isfinite(score) else 0.0, threshold=threshold, channel_scores=(),
                            manifest=self.manifest, agent_id=self._agent_id, clock=self._clock, fault=fault)
        self.metrics.sensor_faults.labels(fault.check).inc()
        log.info("sensor_fault_detected device_id=%s window_end=%s check=%s channels=%s event_id=%s",
                 device, window.end, fault.check, ",".join(fault.channels), event.event_id)
        return Record("anomaly", self._kafka.anomalies_topic, device.encode(), encode_event(event))

    def _telemetry(self, sample: Sample, key: bytes) -> Record:
        s = sample.scored
        message = telemetry_from_window(device_id=s.window.device_id, agent_id=self._agent_id, reason=sample.reason,
                                        channels=self.channels, ts=s.window.ts.tolist(), values=s.window.values.tolist(),
                                        score=s.score, threshold=s.threshold, anomalous=s.anomalous,
                                        model_sha256=self.manifest.sha256)
        self.metrics.telemetry_windows.labels(sample.reason).inc()
        return Record("telemetry", self._kafka.telemetry_topic, key, encode_telemetry(message))

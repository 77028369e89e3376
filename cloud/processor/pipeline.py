"""One polled batch of one partition, start to store: decode, de-duplicate, apply in event time,
write everything in one transaction.

The partition's progress row is locked for the transaction, so two processes that briefly both
believe they own a partition (during a rebalance) serialise; its ``version`` tells whether the
in-memory device states are still what the store holds, otherwise they are reloaded. Events are
keyed by ``event_id``: a redelivered event is counted as a duplicate and has no other effect, so
replaying a partition from any offset leaves the store unchanged. Called from the consumer
thread; blocks on the store; store errors propagate after the in-memory state is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.processor.alerts import alert_rows
from cloud.processor.config import ProcessorConfig
from cloud.processor.drift import DriftMonitor, Expectation
from cloud.processor.fastevent import FastEventDecoder
from cloud.processor.incidents import Changes, DeviceState, IncidentTracker, new_state
from cloud.processor.metrics import ProcessorMetrics
from cloud.processor.store import PartitionRow, Store
from edge.contract import AnomalyEvent, ContractError, decode_event

log = logging.getLogger(__name__)


@dataclass
class PartitionContext:
    """What this process holds in memory for a partition, valid while ``version`` matches the store."""

    version: int
    watermark: float | None
    states: dict[str, DeviceState]
    due: dict[str, float] = field(default_factory=dict)
    min_due: float = math.inf


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    deadletters: int = 0
    late_applied: int = 0
    late_dropped: int = 0
    alerts: list[tuple[str, str, str]] = field(default_factory=list)  # (alert_id, incident_id, payload) for the outbox
    dead: list[tuple[Any, ...]] = field(default_factory=list)  # (topic, partition, offset, field, reason, payload)


class Pipeline:
    """Applies batches to the store; keeps per-partition contexts between batches."""

    def __init__(self, config: ProcessorConfig, store: Store, metrics: ProcessorMetrics, clock: Callable[[], float],
                 expectations: dict[str, Expectation] | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        site_of = config.fleet.site_of
        self.tracker = IncidentTracker(config.incidents, site_of)
        self.drift = DriftMonitor(config.drift, expectations or {}, site_of)
        self.lateness = config.incidents.allowed_lateness_s
        self.contexts: dict[int, PartitionContext] = {}
        self.fast = FastEventDecoder()

    def forget(self, partitions: Sequence[int]) -> None:
        """Drop in-memory state (on rebalance); the next batch reloads it from the store."""
        for p in partitions:
            self.contexts.pop(p, None)

    def open_incidents(self) -> dict[str, int]:
        counts = {"incident": 0, "drift": 0}
        for ctx in self.contexts.values():
            for st in ctx.states.values():
                counts["incident"] += st["open"] is not None
                counts["drift"] += sum(d["open"] is not None for d in st["drift"].values())
        return counts

    def process(self, topic: str, partition: int, records: Sequence[Any]) -> BatchResult:
        """Store one batch of Kafka records (``.offset``, ``.value``) of one partition, atomically."""
        started = time.perf_counter()
        now = self.clock()
        res = BatchResult()
        decoded: list[tuple[Any, AnomalyEvent]] = []
        dead: list[tuple[str, int, int, str, str, bytes, float]] = []
        fast = self.fast.decode
        for r in records:
            try:
                if r.value is None:
                    raise ContractError("$", None, "a record without a value is not an anomaly event")
                decoded.append((r, fast(r.value) or decode_event(r.value)))
            except ContractError as exc:
                dead.append((topic, partition, r.offset, exc.field, str(exc), r.value or b"", now))
                self.metrics.deadletters.labels(cause="json" if exc.field == "$" else "contract").inc()
            except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
                # the contract promises ContractError only; anything else is its bug, and still bad input here
                log.error("event_decoder_failed offset=%d error=%r", r.offset, exc)
                dead.append((topic, partition, r.offset, "$", f"$: decoder error {exc!r}", r.value or b"", now))
                self.metrics.deadletters.labels(cause="decoder_error").inc()
        if dead:
            log.info("events_deadlettered topic=%s partition=%d count=%d first_reason=%r", topic, partition, len(dead), dead[0][4])
        try:
            with self.store.transaction():
                row = self.store.lock_partition(topic, partition, now)
                ctx = self._context(topic, row)
                changes = Changes()
                touched: set[str] = set()
                events = self._apply(ctx, topic, partition, decoded, now, changes, touched, res)
                self.tracker.flush_updated(changes)
                self.store.insert_events(events)
                self.store.insert_deadletters(dead)
                self.store.save_device_states(topic, partition, {d: json.dumps(ctx.states[d]) for d in touched})
                self.store.upsert_incidents(changes.incidents.values(), now)
                self.store.insert_alerts(alert_rows(changes.alerts), now)
                row.version += 1
                row.watermark = ctx.watermark
                if records:
                    row.next_offset = max(row.next_offset, records[-1].offset + 1)
                self.store.save_partition(row, now)
        except BaseException:
            self.contexts.pop(partition, None)
            raise
        ctx.version = row.version
        res.deadletters = len(dead)
        res.alerts = [(r[0], r[1], r[5]) for r in alert_rows(changes.alerts)]
        res.dead = [d[:6] for d in dead]
        self.metrics.events_consumed.inc(len(records))
        self.metrics.events_processed.inc(res.stored)
        self.metrics.duplicates_dropped.inc(res.duplicates)
        self.metrics.late_events.labels(applied="true").inc(res.late_applied)
        self.metrics.late_events.labels(applied="false").inc(res.late_dropped)
        self.metrics.processing_seconds.observe(time.perf_counter() - started)
        return res

    def advance_idle(self, topic: str, partition: int, watermark: float) -> list[tuple[str, str, str]]:
        """Move an idle partition's watermark to ``watermark`` (if later) and decide what became due; returns outbox alerts."""
        now = self.clock()
        changes = Changes()
        try:
            with self.store.transaction():
                row = self.store.lock_partition(topic, partition, now)
                ctx = self._context(topic, row)
                if ctx.watermark is not None and watermark <= ctx.watermark:
                    return []
                ctx.watermark = watermark
                touched: set[str] = set()
                self._close_due(ctx, watermark - self.lateness, changes, touched)
                self.store.save_device_states(topic, partition, {d: json.dumps(ctx.states[d]) for d in touched})
                self.store.upsert_incidents(changes.incidents.values(), now)
                self.store.insert_alerts(alert_rows(changes.alerts), now)
                row.version += 1
                row.watermark = watermark
                self.store.save_partition(row, now)
        except BaseException:
            self.contexts.pop(partition, None)
            raise
        ctx.version = row.version
        log.info("watermark_advanced_idle topic=%s partition=%d watermark=%.3f alerts=%d", topic, partition, watermark,
                 len(changes.alerts))
        return [(r[0], r[1], r[5]) for r in alert_rows(changes.alerts)]

    def _context(self, topic: str, row: PartitionRow) -> PartitionContext:
        ctx = self.contexts.get(row.partition)
        if ctx is not None and ctx.version == row.version:
            return ctx
        states = {d: json.loads(s) for d, s in self.store.load_device_states(topic, row.partition).items()}
        ctx = PartitionContext(row.version, row.watermark, states)
        for device, st in states.items():
            self._set_due(ctx, device, st)
        self.contexts[row.partition] = ctx
        log.info("partition_state_loaded topic=%s partition=%d devices=%d version=%d", topic, row.partition, len(states), row.version)
        return ctx

    def _apply(self, ctx: PartitionContext, topic: str, partition: int, decoded: list[tuple[Any, AnomalyEvent]], now: float,
               changes: Changes, touched: set[str], res: BatchResult) -> list[tuple[Any, ...]]:
        existing = self.store.existing_event_ids([e.event_id for _, e in decoded])
        rows: list[tuple[Any, ...]] = []
        for r, ev in decoded:
            if ev.event_id in existing:
                res.duplicates += 1
                continue
            existing.add(ev.event_id)
            t = ev.window_end
            late = self.tracker.is_late(t, ctx.watermark)
            if late:
                res.late_dropped += 1
            else:
                if ctx.watermark is not None and t < ctx.watermark:
                    res.late_applied += 1
                if ctx.watermark is None or t > ctx.watermark:
                    ctx.watermark = t
                final = ctx.watermark - self.lateness
                if final >= ctx.min_due:
                    self._close_due(ctx, final, changes, touched)
                st = ctx.states.get(ev.device_id)
                if st is None:
                    st = ctx.states[ev.device_id] = new_state()
                self.tracker.apply(ev.device_id, st, t, ev.score, ev.model_name, ev.model_version, final, changes)
                self.drift.apply(ev.device_id, st, t, ev.score, ev.threshold, ev.model_name, ev.model_version, ev.model_sha256,
                                 final, changes)
                self._set_due(ctx, ev.device_id, st)
                touched.add(ev.device_id)
            res.stored += 1
            rows.append((ev.event_id, ev.device_id, ev.agent_id, ev.window_start, t, ev.score, ev.threshold,
                         r.value.decode(), ev.model_name, ev.model_version, ev.model_sha256,
                         ev.detected_at, topic, partition, r.offset, int(late), now))
        return rows

    def _close_due(self, ctx: PartitionContext, final: float, changes: Changes, touched: set[str]) -> None:
        for device in sorted(d for d, due in ctx.due.items() if due <= final):
            st = ctx.states[device]
            self.tracker.advance(device, st, final, changes)
            self.drift.flush(device, st, final, changes)
            touched.add(device)
            self._set_due(ctx, device, st)
        ctx.min_due = min(ctx.due.values(), default=math.inf)

    def _set_due(self, ctx: PartitionContext, device: str, st: DeviceState) -> None:
        due = min(self.tracker.due(st), self.drift.due(st))
        if due < math.inf:
            ctx.due[device] = due
            if due < ctx.min_due:
                ctx.min_due = due
        else:
            ctx.due.pop(device, None)

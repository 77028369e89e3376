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

import gc
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from cloud.processor.alerts import alert_rows
from cloud.processor.config import ProcessorConfig
from cloud.processor.drift import DriftMonitor, Expectation
from cloud.processor.fastevent import EventFields, FastEventDecoder, event_fields
from cloud.processor.incidents import Changes, DeviceState, IncidentTracker, new_state
from cloud.processor.store import DuplicateEvents, PartitionRow, Store
from edge.contract import ContractError, decode_event

if TYPE_CHECKING:
    from cloud.processor.metrics import ProcessorMetrics

log = logging.getLogger(__name__)

OffsetValue = tuple[int, bytes | None]  # (offset, value) of a Kafka record
Decoded = tuple[int, bytes, EventFields]  # (offset, payload, fields) of a valid event
DeadRow = tuple[str, int, int, str, str, bytes, float]  # (topic, partition, offset, field, reason, payload, created_at)


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off while inside (and left as it was found).

    It would run every few hundred allocations and walk every young object: the poll's records, the decoded
    fields, the rows. Nothing of a batch builds reference cycles, and once the batch is dropped the collection
    that follows finds little alive (it was a third of the per-event CPU time).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


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


class IncidentPipeline:
    """Applies batches to the store; keeps per-partition contexts between batches."""

    def __init__(self, config: ProcessorConfig, store: Store, metrics: ProcessorMetrics, clock: Callable[[], float],
                 expectations: dict[str, Expectation] | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        site_of = config.fleet.site_of
        self.tracker = IncidentTracker(config.incidents, site_of)
        self.faults = IncidentTracker(config.incidents, site_of, kind="sensor_fault", min_events=1)  # in state["sensor"]
        self.drift = DriftMonitor(config.drift, expectations or {}, site_of)
        self.lateness = config.incidents.allowed_lateness_s
        self.max_skew_s = config.incidents.max_clock_skew_s
        self.contexts: dict[int, PartitionContext] = {}
        self.fast = FastEventDecoder()
        self._lookup: set[int] = set()  # partitions whose last batch held duplicates: look ids up first
        # device incidents' alerts wait for the escalation thread's verdicts (cloud.processor.escalation)
        self.held = frozenset({"incident"}) if config.escalation.enabled else frozenset[str]()

    def forget(self, partitions: Sequence[int]) -> None:
        """Drop in-memory state (on rebalance); the next batch reloads it from the store."""
        for p in partitions:
            self.contexts.pop(p, None)

    def open_incidents(self) -> dict[str, int]:
        counts = {"incident": 0, "drift": 0, "sensor_fault": 0}
        for ctx in self.contexts.values():
            for st in ctx.states.values():
                counts["incident"] += st["open"] is not None
                counts["sensor_fault"] += "sensor" in st and st["sensor"]["open"] is not None
                counts["drift"] += sum(d["open"] is not None for d in st["drift"].values())
        return counts

    def process(self, topic: str, partition: int, records: Sequence[OffsetValue]) -> BatchResult:
        """Store one batch of Kafka records, as (offset, value) pairs, of one partition, atomically."""
        return self.process_many([(topic, partition, records)])[0]

    def process_many(self, batches: Sequence[tuple[str, int, Sequence[OffsetValue]]]) -> list[BatchResult]:
        """Store the batches of one poll (one per partition) in one transaction; results in the same order.

        Each partition is applied exactly as if alone (its own progress row, context and event-time
        order); sharing the transaction only saves commits. Progress rows are locked in (topic,
        partition) order, so two processes never wait on each other in a cycle. Optimistic about
        duplicates: events are inserted without looking them up first; when the insert meets one
        already stored, everything is rolled back and redone with the lookup (which those partitions
        keep doing until a batch of theirs holds no duplicates).
        """
        started = time.perf_counter()
        now = self.clock()
        with paused_gc():
            work = [(topic, partition, records, *self._decode(topic, partition, records, now)) for topic, partition, records in batches]
            lookup = any(partition in self._lookup for _, partition, _ in batches)
            try:
                done = self._store(work, now, lookup)
            except DuplicateEvents:
                done = self._store(work, now, True)
                lookup = True
        out: list[BatchResult] = []
        for (_, partition, records, _, dead), res in zip(work, done, strict=True):
            if res.duplicates:
                self._lookup.add(partition)
            elif lookup:
                self._lookup.discard(partition)
            res.deadletters = len(dead)
            res.dead = [d[:6] for d in dead]
            self.metrics.events_consumed.inc(len(records))
            self.metrics.events_processed.inc(res.stored)
            self.metrics.duplicates_dropped.inc(res.duplicates)
            self.metrics.late_events.labels(applied="true").inc(res.late_applied)
            self.metrics.late_events.labels(applied="false").inc(res.late_dropped)
            out.append(res)
        self.metrics.processing_seconds.observe(time.perf_counter() - started)
        return out

    def _decode(self, topic: str, partition: int, records: Sequence[OffsetValue], now: float) -> tuple[list[Decoded], list[DeadRow]]:
        """Valid events as (offset, payload, fields) and dead-letter rows, in record order.

        An event whose ``window_end`` is more than ``incidents.max_clock_skew_s`` ahead of ``now``
        is a dead letter (cause ``future``): applied, it would move the partition's watermark so
        far that every later event of the partition were late beyond lateness."""
        decoded: list[Decoded] = []
        dead: list[DeadRow] = []
        fields = self.fast.fields
        latest = now + self.max_skew_s
        for offset, value in records:
            if value is not None:
                f = fields(value)
                if f is not None:
                    if f.window_end <= latest:
                        decoded.append((offset, value, f))
                    else:
                        dead.append(self._future(topic, partition, offset, value, f.window_end, now))
                    continue
            try:  # the fast path declined: the contract decides, and names the problem
                if value is None:
                    raise ContractError("$", None, "a record without a value is not an anomaly event")
                f = event_fields(decode_event(value))
                if f.window_end <= latest:
                    decoded.append((offset, value, f))
                else:
                    dead.append(self._future(topic, partition, offset, value, f.window_end, now))
            except ContractError as exc:
                dead.append((topic, partition, offset, exc.field, str(exc), value or b"", now))
                self.metrics.deadletters.labels(cause="json" if exc.kind == "not_json" else "contract").inc()
            except (ArithmeticError, ValueError, TypeError, RecursionError) as exc:
                # the contract promises ContractError only; anything else is its bug, and still bad input here
                log.error("event_decoder_failed offset=%d error=%r", offset, exc)
                dead.append((topic, partition, offset, "$", f"$: decoder error {exc!r}", value or b"", now))
                self.metrics.deadletters.labels(cause="decoder_error").inc()
        if dead:
            log.info("events_deadlettered topic=%s partition=%d count=%d first_reason=%r", topic, partition, len(dead), dead[0][4])
        return decoded, dead

    def _future(self, topic: str, partition: int, offset: int, value: bytes, window_end: float, now: float) -> DeadRow:
        self.metrics.deadletters.labels(cause="future").inc()
        reason = f"window_end: {window_end!r} is more than {self.max_skew_s:g} s ahead of the processor's clock ({now:.3f})"
        return (topic, partition, offset, "window_end", reason, value, now)

    def _store(self, work: list[tuple[str, int, Sequence[OffsetValue], list[Decoded], list[DeadRow]]], now: float,
               lookup: bool) -> list[BatchResult]:
        done: list[tuple[BatchResult, Changes, set[str]]] = []  # per partition: result, changes, devices touched
        touched_ctx: list[tuple[PartitionContext, PartitionRow]] = []
        try:
            with self.store.transaction():
                rows = {(t, p): self.store.lock_partition(t, p, now) for t, p in sorted({(t, p) for t, p, *_ in work})}
                contexts = [self._context(topic, rows[topic, partition]) for topic, partition, *_ in work]
                # event ids stored or applied so far, across the poll's partitions (as if one by one)
                seen = self.store.existing_event_ids([f.event_id for *_, decoded, _ in work for _, _, f in decoded]) if lookup else set()
                # events are written while they are applied (PostgreSQL inserts them meanwhile); no other statement
                # may run until the writer closes
                with self.store.events_writer(expect_new=not lookup) as write_event:
                    for (topic, partition, _, decoded, _), ctx in zip(work, contexts, strict=True):
                        res, changes, touched = BatchResult(), Changes(), set[str]()
                        self._apply(ctx, topic, partition, decoded, seen, now, changes, touched, res, write_event)
                        self.tracker.flush_updated(changes)
                        self.faults.flush_updated(changes)
                        done.append((res, changes, touched))
                for (topic, partition, records, _, dead), ctx, (res, changes, touched) in zip(work, contexts, done, strict=True):
                    row = rows[topic, partition]
                    self.store.insert_deadletters(dead)
                    self.store.save_device_states(topic, partition, {d: orjson.dumps(ctx.states[d]).decode() for d in touched})
                    self.store.upsert_incidents(changes.incidents.values(), now)
                    outbox = alert_rows(changes.alerts)
                    self.store.insert_alerts(outbox, now, self.held)
                    res.alerts = [(r[0], r[1], r[5]) for r in outbox if r[2] not in self.held]
                    row.version += 1
                    row.watermark = ctx.watermark
                    if records:
                        row.next_offset = max(row.next_offset, records[-1][0] + 1)
                    self.store.save_partition(row, now)
                    touched_ctx.append((ctx, row))
        except BaseException:
            for _, partition, *_ in work:
                self.contexts.pop(partition, None)
            raise
        for ctx, row in touched_ctx:
            ctx.version = row.version
        return [res for res, _, _ in done]

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
                self.store.save_device_states(topic, partition, {d: orjson.dumps(ctx.states[d]).decode() for d in touched})
                self.store.upsert_incidents(changes.incidents.values(), now)
                self.store.insert_alerts(alert_rows(changes.alerts), now, self.held)
                row.version += 1
                row.watermark = watermark
                self.store.save_partition(row, now)
        except BaseException:
            self.contexts.pop(partition, None)
            raise
        ctx.version = row.version
        log.info("watermark_advanced_idle topic=%s partition=%d watermark=%.3f alerts=%d", topic, partition, watermark,
                 len(changes.alerts))
        return [(r[0], r[1], r[5]) for r in alert_rows(changes.alerts) if r[2] not in self.held]

    def _context(self, topic: str, row: PartitionRow) -> PartitionContext:
        ctx = self.contexts.get(row.partition)
        if ctx is not None and ctx.version == row.version:
            return ctx
        states = {d: orjson.loads(s) for d, s in self.store.load_device_states(topic, row.partition).items()}
        ctx = PartitionContext(row.version, row.watermark, states)
        for device, st in states.items():
            self._set_due(ctx, device, st)
        self.contexts[row.partition] = ctx
        log.info("partition_state_loaded topic=%s partition=%d devices=%d version=%d", topic, row.partition, len(states), row.version)
        return ctx

    def _apply(self, ctx: PartitionContext, topic: str, partition: int, decoded: list[Decoded], existing: set[str], now: float,
               changes: Changes, touched: set[str], res: BatchResult, write: Callable[[tuple[Any, ...]], None]) -> None:
        """Apply the batch in record order; ``write`` takes the event rows to insert (duplicates left out)."""
        lateness = self.lateness
        tracker_apply, drift_apply, set_due = self.tracker.apply, self.drift.apply, self._set_due
        states = ctx.states
        wm = ctx.watermark
        stored = late_applied = late_dropped = duplicates = 0
        for offset, value, f in decoded:
            event_id = f.event_id
            if event_id in existing:
                duplicates += 1
                continue
            existing.add(event_id)
            t = f.window_end
            late = wm is not None and t < wm - lateness  # IncidentTracker.is_late
            if late:
                late_dropped += 1
            else:
                if wm is None or t > wm:
                    wm = ctx.watermark = t
                elif t < wm:
                    late_applied += 1
                final = wm - lateness
                if final >= ctx.min_due:
                    self._close_due(ctx, final, changes, touched)
                device = f.device_id
                st = states.get(device)
                if st is None:
                    st = states[device] = new_state()
                if f.kind == "sensor_fault":  # a sensor's fault: an incident of its own kind, not a process anomaly
                    self.faults.apply(st["sensor"] if "sensor" in st else st.setdefault("sensor", new_state()), f, final, changes)
                else:
                    tracker_apply(st, f, final, changes)
                    drift_apply(st, f, final, changes)
                set_due(ctx, device, st)
                touched.add(device)
            stored += 1
            write((event_id, f.device_id, t, f.score, value.decode(), topic, partition, offset, int(late), now))  # EVENT_COLUMNS
        res.stored += stored
        res.duplicates += duplicates
        res.late_applied += late_applied
        res.late_dropped += late_dropped

    def _close_due(self, ctx: PartitionContext, final: float, changes: Changes, touched: set[str]) -> None:
        for device in sorted(d for d, due in ctx.due.items() if due <= final):
            st = ctx.states[device]
            self.tracker.advance(device, st, final, changes)
            if "sensor" in st:
                self.faults.advance(device, st["sensor"], final, changes)
            self.drift.flush(device, st, final, changes)
            touched.add(device)
            self._set_due(ctx, device, st)
        ctx.min_due = min(ctx.due.values(), default=math.inf)

    def _set_due(self, ctx: PartitionContext, device: str, st: DeviceState) -> None:
        due = min(self.tracker.due(st), self.drift.due(st), self.faults.due(st["sensor"]) if "sensor" in st else math.inf)
        if due < math.inf:
            ctx.due[device] = due
            if due < ctx.min_due:
                ctx.min_due = due
        else:
            ctx.due.pop(device, None)

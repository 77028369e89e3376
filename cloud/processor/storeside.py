"""The processor's store side: every read and write of the store, in a process of its own
(``store.own_process``, the default) or in the consumer's.

The consumer side (:class:`cloud.processor.consumer.Processor`) polls Kafka, follows rebalances,
produces alerts and dead letters and commits offsets. It asks the store side through a
:class:`StoreClient`, one method per request of :class:`StoreWork`: ``process`` a poll's records
(decode, de-duplicate, apply and store in one transaction; the answer carries the alerts and dead
letters stored with them, for the outbox), ``fleet`` up to a final time, ``advance_idle``, ``forget``
revoked partitions' state, ``open_incidents`` (for the gauge), and the outbox's ``unpublished`` and
``mark_published``. Each request is sent at once and returns a :class:`Reply`; answers come in the
order the requests were sent, and :meth:`StoreClient.read_answer` fills in the oldest.

In a process of its own (:class:`ChildChannel`) the store side works on poll n while the consumer
side fetches and parses poll n+1 (kafka-python's record parsing is a third of the CPU time), so two
polls are in flight and two cores share the work; the child imports neither kafka nor
prometheus_client, so it is ready about when the consumer has joined its group. In the consumer's
process (:class:`LocalChannel`) a request is done when sent. A ``process`` that fails (a store
error) makes the store side answer the ``process`` requests after it with "not stored", untouched,
until ``resume``: the consumer side, which reads the answers in order, rewinds each partition to its
first record not stored, then resumes. The child records its metric calls, and each answer carries
them to the consumer side's registry. It ignores SIGTERM and SIGINT (the consumer side drains it)
and exits when its pipe closes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from cloud.processor.alerts import alert_rows
from cloud.processor.backends import background_checkpoints, open_store
from cloud.processor.config import ProcessorConfig
from cloud.processor.drift import load_expectations
from cloud.processor.fleet import FleetCorrelator
from cloud.processor.pipeline import IncidentPipeline, paused_gc
from cloud.processor.store import Store
from edge.cliutil import LOG_FORMAT

if TYPE_CHECKING:
    from cloud.processor.metrics import ProcessorMetrics

log = logging.getLogger(__name__)

OutboxRows = tuple[list[tuple[str, str, str]], list[tuple[Any, ...]]]  # alerts (id, incident, payload), dead letters
Batch = tuple[str, int, list[int], list[bytes | None]]  # a partition's records in a poll: topic, partition, offsets, values
R = TypeVar("R")
Request = Callable[["StoreWork"], R]  # a StoreWork method with its arguments bound (a partial: it pickles)


def store_errors() -> tuple[type[BaseException], ...]:
    """Driver exceptions that mean "the store write failed, retry the batch"."""
    import sqlite3

    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(errors)


def store_failed(metrics: ProcessorMetrics, store: Store, message: str, *args: Any) -> None:
    """Count and log a failed store statement or transaction; a connection the server closed is opened again."""
    metrics.store_errors.inc()
    log.error(message, *args)
    store.reconnect_if_lost()


class StoreWork:
    """The incident pipeline and the fleet correlator on one store connection; each public method is a request."""

    def __init__(self, config: ProcessorConfig, store: Store, metrics: ProcessorMetrics, clock: Callable[[], float]) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.pipeline = IncidentPipeline(config, store, metrics, clock, load_expectations(config.drift))
        self.fleet_correlator = FleetCorrelator(config.fleet, config.kafka.anomalies_topic)
        self.failed = False  # a process failed: the next ones are not stored until resume

    def process(self, batches: Sequence[Batch]) -> OutboxRows | None:
        """Store one poll (one batch per partition) in one transaction; its outbox rows, or None: not stored.

        Offsets and values come as two lists: pickled, they cost a fifteenth of (offset, value) objects."""
        if self.failed:
            return None
        try:
            results = self.pipeline.process_many([(t, p, list(zip(offsets, values, strict=True))) for t, p, offsets, values in batches])
        except store_errors() as exc:
            self.failed = True
            store_failed(self.metrics, self.store, "store_write_failed partitions=%s error=%r; retrying",
                         sorted(b[1] for b in batches), exc)
            return None
        return [a for r in results for a in r.alerts], [d for r in results for d in r.dead]

    def resume(self) -> None:
        self.failed = False

    def _guarded(self, request: Callable[[], Any], default: Any, name: str) -> Any:
        """``request()``, or ``default`` after a store error (the consumer side asks again later)."""
        try:
            return request()
        except store_errors() as exc:
            store_failed(self.metrics, self.store, "store_request_failed request=%s error=%r; asked again later", name, exc)
            return default

    def fleet(self, final: float) -> OutboxRows:
        """Bring fleet incidents up to ``final`` (the consumer side's global final time)."""
        changes = self._guarded(lambda: self.fleet_correlator.evaluate(self.store, final, self.clock()), None, "fleet")
        return ([(r[0], r[1], r[5]) for r in alert_rows(changes.alerts)] if changes is not None else []), []

    def advance_idle(self, topic: str, partition: int, watermark: float) -> OutboxRows:
        return self._guarded(lambda: self.pipeline.advance_idle(topic, partition, watermark), [], "advance_idle"), []

    def forget(self, partitions: Sequence[int]) -> None:
        self.pipeline.forget(partitions)

    def open_incidents(self) -> dict[str, int]:
        counts = self.pipeline.open_incidents()
        counts["fleet_incident"] = self._guarded(lambda: len(self.store.incidents(kind="fleet_incident", open_only=True)), 0,
                                                 "open_incidents")
        return counts

    def unpublished(self, table: str, created_before: float) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._guarded(lambda: self.store.unpublished(table, created_before=created_before), [],
                                                    "unpublished")
        return rows

    def mark_published(self, table: str, keys: Sequence[Sequence[Any]], now: float) -> None:
        """A failure leaves the rows unpublished: the orphan sweep produces them again (at least once)."""
        self._guarded(lambda: self.store.mark_published(table, keys, now), None, "mark_published")


class _Recorded:
    """One metric (or labelled child) of :class:`MetricCalls`."""

    def __init__(self, calls: list[tuple[Any, ...]], name: str, labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.calls, self.name, self.label_values = calls, name, labels

    def labels(self, **labels: str) -> _Recorded:
        return _Recorded(self.calls, self.name, tuple(labels.items()))

    def inc(self, amount: float = 1) -> None:
        self.calls.append((self.name, self.label_values, "inc", amount))

    def observe(self, amount: float) -> None:
        self.calls.append((self.name, self.label_values, "observe", amount))


class MetricCalls:
    """Stands in for :class:`ProcessorMetrics` in the child: records the calls, replayed by :func:`replay`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> _Recorded:
        return _Recorded(self.calls, name)

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls[:] = list(self.calls), []
        return calls


def replay(metrics: ProcessorMetrics, calls: list[tuple[Any, ...]]) -> None:
    for name, labels, method, amount in calls:
        metric = getattr(metrics, name)
        getattr(metric.labels(**dict(labels)) if labels else metric, method)(amount)


class Reply(Generic[R]):
    """The answer to one request, once :meth:`StoreClient.read_answer` has read it; ``then`` gets it then."""

    __slots__ = ("poll", "_answer", "_then")

    def __init__(self, poll: bool) -> None:
        self.poll = poll  # the answer to a poll's ``process``
        self._answer: list[R] = []  # the answer, once read
        self._then: Callable[[R], None] | None = None

    def then(self, callback: Callable[[R], None]) -> None:
        self._then = callback

    def answered(self, value: R) -> None:
        self._answer.append(value)
        if self._then is not None:
            self._then(value)

    @property
    def value(self) -> R:
        if not self._answer:
            raise RuntimeError("the store side has not answered this request yet")
        return self._answer[0]


class Channel(Protocol):
    """Where the store side runs: :class:`LocalChannel` (this process) or :class:`ChildChannel` (a child)."""

    depth: int  # polls that may be in flight

    def started(self) -> None: ...

    def submit(self, request: Request[Any]) -> None: ...

    def receive(self) -> Any: ...

    def close(self) -> None: ...


class StoreClient:
    """The consumer side's end of the store side (a :class:`Channel`): one method per request of
    :class:`StoreWork`. Each sends its request at once and returns its :class:`Reply`."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.depth = channel.depth  # polls that may be in flight
        self.unanswered: deque[Reply[Any]] = deque()
        self.polls = 0  # polls among them

    def process(self, batches: Sequence[Batch]) -> Reply[OutboxRows | None]:
        return self._send(partial(StoreWork.process, batches=batches), poll=True)

    def resume(self) -> Reply[None]:
        return self._send(StoreWork.resume)

    def fleet(self, final: float) -> Reply[OutboxRows]:
        return self._send(partial(StoreWork.fleet, final=final))

    def advance_idle(self, topic: str, partition: int, watermark: float) -> Reply[OutboxRows]:
        return self._send(partial(StoreWork.advance_idle, topic=topic, partition=partition, watermark=watermark))

    def forget(self, partitions: Sequence[int]) -> Reply[None]:
        return self._send(partial(StoreWork.forget, partitions=partitions))

    def open_incidents(self) -> Reply[dict[str, int]]:
        return self._send(StoreWork.open_incidents)

    def unpublished(self, table: str, created_before: float) -> Reply[list[tuple[Any, ...]]]:
        return self._send(partial(StoreWork.unpublished, table=table, created_before=created_before))

    def mark_published(self, table: str, keys: Sequence[Sequence[Any]], now: float) -> Reply[None]:
        return self._send(partial(StoreWork.mark_published, table=table, keys=keys, now=now))

    def read_answer(self) -> None:
        """Read the oldest unanswered request's answer (waiting for it) into its reply."""
        reply = self.unanswered.popleft()
        self.polls -= reply.poll
        reply.answered(self.channel.receive())

    def _send(self, request: Request[R], *, poll: bool = False) -> Reply[R]:
        self.channel.submit(request)
        reply: Reply[R] = Reply(poll)
        self.unanswered.append(reply)
        self.polls += poll
        return reply


class LocalChannel:
    """The store side in the consumer's process: each request is done when sent (one poll in flight)."""

    depth = 1

    def __init__(self, config: ProcessorConfig, store: Store, metrics: ProcessorMetrics, clock: Callable[[], float]) -> None:
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(background_checkpoints(store))
        self.work = StoreWork(config, store, metrics, clock)
        self._answers: deque[Any] = deque()

    def started(self) -> None:
        pass

    def submit(self, request: Request[Any]) -> None:
        self._answers.append(request(self.work))

    def receive(self) -> Any:
        return self._answers.popleft()

    def close(self) -> None:
        self._exit.close()


class ChildChannel:
    """The store side in a child process (spawned, so no threads or locks of this one are inherited);
    two polls in flight."""

    depth = 2

    def __init__(self, config: ProcessorConfig, clock: Callable[[], float], metrics: ProcessorMetrics) -> None:
        self.metrics = metrics
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child_conn, config, clock, logging.getLogger().getEffectiveLevel()),
                                    name="edgewatch-store", daemon=True)
        self._process.start()
        child_conn.close()

    def started(self) -> None:
        """Wait until the child has opened its store (it starts while the consumer joins the group)."""
        self.receive()

    def submit(self, request: Request[Any]) -> None:
        try:
            self._conn.send(request)
        except OSError:  # a broken pipe
            raise self._gone() from None

    def receive(self) -> Any:
        try:
            ok, value, calls = self._conn.recv()
        except (EOFError, OSError):  # the child is gone
            raise self._gone() from None
        replay(self.metrics, calls)
        if not ok:
            raise value
        return value

    def _gone(self) -> RuntimeError:
        self._process.join(5)
        return RuntimeError(f"the store process exited (code {self._process.exitcode}); see its log lines above")

    def close(self) -> None:
        self._conn.close()  # the child exits at the end of its pipe
        self._process.join(30)
        if self._process.is_alive():
            log.error("store_process_stuck pid=%s; killed", self._process.pid)
            self._process.kill()


def _serve(conn: Connection, config: ProcessorConfig, clock: Callable[[], float], log_level: int) -> None:
    """The child's main: answer requests until the pipe closes."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    metrics = MetricCalls()
    with contextlib.ExitStack() as stack:
        try:
            store = open_store(config.store)
            stack.callback(store.close)
            stack.enter_context(background_checkpoints(store))
            work = StoreWork(config, store, metrics, clock)  # type: ignore[arg-type]  # records, for replay()
        except Exception as exc:  # noqa: BLE001  # sent to the consumer side, which raises it
            conn.send((False, _picklable(exc), metrics.take()))
            return
        conn.send((True, None, metrics.take()))
        while True:
            with paused_gc():  # as in the consumer's loop: the records are dropped at the end of the round
                try:
                    request: Request[Any] = conn.recv()
                except (EOFError, OSError):  # the consumer side closed the pipe (or died)
                    return
                try:
                    answer = (True, request(work), metrics.take())
                except Exception as exc:  # noqa: BLE001  # a bug: the consumer side raises it and stops
                    log.exception("store_request_failed request=%s", getattr(request, "func", request))
                    answer = (False, _picklable(exc), metrics.take())
                try:
                    conn.send(answer)
                except OSError:  # the consumer side is gone
                    return


def _picklable(exc: Exception) -> Exception:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"in the store process: {exc!r}")
    return exc

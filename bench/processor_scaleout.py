"""Processor scale-out: 1, 2 and 3 members of one group against as many bare consumers, in the same run.

Starts its own local stack (:class:`localdev.stack.LocalStack`) and a throwaway PostgreSQL, produces
``--events`` anomaly events (``--devices`` devices, keyed by device id) to a ``--partitions``-partition
topic (6), reads it ``--warmup`` times with a bare consumer (not measured), then in ``--repeat``
rounds (in reverse order every other round), for each member count, each in a fresh group from offset 0:

1. bare: that many ``KafkaConsumer`` processes in one group that only ``json.loads`` each value
   (auto-commit on, so a rebalance while they join re-reads little; the baseline);
2. the processor: that many members, each a process of its own with its store process (PostgreSQL,
   one fresh database per run, shared by the members).

Every member is a process spawned and imported before the clock starts; all start together. The
time runs from the start to the last event consumed (bare: every partition read to its end) or
stored for the first time (processor, ``events_processed_total`` summed over members), so it
includes the group's join and rebalances; the rate between 10 % and 90 % of the events leaves those
out. CPU seconds per event are the members' own (the processor's consumer and store sides apart),
read from ``getrusage`` in each member, and the Kafka broker's and PostgreSQL's (its server and the
backends it reaped), from ``/proc``. Prints events/s, the ratio to the same round's bare consumers,
the per-member ratio (rate / (members x the one-member rate of the same kind and round)), and CPU.

    .venv/bin/python -m bench.processor_scaleout [--events 200000] [--repeat 5] [--members 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.sharedctypes import Synchronized, SynchronizedArray
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.processor_throughput import bench_topic, config

if TYPE_CHECKING:
    from cloud.processor.config import ProcessorConfig

CTX = mp.get_context("spawn")
TICK_S = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds of ``pid`` and of the children it has reaped (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK_S


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, the children it reaped and its live children (PostgreSQL's backends and workers)."""
    total = cpu_of(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            total += sum(int(f) for f in fields[11:15]) / TICK_S
    return total


def rusage_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class Gate:
    """What the bench and its member processes share: all imported (``ready``), start (``go``), stop (``stop``)."""

    ready: Any  # multiprocessing Semaphore: one release per member
    go: MpEvent
    stop: MpEvent


def bare_member(bootstrap: str, topic: str, group: str, max_records: int, ends: SynchronizedArray[int],
                held: Synchronized[int], gate: Gate, out: Any) -> None:
    """A bare group member: ``json.loads`` each value, note how far each partition has been read."""
    from kafka import KafkaConsumer

    from cloud.kafka_groups import subscribe

    gate.ready.release()
    gate.go.wait()
    cpu0 = rusage_s(resource.RUSAGE_SELF)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=True, max_poll_records=max_records)
    subscribe(consumer, [topic])  # as the processor joins
    while not gate.stop.is_set():
        for tp, records in consumer.poll(timeout_ms=100).items():
            for r in records:
                json.loads(r.value)
            with ends.get_lock():
                ends[tp.partition] = max(ends[tp.partition], records[-1].offset + 1)
        held.value = len(consumer.assignment())
    consumer.close(autocommit=False)
    out.put({"member": rusage_s(resource.RUSAGE_SELF) - cpu0})


class Holding(logging.Handler):
    """Follows the processor's ``partitions_assigned`` and ``partitions_revoked`` log lines into ``held``."""

    def __init__(self, held: Synchronized[int]) -> None:
        super().__init__(logging.INFO)
        self.held = held

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("partitions_assigned"):
            assigned = record.args[0] if isinstance(record.args, tuple) else []
            self.held.value = len(assigned) if isinstance(assigned, list) else 0
        elif isinstance(record.msg, str) and record.msg.startswith("partitions_revoked"):
            self.held.value = 0


def processor_member(cfg: ProcessorConfig, processed: Synchronized[int], held: Synchronized[int], gate: Gate,
                     out: Any) -> None:
    """A processor member (consumer side here, its store process spawned by it); ``processed`` follows its
    ``events_processed_total``, ``held`` the number of partitions it was last assigned."""
    from prometheus_client import CollectorRegistry

    from cloud.processor.backends import open_store
    from cloud.processor.consumer import Processor

    registry = CollectorRegistry()
    stop = threading.Event()
    consumer_log = logging.getLogger("cloud.processor.consumer")
    consumer_log.setLevel(logging.INFO)
    consumer_log.addHandler(Holding(held))
    gate.ready.release()
    gate.go.wait()
    self0, children0 = rusage_s(resource.RUSAGE_SELF), rusage_s(resource.RUSAGE_CHILDREN)
    store = open_store(cfg.store)
    thread = threading.Thread(target=Processor(cfg, store, registry=registry, stop=stop).run, daemon=True)
    thread.start()
    while not gate.stop.wait(0.005) and thread.is_alive():
        processed.value = int(registry.get_sample_value("edgewatch_processor_events_processed_total") or 0)
    stop.set()
    thread.join(60)
    store.close()
    out.put({"consumer side": rusage_s(resource.RUSAGE_SELF) - self0,  # the store process is reaped by now
             "store side": rusage_s(resource.RUSAGE_CHILDREN) - children0, "alive": int(thread.is_alive())})


@dataclass
class Result:
    rate: float  # events/s, start to the last event
    settled_s: float  # from the start until every member holds partitions, all of them once (the joins)
    steady: float  # events/s from then to 90 % of the events (the whole run's rate if it settled later)
    cpu: dict[str, float]  # CPU seconds by process kind
    store_bytes: tuple[int, int] = (0, 0)  # processor: the events table (indexes included) and the whole database


def run_members(targets: list[Callable[..., None]], args: list[tuple[Any, ...]], done: Callable[[], int],
                held: list[Synchronized[int]], n: int, partitions: int, services: dict[str, int]) -> Result:
    """Spawn the members, wait until all imported, start them together and time them until ``done()`` reaches ``n``."""
    gate = Gate(CTX.Semaphore(0), CTX.Event(), CTX.Event())
    out = CTX.Queue()
    procs = [CTX.Process(target=t, args=(*a, gate, out)) for t, a in zip(targets, args, strict=True)]
    for p in procs:
        p.start()
    for _ in procs:
        if not gate.ready.acquire(timeout=120):
            raise RuntimeError("a member did not start within 120 s")
    cpu0 = {name: tree_cpu(pid) for name, pid in services.items()}
    settled: tuple[float, int] | None = None
    ninety: tuple[float, int] | None = None
    started = time.perf_counter()
    gate.go.set()
    while (seen := done()) < n:
        counts = [h.value for h in held]
        if settled is None and min(counts) > 0 and sum(counts) == partitions:
            settled = (time.perf_counter(), seen)
        if ninety is None and seen >= 0.9 * n:
            ninety = (time.perf_counter(), seen)
        if not all(p.is_alive() for p in procs):
            raise RuntimeError("a member died")
        time.sleep(0.002)
    end = time.perf_counter()
    gate.stop.set()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    if any(r.get("alive") for r in reports):
        raise RuntimeError("a processor did not stop within 60 s")
    cpu: dict[str, float] = {}
    for r in reports:
        for k, v in r.items():
            if k != "alive":
                cpu[k] = cpu.get(k, 0.0) + v
    time.sleep(0.2)  # PostgreSQL reaps the backends of the members' connections
    cpu.update({name: tree_cpu(pid) - cpu0[name] for name, pid in services.items()})
    rate = n / (end - started)
    if settled is None or ninety is None or settled[0] >= ninety[0]:
        return Result(rate, (settled or (end, 0))[0] - started, rate, cpu)
    return Result(rate, settled[0] - started, (ninety[1] - settled[1]) / (ninety[0] - settled[0]), cpu)


def bare_run(bootstrap: str, topic: str, group: str, members: int, partitions: int, n: int, max_records: int,
             services: dict[str, int]) -> Result:
    ends = CTX.Array("q", partitions)
    held = [CTX.Value("q", 0) for _ in range(members)]
    return run_members([bare_member] * members, [(bootstrap, topic, group, max_records, ends, h) for h in held],
                       lambda: sum(ends[:]), held, n, partitions, services)


def processor_run(cfg: ProcessorConfig, members: int, partitions: int, n: int, services: dict[str, int]) -> Result:
    from cloud.processor.backends import open_postgres

    counters = [CTX.Value("q", 0) for _ in range(members)]
    held = [CTX.Value("q", 0) for _ in range(members)]
    result = run_members([processor_member] * members, [(cfg, c, h) for c, h in zip(counters, held, strict=True)],
                         lambda: sum(c.value for c in counters), held, n, partitions, services)
    store = open_postgres(cfg.store.postgres_dsn)
    try:  # the events table with its indexes and TOAST, and every other table of the store
        (row,) = store.execute("SELECT pg_total_relation_size('events'), pg_database_size(current_database())")
    finally:
        store.close()
    result.store_bytes = (int(row[0]), int(row[1]))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--members", default="1,2,3", help="comma-separated member counts")
    ap.add_argument("--max-poll-records", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5, help="rounds; every other round runs in reverse order")
    ap.add_argument("--warmup", type=int, default=2, help="bare reads of the whole topic before the rounds")
    args = ap.parse_args()
    counts = [int(c) for c in args.members.split(",")]
    logging.basicConfig(level=logging.ERROR)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} (1 min)")
    topic, mpr = "bench.anomalies", args.max_poll_records
    with bench_topic("edgewatch-scaleout-", topic, args.partitions, args.events, args.devices, args.warmup,
                     mpr) as (tmp, stack, pg, n):
        b = stack.kafka_bootstrap
        assert stack.kafka.pid is not None and pg.proc is not None
        broker = {"broker": stack.kafka.pid}
        both = {**broker, "postgres": pg.proc.pid}
        results: dict[tuple[str, int], list[Result]] = {}
        for r in range(args.repeat):
            runs: list[tuple[str, int, Callable[[], Result]]] = []
            for m in counts:
                runs.append(("bare", m, partial(bare_run, b, topic, f"bare-{r}-{m}", m, args.partitions, n, mpr, broker)))
                cfg = config(tmp, f"p-{r}-{m}", b, topic,
                             f'backend = "postgres"\npostgres_dsn = "{pg.create_database(f"scale{r}m{m}")}"', mpr)
                runs.append(("processor", m, partial(processor_run, cfg, m, args.partitions, n, both)))
            for kind, m, run in runs if r % 2 == 0 else list(reversed(runs)):
                res = run()
                results.setdefault((kind, m), []).append(res)
                cpu = ", ".join(f"{k} {1e6 * v / n:.1f}" for k, v in res.cpu.items())
                print(f"  run {r + 1}: {kind:<9} x{m}  {res.rate:8.0f} events/s, settled after {res.settled_s:4.1f} s, "
                      f"then {res.steady:8.0f} events/s   "
                      f"CPU µs/event: {cpu}   load {os.getloadavg()[0]:.2f}", flush=True)
        report(results, counts, n, args)


def report(results: dict[tuple[str, int], list[Result]], counts: list[int], n: int, args: argparse.Namespace) -> None:
    """Medians over the rounds of the rates, of the within-round ratios, and of CPU per event."""
    print(f"\nmedians of {args.repeat} rounds, {n} events, {args.partitions} partitions, {args.devices} devices:")
    print("members | bare events/s | processor events/s | processor / bare | per-member ratio bare, processor "
          "| CPU µs/event: processor (consumer + store side), broker, PostgreSQL; bare, broker")
    for m in counts:
        bare_r, proc_r = results[("bare", m)], results[("processor", m)]
        ratio = statistics.median(p.rate / q.rate for p, q in zip(proc_r, bare_r, strict=True))
        per = [statistics.median(x.rate / (m * one.rate) for x, one in zip(results[(kind, m)], results[(kind, 1)], strict=True))
               for kind in ("bare", "processor")] if 1 in counts else [float("nan")] * 2

        def med(rs: list[Result], key: str) -> float:
            return statistics.median(1e6 * x.cpu.get(key, 0.0) / n for x in rs)

        print(f"{m:7d} | {statistics.median(x.rate for x in bare_r):13.0f} | {statistics.median(x.rate for x in proc_r):18.0f} "
              f"| {ratio:16.2f} | {per[0]:.2f}, {per[1]:.2f} "
              f"| {med(proc_r, 'consumer side'):.1f} + {med(proc_r, 'store side'):.1f}, {med(proc_r, 'broker'):.1f}, "
              f"{med(proc_r, 'postgres'):.1f}; {med(bare_r, 'member'):.1f}, {med(bare_r, 'broker'):.1f}")
        steady = statistics.median(p.steady / q.steady for p, q in zip(proc_r, bare_r, strict=True))
        events_b, db_b = (statistics.median(x.store_bytes[i] / n for x in proc_r) for i in (0, 1))
        print(f"        | PostgreSQL: events table {events_b:.0f} B/event, database {db_b:.0f} B/event")
        print(f"        | settled: {statistics.median(x.steady for x in bare_r):7.0f} | "
              f"{statistics.median(x.steady for x in proc_r):18.0f} "
              f"| {steady:16.2f} | (joins: bare {statistics.median(x.settled_s for x in bare_r):.1f} s, "
              f"processor {statistics.median(x.settled_s for x in proc_r):.1f} s)")
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()

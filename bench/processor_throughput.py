"""Processor throughput against a bare kafka-python consumer, on the same topic in the same run.

Starts its own local stack (Mosquitto + Kafka, :class:`localdev.stack.LocalStack`) and a throwaway
PostgreSQL, produces ``--events`` anomaly events (``--devices`` devices, keyed by device id)
to a ``--partitions``-partition topic, reads it ``--warmup`` times with the bare consumer (not
measured), then consumes the whole topic in ``--repeat`` rounds of these (in reverse order every other round),
each in a fresh consumer group from offset 0:

1. bare: a ``KafkaConsumer`` that only ``json.loads`` each value (the baseline);
2. the same bare consumer with ``orjson.loads`` instead (shown for transparency, not the baseline);
3. the processor with the SQLite store;
4. the processor with the PostgreSQL store (``fsync=off``, as :mod:`localdev.pgserver` runs it);
5. with ``--one-process``: the processor with the SQLite store in the consumer's process (``store.own_process =
   false``), to show what the store process buys;
6. with ``--peers N``: the processor (SQLite) with peer scoring on (``[peers] enabled``, the fleet watch thread of
   :mod:`cloud.fleetwatch`, groups by site), reading N telemetry windows from the telemetry topic beside the events;
   its time ends when both are consumed.

Each time is from creating the consumer to the last event consumed (for the processor: stored,
incidents and alerts applied, offsets committed). Prints events/s and the ratio to the round's
baseline, then best over best and the median of the rounds' ratios; the target is at least 0.7.

    .venv/bin/python -m bench.processor_throughput [--events 100000] [--repeat 7] [--stores sqlite] [--one-process]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.contract import AnomalyEvent, encode_event

if TYPE_CHECKING:
    from cloud.processor.config import ProcessorConfig
    from localdev.pgserver import LocalPostgres
    from localdev.stack import LocalStack

SHA = "cd" * 32
BASELINE = "bare kafka-python + json.loads"
T0 = 1_764_230_400.0


def make_events(n: int, devices: int, seed: int = 1) -> list[AnomalyEvent]:
    """Event-time ordered anomalies: mostly isolated, with bursts that open incidents."""
    rng = random.Random(seed)
    names = [f"site{d % 10}-pump-{d:04d}" for d in range(devices)]
    out: list[AnomalyEvent] = []
    t = T0
    while len(out) < n:
        t += rng.expovariate(50.0)
        device = rng.choice(names)
        for k in range(rng.choice((1, 1, 1, 4))):
            s = 1.0 + rng.random() * 3
            out.append(AnomalyEvent(
                device_id=device, agent_id=f"agent-{device}", window_start=t + k - 10, window_end=t + k, score=s, threshold=1.0,
                channel_scores={"vibration": s * 0.5, "pressure": s * 0.3, "flow": s * 0.2}, model_name="pump",
                model_version="1.0", model_sha256=SHA, detected_at=t + k + 0.3))
    return out[:n]


def produce(bootstrap: str, topic: str, events: list[AnomalyEvent]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024)
    for e in events:
        producer.send(topic, key=e.device_id.encode(), value=encode_event(e))
    producer.flush(120)
    producer.close()


def bare(bootstrap: str, topic: str, group: str, n: int, max_records: int, decode: Callable[[bytes], Any] = json.loads) -> float:
    from kafka import KafkaConsumer

    from cloud.kafka_groups import subscribe

    started = time.perf_counter()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=max_records)
    subscribe(consumer, [topic])  # as the processor joins
    seen = 0
    while seen < n:
        for records in consumer.poll(timeout_ms=500).values():
            for r in records:
                decode(r.value)
            seen += len(records)
    consumer.commit()
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def make_telemetry(n: int, devices: int, seed: int = 2) -> list[tuple[str, bytes]]:
    """``n`` telemetry windows (10 readings of 4 channels) over the devices of :func:`make_events`, in time order."""
    from edge.contract.samples import encode_telemetry, telemetry_from_window

    rng = random.Random(seed)
    names = [f"site{d % 10}-pump-{d:04d}" for d in range(devices)]
    out = []
    for i in range(n):
        device, t = names[i % devices], T0 + 60.0 * (i // devices + 1)
        values = [[rng.gauss(20, 1), rng.gauss(1, 0.1), rng.gauss(5, 0.5), rng.gauss(50, 2)] for _ in range(10)]
        out.append((device, encode_telemetry(telemetry_from_window(
            device_id=device, agent_id="bench-agent", reason="sampled", channels=("temp", "vibration", "pressure", "flow"),
            ts=[t - 9 + k for k in range(10)], values=values, score=0.5, threshold=1.0, anomalous=False, model_sha256=SHA))))
    return out


def processor(cfg: ProcessorConfig, n: int, telemetry: int = 0) -> float:
    from prometheus_client import CollectorRegistry

    from cloud.processor.backends import open_store
    from cloud.processor.consumer import Processor

    registry = CollectorRegistry()
    stop = threading.Event()
    started = time.perf_counter()
    box: list[BaseException] = []
    peers = None
    if cfg.peers.enabled:  # as edgewatch process starts it: the store created (migrated) first, then the threads
        from cloud.fleetwatch.watch import run_fleetwatch

        open_store(cfg.store).close()

        peers = threading.Thread(target=run_fleetwatch, args=(cfg, stop, registry), daemon=True)
        peers.start()

    def target() -> None:
        try:
            store = open_store(cfg.store)
            try:
                Processor(cfg, store, registry=registry, stop=stop).run()
            finally:
                store.close()
        except BaseException as exc:  # reported below
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while (registry.get_sample_value("edgewatch_processor_events_consumed_total") or 0) < n:
        if not thread.is_alive():
            raise RuntimeError(f"processor died: {box!r}")
        time.sleep(0.01)
    while (registry.get_sample_value("edgewatch_processor_fleetwatch_records_total", {"kind": "telemetry"}) or 0) < telemetry:
        if peers is None or not peers.is_alive():
            raise RuntimeError("the fleet watch died")
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    if peers is not None:
        peers.join(60)
    return elapsed


def config(tmp: Path, name: str, bootstrap: str, topic: str, store: str, max_records: int, own_process: bool = True,
           extra: str = "") -> ProcessorConfig:
    from cloud.processor.config import load_config

    path = tmp / f"{name}.toml"
    path.write_text(f"""
[kafka]
bootstrap = "{bootstrap}"
group_id = "bench-{name}"
anomalies_topic = "{topic}"
alerts_topic = "{topic}.alerts"
deadletter_topic = "{topic}.deadletter"
telemetry_topic = "{topic}.telemetry"
max_poll_records = {max_records}
[store]
{store}
own_process = {str(own_process).lower()}
[fleet]
prefix_parts = 1
{extra}
""")
    return load_config(path, env={})


@contextmanager
def bench_topic(prefix: str, topic: str, partitions: int, events: int, devices: int, warmup: int,
                max_records: int, telemetry: int = 0) -> Iterator[tuple[Path, LocalStack, LocalPostgres, int]]:
    """A temporary folder, a local stack and PostgreSQL, and ``topic`` holding :func:`make_events`'s events,
    read ``warmup`` times by :func:`bare`; yields the folder, the stack, PostgreSQL and the number of events.
    Stops both services on exit."""
    from localdev.kafka_admin import create_topics
    from localdev.pgserver import LocalPostgres
    from localdev.stack import LocalStack

    with tempfile.TemporaryDirectory(prefix=prefix) as tmpdir:
        tmp = Path(tmpdir)
        stack = LocalStack(tmp / "stack")
        stack.start()
        pg = LocalPostgres().start()
        try:
            create_topics(stack.kafka_bootstrap, [topic, f"{topic}.telemetry"], partitions)
            if telemetry:
                from kafka import KafkaProducer

                producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", linger_ms=20)
                for key, value in make_telemetry(telemetry, devices):
                    producer.send(f"{topic}.telemetry", key=key.encode(), value=value)
                producer.flush(120)
                producer.close()
                print(f"produced {telemetry} telemetry windows")
            made = make_events(events, devices)
            t = time.perf_counter()
            produce(stack.kafka_bootstrap, topic, made)
            n = len(made)
            print(f"produced {n} events to {partitions} partitions in {time.perf_counter() - t:.1f} s")
            del made  # 50k+ objects every full collection of the consumers below would walk: not theirs to carry
            gc.collect()
            for w in range(warmup):
                t = time.perf_counter()
                bare(stack.kafka_bootstrap, topic, f"bench-warmup-{w}", n, max_records)
                print(f"  warm-up read {w + 1}: {n / (time.perf_counter() - t):10.0f} events/s", flush=True)
            yield tmp, stack, pg, n
        finally:
            pg.stop()
            stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--max-poll-records", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7,
                    help="rounds of every consumer, in the listed order and reversed in every other round (best and median reported)")
    ap.add_argument("--stores", default="sqlite,postgres", help="comma-separated processor stores to run (sqlite, postgres)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="bare reads of the whole topic before the rounds, so that none of them pays for a cold "
                         "broker (its JIT, caches), which slows the faster bare consumer most and flatters the ratio")
    ap.add_argument("--one-process", action="store_true",
                    help="also run the processor (SQLite) with its store side in the consumer's process")
    ap.add_argument("--peers", type=int, default=0, metavar="N",
                    help="also run the processor (SQLite) with peer scoring on, reading N telemetry windows beside the events")
    ap.add_argument("--pure-python-crc", action="store_true",
                    help="hide the crc32c package so kafka-python checks record CRCs in pure Python (as without the cloud extra)")
    args = ap.parse_args()
    stores = set(args.stores.split(","))
    if not stores <= {"sqlite", "postgres"}:
        ap.error(f"--stores: expected sqlite and/or postgres, got {args.stores!r}")
    logging.basicConfig(level=logging.ERROR)
    if args.pure_python_crc:
        sys.modules["crc32c"] = None  # type: ignore[assignment]  # makes `import crc32c` fail inside kafka-python
    import kafka.record.util
    import orjson

    crc = "pure Python" if kafka.record.util.crc32c_c is None else "crc32c (C)"
    print(f"kafka-python record CRC32C: {crc}; load average {os.getloadavg()[0]:.2f} (1 min)")
    with bench_topic("edgewatch-bench-", "bench.anomalies", args.partitions, args.events, args.devices, args.warmup,
                     args.max_poll_records, args.peers) as (tmp, stack, pg, n):
        topic = "bench.anomalies"
        results: dict[str, float] = {}
        round_ratios: dict[str, list[float]] = {}
        b, mpr = stack.kafka_bootstrap, args.max_poll_records
        for r in range(args.repeat):
            sqlite_store = f'sqlite_path = "{tmp}/store-{r}.db"'
            pg_store = f'backend = "postgres"\npostgres_dsn = "{pg.create_database(f"bench{r}")}"'
            runs = {
                "bare kafka-python + json.loads": partial(bare, b, topic, f"bench-bare-{r}", n, mpr),
                "bare kafka-python + orjson.loads": partial(bare, b, topic, f"bench-bare-orjson-{r}", n, mpr, orjson.loads),
            }
            if "sqlite" in stores:
                runs["processor, SQLite"] = partial(processor, config(tmp, f"sqlite-{r}", b, topic, sqlite_store, mpr), n)
            if "postgres" in stores:
                runs["processor, PostgreSQL"] = partial(processor, config(tmp, f"pg-{r}", b, topic, pg_store, mpr), n)
            if args.one_process:
                runs["processor, SQLite, one process"] = partial(processor, config(
                    tmp, f"sqlite1-{r}", b, topic, f'sqlite_path = "{tmp}/store1-{r}.db"', mpr, own_process=False), n)
            if args.peers:
                peers = '[peers]\nenabled = true\nmin_group_size = 5\ntick_s = 60.0\nspan_s = 600.0'
                runs["processor, SQLite, peers"] = partial(processor, config(
                    tmp, f"peers-{r}", b, topic, f'sqlite_path = "{tmp}/storep-{r}.db"', mpr, extra=peers), n, args.peers)
            round_rates: dict[str, float] = {}
            order = list(runs) if r % 2 == 0 else list(reversed(runs))  # so that no consumer always runs first
            for name in order:
                rate = round_rates[name] = n / runs[name]()
                results[name] = max(results.get(name, 0.0), rate)
                print(f"  run {r + 1}: {name:<34} {rate:10.0f} events/s   load {os.getloadavg()[0]:.2f}", flush=True)
            print(f"  run {r + 1} ratios: " + ", ".join(f"{name.removeprefix('processor, ')} {rate / round_rates[BASELINE]:.2f}"
                                                     for name, rate in round_rates.items() if name != BASELINE), flush=True)
            for name, rate in round_rates.items():
                round_ratios.setdefault(name, []).append(rate / round_rates[BASELINE])
        base = results[BASELINE]
        print(f"\nbest of {args.repeat}, {n} events, {args.partitions} partitions, {args.devices} devices "
              "(ratio: best over best; median: of the ratios within each round):")
        for name, rate in results.items():
            print(f"{name:<34} {rate:10.0f} events/s   ratio {rate / base:5.2f}   median {statistics.median(round_ratios[name]):5.2f}")
        print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()

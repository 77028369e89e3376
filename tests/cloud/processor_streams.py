"""Deterministic anomaly-event streams and processor configs for the processor tests."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

from cloud.processor.config import ProcessorConfig, load_config
from edge.contract import AnomalyEvent

SHA = "ab" * 32
T0 = 1_764_230_400.0


def event(device: str, t: float, score: float = 2.0, threshold: float = 1.0, version: str = "1.0") -> AnomalyEvent:
    return AnomalyEvent(device_id=device, agent_id=f"agent-{device}", window_start=t - 10.0, window_end=t, score=score,
                        threshold=threshold, channel_scores={"vibration": score * 0.6, "pressure": score * 0.4},
                        model_name="pump", model_version=version, model_sha256=SHA, detected_at=t + 0.5)


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), as kafka-python's producer applies it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def background_devices(partitions: int, per_partition: int = 2) -> list[str]:
    """Devices outside any site, enough to cover every partition ``per_partition`` times."""
    out: list[str] = []
    counts = [0] * partitions
    i = 0
    while min(counts) < per_partition:
        name = f"bg-{i:03d}"
        p = partition_of(name, partitions)
        if counts[p] < per_partition:
            out.append(name)
            counts[p] += 1
        i += 1
    return out


def burst(device: str, start: float, count: int = 4, gap_s: float = 10.0, score: float = 3.0) -> list[AnomalyEvent]:
    return [event(device, start + i * gap_s, score + i * 0.1) for i in range(count)]


def fleet_stream(seed: int, *, partitions: int = 4, sites: tuple[str, ...] = ("plant-a", "plant-b", "plant-c"),
                 devices_per_site: int = 5, duration_s: float = 2400.0, tick_s: float = 5.0) -> list[AnomalyEvent]:
    """Background anomalies on every partition, random device bursts, and site-wide bursts; event-time order."""
    rng = random.Random(seed)
    bg = background_devices(partitions)
    events: list[AnomalyEvent] = []
    t = 0.0
    while t <= duration_s:
        events.append(event(bg[int(t / tick_s) % len(bg)], T0 + t, score=1.2 + rng.random()))
        t += tick_s
    devices = [f"{s}-pump-{i:02d}" for s in sites for i in range(devices_per_site)]
    for d in devices:
        for _ in range(rng.randint(0, 3)):
            events.extend(burst(d, T0 + rng.uniform(0, duration_s - 200), count=rng.randint(2, 5), gap_s=rng.uniform(5, 25)))
    for k, s in enumerate(sites):
        start = T0 + 300 + k * 700 + rng.uniform(0, 50)
        for d in rng.sample([x for x in devices if x.startswith(s + "-")], 3 + k % 2):
            events.extend(burst(d, start + rng.uniform(0, 30), count=4))
    unique = {e.event_id: e for e in events}
    return sorted(unique.values(), key=lambda e: (e.window_end, e.device_id))


def write_config(path: Path, *, bootstrap: str, topic: str, group: str, backend: str = "sqlite", dsn: str = "",
                 sqlite_path: Path | None = None, extra: str = "", own_process: bool = True) -> Path:
    """A processor config for tests: small windows, sites by prefix (``plant-a-pump-01`` is in ``plant-a``)."""
    store = f'sqlite_path = "{sqlite_path}"' if backend == "sqlite" else f'postgres_dsn = "{dsn}"'
    path.write_text(f"""
[kafka]
bootstrap = "{bootstrap}"
group_id = "{group}"
anomalies_topic = "{topic}"
alerts_topic = "{topic}.alerts"
deadletter_topic = "{topic}.deadletter"
telemetry_topic = "{topic}.telemetry"
max_poll_records = 200
poll_timeout_s = 0.2
session_timeout_s = 15.0  # generous: a loaded 2-core runner starves heartbeats
outbox_orphan_s = 3.0

[store]
backend = "{backend}"
{store}
own_process = {str(own_process).lower()}

[incidents]
min_events = 3
window_s = 60.0
quiet_s = 120.0
allowed_lateness_s = 20.0

[fleet]
min_devices = 3
window_s = 120.0
quiet_s = 120.0
prefix_separator = "-"
prefix_parts = 2

[drift]
window_s = 600.0
sustain_windows = 2
{extra}
""")
    return path


def config(path: Path, **kw: object) -> ProcessorConfig:
    return load_config(write_config(path, **kw), env={})  # type: ignore[arg-type]


def in_thread(cfg: ProcessorConfig,
              registry: CollectorRegistry | None = None) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """Run a processor (store opened inside its thread) until the returned event is set."""
    from cloud.processor.backends import open_store
    from cloud.processor.consumer import Processor

    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            store = open_store(cfg.store)
            try:
                Processor(cfg, store, stop=stop, registry=registry).run()
            finally:
                store.close()
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=target, name="processor", daemon=True)
    thread.start()
    return thread, stop, errors



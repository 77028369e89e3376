"""Per-unit figures for docs/scale.md that no other bench measures: archive bytes per device-day,
Kafka bytes per device-day, and the seconds one retraining takes.

1. A simulated device-day (``edge.synth.simulate``, six channels at 1 s) cut into the agent's windows
   (32 samples, stride 8: 10,800 a day), of which the agent sends every ``--every-n``-th (100) and
   ``--context`` (2) windows either side of each of ``--anomalies`` (25) anomaly windows, as
   ``edge.telemetry`` does by default. The windows go through the archive's own writer
   (``cloud.processor.archive.write_flush``) flushed as the archive flushes them: every
   ``flush_interval_s`` (the default 60 s, then 3600 s; a flush writes one file per device it
   holds, so a device that sends a window every few minutes gets a file per window, and an
   anomaly's context windows share one), and one file per device-day (a compaction). Bytes are
   file sizes and allocated blocks (``du``); the write rate is the writer's alone (no Kafka).
2. ``edgewatch retrain`` (in process, fine-tuning a dense_ae with the default ``TrainConfig``
   for ``--epochs`` 5) on ``--retrain-devices`` devices x ``--retrain-days`` days of that archive.

    .venv/bin/python -m bench.sizing [--devices 3] [--retrain-devices 10] [--retrain-days 7] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from cloud.processor.archive import window_row, write_flush
from edge.contract import encode_telemetry, telemetry_from_window
from edge.contract.samples import TelemetryWindow
from edge.synth import CHANNEL_NAMES, simulate

DAY_S = 86_400
T0 = 1_764_201_600.0  # midnight UTC
SHA = "ab" * 32
TOPIC = "edgewatch.telemetry"


def device_day(device: str, day: int, *, seed: int, every_n: int, context: int, anomalies: int, length: int = 32,
               stride: int = 8) -> list[TelemetryWindow]:
    """The windows one device sends in one day with the agent's telemetry defaults (scores made up)."""
    values = simulate(DAY_S, seed=seed)[0]
    count = (DAY_S - length) // stride + 1
    rng = random.Random(seed)
    sampled = {i for i in range(count) if i % every_n == 0}
    for a in rng.sample(range(count), anomalies):
        sampled.update(range(max(0, a - context), min(count, a + context + 1)))
    start = T0 + day * DAY_S
    ts = start + np.arange(DAY_S, dtype=np.float64)
    return [telemetry_from_window(device_id=device, agent_id=f"agent-{device}", reason="sampled", channels=CHANNEL_NAMES,
                                  ts=ts[i * stride: i * stride + length].tolist(), values=values[i * stride: i * stride + length].tolist(),
                                  score=rng.random(), threshold=1.0, anomalous=False, model_sha256=SHA)
            for i in sorted(sampled)]


def folder_bytes(root: Path) -> tuple[int, int, int]:
    """Files, bytes in them, and bytes allocated on disk under ``root``."""
    files = [p for p in root.rglob("*.parquet")]
    return len(files), sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def measure_archive(tmp: Path, devices: int, args: argparse.Namespace) -> None:
    layouts = {"60 s flushes (default)": 60.0, "3600 s flushes": 3600.0, "one file per device-day": float(DAY_S)}
    kafka_bytes, windows, offset = 0, 0, 0
    write_s = dict.fromkeys(layouts, 0.0)
    for d in range(devices):
        day = device_day(f"pump-{d:03d}", 0, seed=100 + d, every_n=args.every_n, context=args.context, anomalies=args.anomalies)
        kafka_bytes += sum(len(encode_telemetry(w)) for w in day)
        windows += len(day)
        rows = [window_row(w, 0, offset + i) for i, w in enumerate(day)]
        offset += len(rows)
        for name, span in layouts.items():  # a flush holds what one device sends in `span` seconds
            flushes: dict[float, list[dict[str, object]]] = {}
            for row in rows:
                key = (row["window_start"] - T0) // span
                flushes.setdefault(key, []).append(row)
            t = time.perf_counter()
            for flush in flushes.values():
                write_flush(tmp / name, TOPIC, 0, flush)
            write_s[name] += time.perf_counter() - t
    print(f"{devices} device-days, {windows / devices:.0f} windows per device-day (every {args.every_n}th of 10,800, "
          f"{args.anomalies} anomalies with {args.context} context windows either side); "
          f"Kafka values {kafka_bytes / devices / 1024:.0f} KiB per device-day")
    tracemalloc.start()
    held = [window_row(w, 0, i) for i, w in enumerate(day)]  # what the archive buffers until a flush
    buffered = tracemalloc.get_traced_memory()[0] / len(held)
    tracemalloc.stop()
    print(f"  a buffered window holds {buffered / 1024:.1f} KiB of Python memory until its flush")
    for name in layouts:
        files, size, allocated = folder_bytes(tmp / name)
        print(f"  archive, {name:<25} {files / devices:6.0f} files, {size / devices / 1024:7.1f} KiB "
              f"({allocated / devices / 1024:7.1f} KiB allocated) per device-day; written at {windows / write_s[name]:6.0f} windows/s")


def measure_retrain(tmp: Path, devices: int, days: int, args: argparse.Namespace) -> None:
    import torch

    from cloud.cli import main as cli
    from cloud.registry import Registry
    from edge.contract import Channel
    from edge.synth import CHANNELS
    from models.config import TrainConfig
    from models.export import write_artifact
    from models.fit import fit, save_checkpoint

    torch.set_num_threads(1)
    source = tmp / "pump-1.0.0"
    fitted = fit([simulate(4000, seed=s)[0] for s in range(1, 4)], TrainConfig(epochs=2, seed=1),
                 channels=[Channel(n, u) for n, u in CHANNELS])
    write_artifact(fitted, source, name="pump", version="1.0.0")
    save_checkpoint(fitted, source / "weights.pt")
    registry = Registry(tmp / "registry")
    registry.register(source)
    registry.promote("pump", "1.0.0")
    archive = tmp / "retrain-archive"
    windows = 0
    for d in range(devices):
        for day in range(days):
            rows = device_day(f"pump-{d:03d}", day, seed=1000 + 37 * d + day, every_n=args.every_n, context=args.context,
                              anomalies=args.anomalies)
            write_flush(archive, TOPIC, 0, [window_row(w, 0, windows + i) for i, w in enumerate(rows)])
            windows += len(rows)
    (tmp / "retrain.toml").write_text("[retrain]\nmax_far_increase = 1.0\nmax_fp_increase = 1.0\nmax_recall_drop = 1.0\n")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + days * DAY_S))
    cpu0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    code = cli(["retrain", "--model", "pump", "--since", since, "--until", until, "--archive", str(archive),
                "--registry", str(registry.root), "--config", str(tmp / "retrain.toml"), "--epochs", str(args.epochs),
                "--progress", "false"])
    elapsed, cpu1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(f"retrain (exit {code}): {windows} windows ({devices} devices x {days} days), {args.epochs} epochs, "
          f"{elapsed:.1f} s wall, {cpu:.1f} s CPU "
          f"(one torch thread), load {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=3, help="device-days to write for the archive figures")
    ap.add_argument("--every-n", type=int, default=100, help="[telemetry] every_n_windows")
    ap.add_argument("--context", type=int, default=2, help="[telemetry] anomaly_context_windows")
    ap.add_argument("--anomalies", type=int, default=25, help="anomaly windows per device-day")
    ap.add_argument("--retrain-devices", type=int, default=10)
    ap.add_argument("--retrain-days", type=int, default=7, help="0: no retraining")
    ap.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (retrain's --epochs)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")
    tmp = Path(tempfile.mkdtemp(prefix="edgewatch-sizing-"))
    try:
        measure_archive(tmp, args.devices, args)
        if args.retrain_days:
            measure_retrain(tmp, args.retrain_devices, args.retrain_days, args)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

"""A synthetic telemetry archive for the backtest's tests and bench: ``edge.synth`` pump readings cut
into windows of the tiny test model's shape, sampled ``per_day`` times a day per device, written
with the archive's own :func:`cloud.processor.archive.write_flush` (one flush per device-day)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud.processor.archive import write_flush
from edge.contract import encode_manifest
from edge.detector import load_manifest
from edge.synth import CHANNEL_NAMES, SAMPLE_PERIOD_S, simulate

TINY_MODEL = Path(__file__).resolve().parents[1] / "edge" / "fixtures" / "tiny_model"
WINDOW = 32
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def tiny_model_as(tmp: Path, version: str, threshold: float) -> Path:
    """The tiny model as ``version`` with another threshold (unsigned: the hash covers model.onnx only)."""
    out = tmp / f"model-{version}"
    shutil.copytree(TINY_MODEL, out)
    m = load_manifest(out)
    (out / "manifest.json").write_bytes(encode_manifest(dataclasses.replace(m, version=version, threshold=threshold)))
    return out


def device_windows(seed: int, count: int) -> np.ndarray:
    """``count`` consecutive windows ``(count, WINDOW, 6)`` of one simulated pump."""
    values, _labels = simulate(count * WINDOW, seed=seed)
    return values.reshape(count, WINDOW, len(CHANNEL_NAMES))


def window_rows(device: str, starts: Sequence[float], windows: np.ndarray, *, agent: str = "agent-0",
                channels: Sequence[str] = CHANNEL_NAMES, offset: int = 0) -> list[dict[str, Any]]:
    """Archive rows (:data:`cloud.processor.archive.SCHEMA`) of ``windows`` starting at ``starts``."""
    rows = []
    for i, (t, w) in enumerate(zip(starts, windows, strict=True)):
        ts = [t + k * SAMPLE_PERIOD_S for k in range(len(w))]
        rows.append({"device_id": device, "agent_id": agent, "reason": "every_n", "window_start": ts[0], "window_end": ts[-1],
                     "channels": list(channels), "ts": ts, "values": w.tolist(), "score": 0.0, "threshold": 1.0,
                     "anomalous": False, "model_sha256": "", "kafka_partition": 0, "kafka_offset": offset + i})
    return rows


def write_archive(root: Path, *, devices: int, days: int, per_day: int, seed: int = 0, t0: float = T0,
                  prefix: str = "site") -> dict[str, np.ndarray]:
    """Devices ``<prefix><d // 2>-dev<d>`` (two per site), ``days`` days from ``t0``, ``per_day``
    windows a day evenly spaced. Returns each device's windows in time order."""
    out = {}
    offset = 0
    step = 86400.0 / per_day
    for d in range(devices):
        device = f"{prefix}{d // 2}-dev{d}"
        windows = device_windows(seed * 1000 + d, days * per_day)
        out[device] = windows
        for day in range(days):
            starts = [t0 + day * 86400 + k * step for k in range(per_day)]
            part = windows[day * per_day:(day + 1) * per_day]
            write_flush(root, "edgewatch.telemetry", 0, window_rows(device, starts, part, agent=f"agent-{d // 2}", offset=offset))
            offset += per_day
    return out

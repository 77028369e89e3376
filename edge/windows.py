"""Sliding windows per device, in the manifest's channel order, with stride and gap resets.

Pure logic: no threads, no wall clock; time is the readings' own event time (``ts``). Called
from the agent's worker thread only. A reading is first checked against the manifest's
channels (:func:`channel_problem`), then :meth:`Windows.add` places it; every ``stride``
readings after the first ``window_length`` a window is ready and :meth:`Windows.take_ready`
hands it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from edge.contract import Reading


class Added(Enum):
    """What :meth:`Windows.add` did with a reading."""

    OK = "ok"
    RESET = "reset"          # accepted, after a gap that started a new window
    LATE = "late"            # ts before the device's last reading: dropped
    DUPLICATE = "duplicate"  # ts equal to the device's last reading: dropped


@dataclass(frozen=True)
class Window:
    """One ready window of one device: ``values (window_length, channels)`` as received (float64), and ``ts``."""

    device_id: str
    seq: int  # windows of this device since the agent started, from 0
    ts: np.ndarray
    values: np.ndarray

    @property
    def start(self) -> float:
        return float(self.ts[0])

    @property
    def end(self) -> float:
        return float(self.ts[-1])


@dataclass
class _Device:
    buf: np.ndarray
    ts: np.ndarray
    size: int = 0           # rows in buf
    since_reset: int = 0    # readings accepted since the last reset
    last_ts: float = -1.0
    seq: int = 0
    ready: list[Window] = field(default_factory=list)


def channel_problem(readings: Iterable[Reading], channels: Sequence[str]) -> str | None:
    """``"unknown_channel"``, ``"missing_channel"`` or ``None`` for a payload's readings."""
    expected = set(channels)
    for r in readings:
        keys = r.values.keys()
        if keys != expected:
            return "unknown_channel" if keys - expected else "missing_channel"
    return None


class Windows:
    """Per-device sliding windows over readings whose channels :func:`channel_problem` accepted."""

    def __init__(self, channels: Sequence[str], window_length: int, stride: int, sample_period_s: float,
                 gap_periods: float) -> None:
        if window_length < 1 or not 1 <= stride <= window_length:
            raise ValueError(f"window_length {window_length} and stride {stride} need 1 <= stride <= window_length")
        self.channels = tuple(channels)
        self.window_length = window_length
        self.stride = stride
        self.max_gap_s = gap_periods * sample_period_s
        self._capacity = max(4 * window_length, window_length + stride)
        self._devices: dict[str, _Device] = {}
        self._ready_count = 0

    @property
    def devices(self) -> int:
        return len(self._devices)

    @property
    def ready_count(self) -> int:
        return self._ready_count

    def add(self, reading: Reading) -> Added:
        """Place one reading; never raises for late, duplicate or gapped input."""
        dev = self._devices.get(reading.device_id)
        if dev is None:
            dev = _Device(np.empty((self._capacity, len(self.channels)), dtype=np.float64),
                          np.empty(self._capacity, dtype=np.float64))
            self._devices[reading.device_id] = dev
        ts = reading.ts
        outcome = Added.OK
        if dev.since_reset:
            if ts == dev.last_ts:
                return Added.DUPLICATE
            if ts < dev.last_ts:
                return Added.LATE
            if ts - dev.last_ts > self.max_gap_s:
                dev.size = 0
                dev.since_reset = 0
                outcome = Added.RESET
        if dev.size == self._capacity:
            keep = self.window_length - 1
            dev.buf[:keep] = dev.buf[dev.size - keep: dev.size]
            dev.ts[:keep] = dev.ts[dev.size - keep: dev.size]
            dev.size = keep
        values = reading.values
        dev.buf[dev.size] = [values[c] for c in self.channels]
        dev.ts[dev.size] = ts
        dev.size += 1
        dev.since_reset += 1
        dev.last_ts = ts
        extra = dev.since_reset - self.window_length
        if extra >= 0 and extra % self.stride == 0:
            lo = dev.size - self.window_length
            dev.ready.append(Window(reading.device_id, dev.seq, dev.ts[lo: dev.size].copy(), dev.buf[lo: dev.size].copy()))
            dev.seq += 1
            self._ready_count += 1
        return outcome

    def take_ready(self, limit: int | None = None) -> list[Window]:
        """Remove and return up to ``limit`` ready windows, oldest first within each device."""
        out: list[Window] = []
        for dev in self._devices.values():
            if not dev.ready:
                continue
            room = len(dev.ready) if limit is None else min(len(dev.ready), limit - len(out))
            out.extend(dev.ready[:room])
            del dev.ready[:room]
            if limit is not None and len(out) >= limit:
                break
        self._ready_count -= len(out)
        return out


def stack(windows: Sequence[Window]) -> np.ndarray:
    """The ``(batch, window_length, channels)`` float32 array one inference call takes."""
    if not windows:
        return np.empty((0, 0, 0), dtype=np.float32)
    out = np.empty((len(windows), *windows[0].values.shape), dtype=np.float32)
    for i, w in enumerate(windows):
        out[i] = w.values
    return out

"""Sliding windows per device, in the manifest's channel order, with stride and gap resets.

Pure logic: no threads, no wall clock; time is the readings' own event time (``ts``). Called
from the agent's worker thread only. A reading is first checked against the manifest's
channels (:func:`channel_problem`), then :meth:`Windows.add` (or :meth:`Windows.add_rows` for a
payload's rows) places it; every ``stride`` readings after the first ``window_length`` a window
is ready. :meth:`Windows.take_batch` hands the ready windows out as one :class:`WindowBatch` of
arrays (what the pipeline scores and decides in whole-array passes); :meth:`Windows.take_ready`
as :class:`Window` objects.

Two bounds keep hostile timestamps from blinding a device. ``add_rows`` takes ``latest``, the
newest ``ts`` the caller's clock allows (the agent's clock plus ``windows.max_clock_skew_s``):
a reading after it is dropped as ``FUTURE``, so no reading moves a device's last ``ts`` past
the clock. A reading older than the device's last reading by more than a window's span
(``window_length`` sample periods, or the gap bound if that is longer) is dropped as ``PAST``
(the sensor's clock went back, or a replay); a closer older one is ``LATE`` (reordered on the
way). Neither ever moves the device's last ``ts``.

A device's buffer starts small and doubles up to its full size as readings come, so an id
that sends one reading costs a few hundred bytes; :meth:`Windows.forget` drops a device.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edge.contract import Reading


class Added(Enum):
    """What :meth:`Windows.add` did with a reading."""

    OK = "ok"
    RESET = "reset"          # accepted, after a gap that started a new window
    LATE = "late"            # ts before the device's last reading: dropped
    DUPLICATE = "duplicate"  # ts equal to the device's last reading: dropped
    FUTURE = "future"        # ts after the latest the clock allows: dropped
    PAST = "past"            # ts before the device's last reading by more than a window's span: dropped


@dataclass(frozen=True)
class Window:
    """One ready window of one device: ``values (window_length, channels)`` as received (float64), and ``ts``."""

    device_id: str
    seq: int  # windows of this device since the agent started, from 0
    ts: np.ndarray
    values: np.ndarray
    segment: int = 0  # gap resets of this device before this window

    @property
    def start(self) -> float:
        return float(self.ts[0])

    @property
    def end(self) -> float:
        return float(self.ts[-1])


class _Chunk(NamedTuple):
    """Consecutive ready windows of one device and one segment, copied out of its buffer."""

    seq: int             # seq of the first
    segment: int
    ts: np.ndarray       # (k, window_length)
    values: np.ndarray   # (k, window_length, channels)


@dataclass(frozen=True)
class WindowBatch:
    """Ready windows taken together: device by device, each device's in window order.

    ``runs`` names the device of each slice ``[lo, hi)`` of the arrays; a device has one run.
    """

    runs: tuple[tuple[str, int, int], ...]
    seq: np.ndarray      # (batch,) int64
    segment: np.ndarray  # (batch,) int64
    ts: np.ndarray       # (batch, window_length) float64
    values: np.ndarray   # (batch, window_length, channels) float64, as received

    def __len__(self) -> int:
        return len(self.seq)

    def window(self, i: int, device_id: str) -> Window:
        """Window ``i`` (of ``device_id``, whose run holds ``i``); its arrays are views of the batch's."""
        return Window(device_id, int(self.seq[i]), self.ts[i], self.values[i], int(self.segment[i]))

    def windows(self) -> list[Window]:
        return [self.window(i, device) for device, lo, hi in self.runs for i in range(lo, hi)]


_FIRST_ROWS = 8  # a new device's buffer, in rows; doubled when full, up to Windows._capacity
_NO_VIEW = np.empty((0, 0))  # win and win_ts of a buffer shorter than a window (no window can end in it yet)


@dataclass(slots=True)
class _Device:
    buf: np.ndarray
    ts: np.ndarray
    win: np.ndarray         # read-only views of buf and ts: the window starting at each row, (rows, window_length[, channels])
    win_ts: np.ndarray
    size: int = 0           # rows in buf
    since_reset: int = 0    # readings accepted since the last reset
    last_ts: float = -1.0
    seq: int = 0
    segment: int = 0
    ready: list[_Chunk] = field(default_factory=list)


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
        self.max_late_s = max(window_length * sample_period_s, self.max_gap_s)  # older than this behind the last: PAST
        self._capacity = max(4 * window_length, window_length + stride, 256)  # rows per device; fewer compactions
        self._devices: dict[str, _Device] = {}
        self._ready_count = 0

    @property
    def devices(self) -> int:
        return len(self._devices)

    @property
    def ready_count(self) -> int:
        return self._ready_count

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device(*self._buffers(min(_FIRST_ROWS, self._capacity)))
        return dev

    def _buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(buf, ts, win, win_ts)`` of ``rows`` rows; the window views only once a window fits."""
        buf = np.empty((rows, len(self.channels)), dtype=np.float64)
        ts = np.empty(rows, dtype=np.float64)
        length = self.window_length
        if rows < length:
            return buf, ts, _NO_VIEW, _NO_VIEW
        return buf, ts, sliding_window_view(buf, length, axis=0).transpose(0, 2, 1), sliding_window_view(ts, length)

    def register(self, device_id: str) -> None:
        """Track ``device_id`` from now on (its place among the devices :meth:`take_batch` visits)."""
        self._device(device_id)

    def forget(self, device_id: str) -> bool:
        """Drop everything held for ``device_id``: its partial window and its ready windows not yet
        taken. Returns whether it was tracked. Its next reading starts it afresh (``seq`` from 0)."""
        dev = self._devices.pop(device_id, None)
        if dev is None:
            return False
        self._ready_count -= sum(len(chunk.ts) for chunk in dev.ready)
        return True

    def add(self, reading: Reading, latest: float = math.inf) -> Added:
        """Place one reading; never raises for late, duplicate, gapped or future input. The agent
        places whole batches (:meth:`add_rows`); this one-reading form is the reference the tests
        hold it to."""
        if reading.ts > latest:
            return Added.FUTURE
        values = reading.values
        return self._add_one(reading.device_id, self._device(reading.device_id), reading.ts,
                             [values[c] for c in self.channels])

    def add_rows(self, device_id: str, ts: np.ndarray, rows: np.ndarray, latest: float = math.inf) -> dict[Added, int]:
        """Place ``rows (n, channels)`` in channel order, stamped ``ts (n,)``, for one device.

        The same as :meth:`add` row by row, but a run of in-order rows without gaps is copied in
        bulk. Rows stamped after ``latest`` are dropped as ``FUTURE`` (one array comparison, and
        none on the bulk path, whose last row is its newest). Returns how many rows had each
        outcome (outcomes of no row left out).
        """
        n = len(ts)
        if n == 1:
            t = float(ts[0])
            if t > latest:
                return {Added.FUTURE: 1}
            return {self._add_one(device_id, self._device(device_id), t, rows[0]): 1}  # a dict literal: a Counter costs more than the row
        if n == 0:
            return {}
        if float(ts[-1]) <= latest:  # in order, the last row is the newest: no future row
            dev = self._device(device_id)
            first = float(ts[0])
            fits = not dev.since_reset or (dev.last_ts < first and first - dev.last_ts <= self.max_gap_s)
            steps = np.diff(ts)
            if fits and 0 < steps.min() and steps.max() <= self.max_gap_s:
                self._append_run(device_id, dev, ts, rows)
                return {Added.OK: n}
        out: Counter[Added] = Counter()
        future = ts > latest
        if future.any():
            out[Added.FUTURE] = int(future.sum())
            ts, rows = ts[~future], rows[~future]
            if not len(ts):
                return out
        dev = self._device(device_id)
        for i in range(len(ts)):
            out[self._add_one(device_id, dev, float(ts[i]), rows[i])] += 1
        return out

    def _append_run(self, device_id: str, dev: _Device, ts: np.ndarray, rows: np.ndarray) -> None:
        """Bulk copy in-order, gap-free rows, emitting windows exactly where :meth:`_add_one` would."""
        length, stride, done = self.window_length, self.stride, 0
        while done < len(ts):
            if dev.size == len(dev.ts):
                self._make_room(dev)
            m = min(len(dev.ts) - dev.size, len(ts) - done)
            lo = dev.size
            dev.buf[lo: lo + m] = rows[done: done + m]
            dev.ts[lo: lo + m] = ts[done: done + m]
            # the row at offset r makes since_reset = since0 + r + 1; a window ends there when
            # since_reset >= length and (since_reset - length) % stride == 0
            since0 = dev.since_reset
            first = max(length - since0 - 1, 0)
            first += (-(since0 + first + 1 - length)) % stride
            if first < m:  # every window ending in this run, copied out in one strided slice
                starts = slice(lo + first + 1 - length, lo + m + 1 - length, stride)
                chunk = _Chunk(dev.seq, dev.segment, dev.win_ts[starts].copy(), dev.win[starts].copy())
                dev.ready.append(chunk)
                dev.seq += len(chunk.ts)
                self._ready_count += len(chunk.ts)
            dev.size += m
            dev.since_reset += m
            done += m
        dev.last_ts = float(ts[-1])

    def _make_room(self, dev: _Device) -> None:
        """A full buffer: doubled while below the full size, else compacted."""
        rows = len(dev.ts)
        if rows >= self._capacity:
            self._compact(dev)
            return
        buf, ts, dev.win, dev.win_ts = self._buffers(min(2 * rows, self._capacity))
        buf[:rows] = dev.buf
        ts[:rows] = dev.ts
        dev.buf, dev.ts = buf, ts

    def _compact(self, dev: _Device) -> None:
        keep = self.window_length - 1
        dev.buf[:keep] = dev.buf[dev.size - keep: dev.size]
        dev.ts[:keep] = dev.ts[dev.size - keep: dev.size]
        dev.size = keep

    def _add_one(self, device_id: str, dev: _Device, ts: float, row: Sequence[float] | np.ndarray) -> Added:
        outcome = Added.OK
        if dev.since_reset:
            if ts == dev.last_ts:
                return Added.DUPLICATE
            if ts < dev.last_ts:
                return Added.PAST if dev.last_ts - ts > self.max_late_s else Added.LATE
            if ts - dev.last_ts > self.max_gap_s:
                dev.size = 0
                dev.since_reset = 0
                dev.segment += 1
                outcome = Added.RESET
        if dev.size == len(dev.ts):
            self._make_room(dev)
        dev.buf[dev.size] = row
        dev.ts[dev.size] = ts
        dev.size += 1
        dev.since_reset += 1
        dev.last_ts = ts
        extra = dev.since_reset - self.window_length
        if extra >= 0 and extra % self.stride == 0:
            lo = dev.size - self.window_length
            dev.ready.append(_Chunk(dev.seq, dev.segment, dev.win_ts[lo: lo + 1].copy(), dev.win[lo: lo + 1].copy()))
            dev.seq += 1
            self._ready_count += 1
        return outcome

    def take_batch(self, limit: int | None = None) -> WindowBatch:
        """Remove and return up to ``limit`` ready windows, oldest first within each device, as arrays."""
        runs: list[tuple[str, int, int]] = []
        seq: list[int] = []
        segment: list[int] = []
        ts: list[np.ndarray] = []
        values: list[np.ndarray] = []
        total = 0
        for device_id, dev in self._devices.items():
            if not dev.ready:
                continue
            lo = total
            taken = 0
            for chunk in dev.ready:
                k = len(chunk.ts)
                room = k if limit is None else min(k, limit - total)
                if room < k:  # split: the rest stays ready
                    dev.ready[taken] = _Chunk(chunk.seq + room, chunk.segment, chunk.ts[room:], chunk.values[room:])
                    chunk = _Chunk(chunk.seq, chunk.segment, chunk.ts[:room], chunk.values[:room])
                else:
                    taken += 1
                seq.extend(range(chunk.seq, chunk.seq + room))
                segment.extend([chunk.segment] * room)
                ts.append(chunk.ts)
                values.append(chunk.values)
                total += room
                if limit is not None and total >= limit:
                    break
            del dev.ready[:taken]
            runs.append((device_id, lo, total))
            if limit is not None and total >= limit:
                break
        self._ready_count -= total
        if not total:
            width = (0, self.window_length)
            return WindowBatch((), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(width), np.empty((*width, len(self.channels))))
        return WindowBatch(tuple(runs), np.array(seq, dtype=np.int64), np.array(segment, dtype=np.int64),
                           np.concatenate(ts), np.concatenate(values))

    def take_ready(self, limit: int | None = None) -> list[Window]:
        """Remove and return up to ``limit`` ready windows, oldest first within each device."""
        return self.take_batch(limit).windows()


def stack(windows: Sequence[Window]) -> np.ndarray:
    """The ``(batch, window_length, channels)`` float32 array one inference call takes."""
    if not windows:
        return np.empty((0, 0, 0), dtype=np.float32)
    out = np.empty((len(windows), *windows[0].values.shape), dtype=np.float32)
    for i, w in enumerate(windows):
        out[i] = w.values
    return out

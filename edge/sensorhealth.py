"""Sensor health: cheap checks on every window before it is decided, numpy only.

A broken sensor and a broken machine go to different people, so a window that fails a check is
reported as a ``sensor_fault`` event naming the check and the channels, and its process verdict
is suppressed (:mod:`edge.pipeline`). The checks, per window and per channel, vectorised over a
batch (:meth:`SensorHealth.check`):

- ``stuck``: the channel's readings in the window span at most ``stuck_spread_max`` (max - min) for
  ``stuck_windows`` consecutive windows of the device (a flat-lined or frozen sensor);
- ``range``: a reading of the channel outside its range: the manifest's ``channel_ranges``
  (learned at export, :func:`models.calibrate.channel_ranges`), replaced per channel and per
  side by ``range_min`` / ``range_max`` in the config; a channel with neither is not checked;
- ``rate``: every step between readings is at least ``rate_factor`` times the manifest's sample
  period, or every step at most its inverse (a sensor sampling at another pace; a window with
  some readings missing has steps of one period too, and is ``dropout``);
- ``clock``: the median step is off the nearest whole number of sample periods by more than
  ``clock_skew_max`` of it (the sensor's clock runs fast or slow), or the steps sit, on average,
  more than ``clock_jitter_max`` periods from a whole number of periods (jitter);
- ``dropout``: the readings missing against the sample period (a step of k periods misses k - 1)
  are more than ``dropout_max_share`` of the readings the window should hold.

The three timestamp checks name every channel (readings share their ``ts``) and are exclusive:
``rate`` first, then ``clock``, then ``dropout``. A payload without every channel never reaches
the windows: it is refused and dead-lettered as ``missing_channel``, as before.

Debounce (:meth:`SensorHealth.device`): one event when a check starts failing on a device, again
when it names a channel it had not named, and every ``repeat_windows`` of the device's windows
while it lasts (0: only at the start); the episode ends at the first window that passes that
check. A device has at most one event per window (the event id derives from device, window end
and model), so two checks starting together are reported in two consecutive failing windows, in
the order rate, clock, dropout, range, stuck. A window with a channel flat but not yet for
``stuck_windows`` windows raises no event, but is not judged a process anomaly either; nor is a
window whose first or last :data:`EDGE_READINGS` readings of a channel step by at most
``stuck_spread_max`` (a sensor freezing or coming back within the window: the jump is the
sensor's, not the process's).

State is per device and small (a flat-window count per channel and the open episodes), held
only while a device has something open, and dropped with the device (:meth:`SensorHealth.forget`).
Worker thread only; nothing here raises on data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from edge.contract import ConfigError, ModelManifest
from edge.contract.event import MAX_FAULT_DETAIL, FaultCheck, SensorFault

EDGE_READINGS = 4
"""Readings at either end of a window that, flat in a channel, keep the window from being judged a
process anomaly (four readings of a noisy sensor within 1e-6 of each other do not happen by chance)."""

_NONE = np.empty((0, 0))  # low and high of a batch without ranges (the range check's detail never reads them)

PRIORITY: tuple[FaultCheck, ...] = ("rate", "clock", "dropout", "range", "stuck")
"""The order in which checks starting in the same window are reported (the timestamp checks
first: a sensor at the wrong pace explains the rest)."""


@dataclass(frozen=True)
class SensorHealthSettings:
    """The ``[sensor_health]`` config section; the defaults are what the agent ships with."""

    enabled: bool = True
    stuck_spread_max: float = 1e-6      # a window whose readings of a channel span at most this (max - min) is flat
    stuck_windows: int = 3              # consecutive flat windows that make a channel stuck
    range_min: Mapping[str, float] = field(default_factory=dict)  # channel -> lowest valid reading (overrides the manifest)
    range_max: Mapping[str, float] = field(default_factory=dict)  # channel -> highest valid reading
    dropout_max_share: float = 0.2     # share of a window's readings that may be missing
    clock_skew_max: float = 0.1        # |median step / sample period - 1| allowed
    clock_jitter_max: float = 0.2      # mean distance of a step from a whole number of periods, in periods
    rate_factor: float = 2.0           # every step at least this many sample periods, or every one at most its inverse: rate
    repeat_windows: int = 60           # an open fault is reported again after this many of the device's windows (0: never)

    def problems(self) -> list[tuple[str, object, str]]:
        """``(key, value, rule)`` for every value out of range (the config loader names the key)."""
        checks: list[tuple[bool, str, object, str]] = [
            (self.stuck_spread_max >= 0, "stuck_spread_max", self.stuck_spread_max, "must be >= 0"),
            (self.stuck_windows >= 1, "stuck_windows", self.stuck_windows, "must be >= 1"),
            (0 < self.dropout_max_share < 1, "dropout_max_share", self.dropout_max_share, "must be in (0, 1)"),
            (0 < self.clock_skew_max, "clock_skew_max", self.clock_skew_max, "must be > 0"),
            (0 < self.clock_jitter_max < 0.5, "clock_jitter_max", self.clock_jitter_max, "must be in (0, 0.5)"),
            (self.rate_factor > 1 + self.clock_skew_max, "rate_factor", self.rate_factor,
             f"must be > 1 + clock_skew_max ({1 + self.clock_skew_max:g})"),
            (self.repeat_windows >= 0, "repeat_windows", self.repeat_windows, "must be >= 0 (0: only when a fault starts)"),
        ]
        for channel, low in self.range_min.items():
            high = self.range_max.get(channel, math.inf)
            checks.append((low < high, f"range_min.{channel}", low, f"must be below range_max.{channel} ({high:g})"))
        return [(key, value, rule) for ok, key, value, rule in checks if not ok]


class BatchHealth(NamedTuple):
    """The checks of one batch of windows, row by row (:meth:`SensorHealth.check`)."""

    flat: np.ndarray     # (batch, channels) bool: readings spanning at most stuck_spread_max
    edge: np.ndarray     # (batch,) bool: a channel flat over the window's first or last EDGE_READINGS readings
    out: np.ndarray      # (batch, channels) bool: a reading outside the range
    low: np.ndarray      # (batch, channels) the window's smallest reading (empty without ranges)
    high: np.ndarray     # (batch, channels) its largest
    step: np.ndarray     # (batch,) median step, in sample periods
    shortest: np.ndarray  # (batch,) smallest step
    longest: np.ndarray  # (batch,) largest step
    jitter: np.ndarray   # (batch,) mean distance of a step from a whole number of periods
    missing: np.ndarray  # (batch,) share of the readings missing against the sample period
    timing: np.ndarray   # (batch,) int8: 0 fine, else 1 + PRIORITY.index of rate, clock or dropout
    any: np.ndarray      # (batch,) bool: edge (so flat), out or timing: something to look at in the row


@dataclass(slots=True)
class _Episode:
    channels: tuple[int, ...] = ()  # what the last event named (empty: not reported yet)
    since: int = 0                  # the device's windows since that event


@dataclass(slots=True)
class _Device:
    flat_run: np.ndarray                                            # (channels,) consecutive flat windows
    open: dict[FaultCheck, _Episode] = field(default_factory=dict)  # checks failing now


class SensorHealth:
    """The checks of one model's channels and sample period, with per-device debounce state."""

    def __init__(self, settings: SensorHealthSettings, manifest: ModelManifest, *, source: str = "<config>") -> None:
        self.settings = settings
        self.channels = manifest.channel_names
        self.period = manifest.sample_period_s
        n = len(self.channels)
        self.low = np.full(n, -np.inf)
        self.high = np.full(n, np.inf)
        for name, (lo, hi) in (manifest.channel_ranges or {}).items():
            j = self.channels.index(name)
            self.low[j], self.high[j] = lo, hi
        for key, table, bound in (("range_min", settings.range_min, self.low), ("range_max", settings.range_max, self.high)):
            for name, value in table.items():
                if name not in self.channels:
                    raise ConfigError(f"{source}: 'sensor_health.{key}.{name}' names no channel of model {manifest.name} "
                                      f"({', '.join(self.channels)})")
                bound[self.channels.index(name)] = value
        bad = np.flatnonzero(self.low >= self.high)
        if len(bad):
            name = self.channels[int(bad[0])]
            raise ConfigError(f"{source}: 'sensor_health.range_min.{name}' ({self.low[bad[0]]:g}) must be below the "
                              f"channel's max ({self.high[bad[0]]:g}, from range_max or the manifest)")
        self._ranged = bool(np.isfinite(self.low).any() or np.isfinite(self.high).any())
        self._devices: dict[str, _Device] = {}

    @property
    def devices(self) -> int:
        """Devices with state held (a flat channel or an open fault)."""
        return len(self._devices)

    def forget(self, device_id: str) -> None:
        self._devices.pop(device_id, None)

    def check(self, ts: np.ndarray, values: np.ndarray) -> BatchHealth:
        """Every check of every window of a batch: ``ts (batch, window)``, ``values (batch, window,
        channels)`` as received. Stateless; the per-device run of flat windows is :meth:`device`'s.
        Cheap when all is well: a window is looked at in full only where a channel's two ends (flat),
        its first or last step (edges) or a timestamp step (timing) leave room for a failure."""
        n, length, channels = values.shape
        floor = self.settings.stuck_spread_max
        q = min(EDGE_READINGS, length) - 1  # steps within the first and the last EDGE_READINGS readings
        ends = np.abs(values[:, (-1, 1, length - 1)] - values[:, (0, 0, length - 2)]) <= floor if length > 1 else \
            np.zeros((n, 3, channels), dtype=bool)  # (batch, 3, channels): a window of one reading is never flat
        if self._ranged:
            by_channel = np.ascontiguousarray(values.transpose(0, 2, 1))  # reductions along the last axis: several times faster
            low, high = by_channel.min(axis=2), by_channel.max(axis=2)
            flat = ends[:, 0] & (high - low <= floor)
            out = (low < self.low) | (high > self.high)
        else:
            low = high = _NONE
            flat = ends[:, 0].copy()
            rows = np.flatnonzero(flat.any(axis=1))
            if len(rows):
                some = values[rows]
                flat[rows] &= some.max(axis=1) - some.min(axis=1) <= floor
            out = np.zeros((n, channels), dtype=bool)
        edge = np.zeros(n, dtype=bool)
        if ends[:, 1:].any():
            edge = self._flat_steps(values, ends[:, 1], 0, q, floor) | self._flat_steps(values, ends[:, 2], length - 1 - q, q, floor)
        timing = self._timing(ts)
        return BatchHealth(flat, edge, out, low, high, *timing, edge | out.any(axis=1) | (timing[-1] > 0))

    def _timing(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(step, shortest, longest, jitter, missing, timing)`` of :class:`BatchHealth`. A batch whose
        every step is within min(clock_skew_max, clock_jitter_max) periods of one period fails none of
        the three checks (and rate_factor > 1 + clock_skew_max): then only ``timing``, all 0."""
        s = self.settings
        steps = np.diff(ts, axis=1) / self.period
        if not steps.size or float(np.abs(steps - 1).max()) <= min(s.clock_skew_max, s.clock_jitter_max):
            return _NONE, _NONE, _NONE, _NONE, _NONE, np.zeros(len(ts), dtype=np.int8)
        step = np.median(steps, axis=1)
        shortest, longest = steps.min(axis=1), steps.max(axis=1)
        whole = np.rint(steps)
        jitter = np.abs(steps - whole).mean(axis=1)
        gone = np.maximum(whole - 1, 0).sum(axis=1)
        missing = gone / (gone + ts.shape[1])
        rate = (shortest >= s.rate_factor) | (longest * s.rate_factor <= 1)
        skew = np.abs(step / np.maximum(np.rint(step), 1) - 1)
        clock = (skew > s.clock_skew_max) | (jitter > s.clock_jitter_max)
        timing = np.where(rate, 1, np.where(clock, 2, np.where(missing > s.dropout_max_share, 3, 0))).astype(np.int8)
        return step, shortest, longest, jitter, missing, timing

    @staticmethod
    def _flat_steps(values: np.ndarray, first: np.ndarray, start: int, q: int, floor: float) -> np.ndarray:
        """``(batch,)``: a channel whose ``q`` steps from reading ``start`` are each at most ``floor``;
        ``first (batch, channels)`` says whose first such step is (only those rows are looked at)."""
        out = np.zeros(len(values), dtype=bool)
        rows = np.flatnonzero(first.any(axis=1))
        if len(rows):
            part = values[rows, start: start + q + 1]
            steady = np.all(np.abs(np.diff(part, axis=1)) <= floor, axis=1)
            out[rows] = np.any(steady, axis=1)
        return out

    def device(self, device_id: str, health: BatchHealth, lo: int, hi: int) -> tuple[np.ndarray | None, list[tuple[int, SensorFault]]]:
        """One device's windows, rows ``lo``..``hi`` of the batch in window order: which of them are not
        to be judged as process anomalies (``None``: none; those failing a check, and those with a flat
        channel not yet ``stuck_windows`` long or flat at an edge), and the faults to report as ``(row, fault)``, at most one
        per row, in row order."""
        state = self._devices.get(device_id)
        bad = health.any[lo:hi]
        if state is None and not bad.any():
            return None, []
        if state is None:
            state = self._devices[device_id] = _Device(np.zeros(len(self.channels), dtype=np.int64))
        stuck = self._stuck(state, health.flat[lo:hi])
        failing = health.out[lo:hi].any(axis=1) | (health.timing[lo:hi] > 0) | stuck.any(axis=1)
        reports: list[tuple[int, SensorFault]] = []
        for r in range(hi - lo):
            if not failing[r] and not state.open:
                continue
            found = self._found(health, lo + r, stuck[r])
            fault = self._debounce(state, found)
            if fault is not None:
                reports.append((lo + r, self._fault(fault, found[fault], health, lo + r)))
        if not state.open and not state.flat_run.any():
            del self._devices[device_id]
        suspect = failing | health.edge[lo:hi]
        return (suspect if suspect.any() else None), reports

    def _stuck(self, state: _Device, flat: np.ndarray) -> np.ndarray:
        """``(rows, channels)``: flat for ``stuck_windows`` windows in a row, counting the device's
        flat windows before these; updates the count."""
        if not flat.any():
            state.flat_run[:] = 0
            return np.zeros_like(flat)
        f = flat.astype(np.int64)
        total = np.cumsum(f, axis=0)
        run = total - np.maximum.accumulate(np.where(f == 0, total, 0), axis=0)  # flat windows since the last one that was not
        run += np.where(np.cumsum(1 - f, axis=0) == 0, state.flat_run, 0)       # carried over while none was
        state.flat_run[:] = run[-1]
        stuck: np.ndarray = run >= self.settings.stuck_windows
        return stuck

    def _found(self, health: BatchHealth, i: int, stuck: np.ndarray) -> dict[FaultCheck, tuple[int, ...]]:
        """The checks row ``i`` fails, each with its channel indices."""
        found: dict[FaultCheck, tuple[int, ...]] = {}
        timing = int(health.timing[i])
        if timing:
            found[PRIORITY[timing - 1]] = tuple(range(len(self.channels)))
        if health.out[i].any():
            found["range"] = tuple(np.flatnonzero(health.out[i]).tolist())
        if stuck.any():
            found["stuck"] = tuple(np.flatnonzero(stuck).tolist())
        return found

    def _debounce(self, state: _Device, found: Mapping[FaultCheck, tuple[int, ...]]) -> FaultCheck | None:
        """Advance the device's episodes by one window failing ``found``; the check to report now, if any."""
        for check in [c for c in state.open if c not in found]:
            del state.open[check]
        repeat = self.settings.repeat_windows
        due: FaultCheck | None = None
        for check in PRIORITY:
            channels = found.get(check)
            if channels is None:
                continue
            episode = state.open.setdefault(check, _Episode())
            episode.since += 1
            new = not episode.channels or not set(channels) <= set(episode.channels) or (repeat and episode.since >= repeat)
            if new and due is None:
                due = check
                episode.channels, episode.since = channels, 0
        return due

    def _fault(self, check: FaultCheck, channels: tuple[int, ...], h: BatchHealth, i: int) -> SensorFault:
        s = self.settings
        names = tuple(self.channels[j] for j in channels)
        if check == "rate":
            detail = (f"steps {h.shortest[i]:.3g}-{h.longest[i]:.3g} sample periods of {self.period:g} s, all at least "
                      f"{s.rate_factor:g} or all at most {1 / s.rate_factor:.3g}")
        elif check == "clock":
            detail = (f"median step {h.step[i]:.3g} sample periods (skew from whole periods allowed {s.clock_skew_max:g}), jitter "
                      f"{h.jitter[i]:.3g} periods (allowed {s.clock_jitter_max:g})")
        elif check == "dropout":
            detail = f"{h.missing[i]:.0%} of the window's readings missing (allowed {s.dropout_max_share:.0%})"
        elif check == "range":
            detail = "; ".join(f"{self.channels[j]} {h.low[i, j]:.4g}..{h.high[i, j]:.4g} outside "
                               f"[{self.low[j]:.4g}, {self.high[j]:.4g}]" for j in channels)
        else:
            detail = f"readings within {s.stuck_spread_max:g} of each other for {s.stuck_windows} windows or more"
        return SensorFault(check, names, detail[:MAX_FAULT_DETAIL])

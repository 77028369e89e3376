"""The seasonal channel: each device's daily profile of its raw values, beside the model's score.

A model that sees one window at a time cannot tell that a value normal at noon is abnormal at
midnight, nor that a day which stays flat where every other day rises is a fault. This channel
keeps, per device, the value each channel usually has at each time of day, and scores a window by
how far its last row lies from that profile. :class:`edge.adaptive.AdaptiveLayer` decides the score
with a tail of its own (the layer's settings) and combines: a window is over when the model's score
or this channel's is over, and its surprise is the larger of the two (``adaptive.seasonal``).

Per device, one sample per window (the window's last row, every channel):

1. **Period.** ``P = round(86400 s / median step)`` of the end times of the device's first
   ``TIMING_WINDOWS`` windows: its windows per day (those windows are kept and teach once it is
   known). Outside [``MIN_PERIOD``, ``MAX_PERIOD``] the channel is off for good (1 Hz with stride 8
   gives ``P`` = 10800: off). A window's phase is its time of day in ``P`` steps, from its end time,
   so a gap does not shift the profile.
2. **Gate**, once, after ``2P`` windows: a channel opens when the autocorrelation of its values at lag
   ``P`` is at least ``AC_MIN`` and exceeds the one at lag ``P/2`` by ``AC_MIN`` (the value a day ago
   predicts the value, the value half a day ago does not; a trend alone passes only the first test).
   No channel open: off for good. Only open channels score.
3. **Profile.** Per phase and channel, an exponential mean of the values with a half-life of one
   period (the first cycle takes the value). A channel's residual ``|x - profile[phase]|`` is divided
   by a running mean of its residuals (forgetting like the layer's tail), so channels compare unit-free;
   the window's score is the largest. A window is scored before it teaches; one over the channel's
   threshold, or inside its open run, changes neither profile nor scale.
4. **Silence.** The first ``2P`` windows only teach; then the channel's tail starts past warm-up from
   the scores of windows ``[P, 2P)``.

The period and the memory cap are principles (daily; 16 KiB a channel); ``AC_MIN`` was fixed before
scoring (0.3 to 0.7 open the same gates on NAB); the half-life and sampling the last row rather than a
mean of rows were chosen leave-one-file-out on NAB (the same choice in all 28 folds). On NAB's
agent path (conv_ae) it opens on the seven art_daily files and one AWS file, finds three anomalies
the score misses and adds no false alarm; SKAB's 1 s rows keep it off.

Memory per device: ``P`` floats per channel; while the first ``2P`` windows teach, also their values
and the residuals of ``[P, 2P)`` (3P more), freed at the gate. Pure logic: no threads, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DAY_S = 86400.0
MIN_PERIOD = 8
MAX_PERIOD = 2048          # windows per day kept per channel: 16 KiB as float64
TIMING_WINDOWS = 2 * MIN_PERIOD  # windows whose end times measure the period (the gate comes at the last at the earliest)
AC_MIN = 0.5
PROFILE_ALPHA = 0.5        # per update of a phase (once a period): a half-life of one period
SCALE_FLOOR = 1e-6         # a channel's residual scale never falls below this share of its spread
OFF = -1                   # SeasonalState.period of a channel off for good


def daily_period(step_s: float) -> int:
    """Windows per day at a window step of ``step_s``, or ``OFF`` outside [MIN_PERIOD, MAX_PERIOD]."""
    p = int(round(DAY_S / step_s)) if step_s > 0 else 0
    return p if MIN_PERIOD <= p <= MAX_PERIOD else OFF


def autocorrelation(x: np.ndarray, lag: int) -> np.ndarray:
    """Per column of ``x`` (rows, channels): the correlation of ``x[t]`` with ``x[t + lag]``
    (0 for a constant column)."""
    a = x[:-lag] - x[:-lag].mean(axis=0)
    b = x[lag:] - x[lag:].mean(axis=0)
    return np.asarray((a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0) + 1e-24))


@dataclass
class SeasonalState:
    """One device's seasonal channel in plain numbers (the ``seasonal`` entry of its adaptive state row).

    Driven by :class:`edge.adaptive.AdaptiveLayer`, window by window in window order: :meth:`score`,
    then, for a window that scored, :meth:`learn`."""

    channels: int
    period: int = 0                    # windows per day; 0 while timing, OFF for good
    origin: float = math.nan           # end time of phase 0
    ends: list[float] = field(default_factory=list)            # end times while timing
    seen: int = 0                      # windows taught
    first: list[list[float]] = field(default_factory=list)     # values of the first 2P windows (the gate)
    start: list[list[float]] = field(default_factory=list)     # residuals of windows [P, 2P) (the tail's start)
    open: list[int] = field(default_factory=list)              # channels that score
    profile: list[list[float]] = field(default_factory=list)   # per phase, per channel (NaN: not seen yet)
    scale: list[float] = field(default_factory=list)           # running mean residual per channel
    floor: list[float] = field(default_factory=list)           # floor of each scale

    @property
    def off(self) -> bool:
        return self.period == OFF

    def score(self, row: list[float], end: float) -> tuple[float, int, list[float]] | None:
        """Window ``row`` (its last row, every channel) ending at ``end``: ``(score, phase, residuals)``,
        or None while the channel is silent (it measures the period, or its first ``2P`` windows teach:
        then this call taught the window). Call :meth:`learn` with what it returned."""
        if self.period <= 0:
            if self.period == 0:
                self._time(row, end)
            return None
        k = self._phase(end)
        if not self.open:
            self._teach(k, row)
            return None
        profile = self.profile[k]
        residuals = [0.0] * self.channels
        score = 0.0
        scale, floor = self.scale, self.floor
        for c in self.open:
            p = profile[c]
            r = residuals[c] = 0.0 if p != p else abs(row[c] - p)
            u = r / max(scale[c], floor[c])
            if u > score:
                score = u
        return score, k, residuals

    def learn(self, row: list[float], phase: int, residuals: list[float], *, protected: bool, scale_alpha: float) -> None:
        """After the window's decision: unless ``protected`` (over the threshold, or inside an open run),
        its values move the profile at ``phase`` and its residuals the scales (by ``scale_alpha``)."""
        if protected:
            return
        profile, scale = self.profile[phase], self.scale
        for c in self.open:
            p, x = profile[c], row[c]
            profile[c] = x if p != p else p + PROFILE_ALPHA * (x - p)
            scale[c] += scale_alpha * (residuals[c] - scale[c])

    def take_start(self) -> list[float]:
        """The scores of windows ``[P, 2P)`` for the tail's start, once (freed)."""
        scale = [max(s, f) for s, f in zip(self.scale, self.floor, strict=True)]
        out = [max(r[c] / scale[c] for c in self.open) for r in self.start]
        self.start = []
        return out

    def _time(self, row: list[float], end: float) -> None:
        """A window while the period is measured: kept; at the last one, the period, and the kept
        windows teach the profile (phase 0 at the first)."""
        self.ends.append(end)
        self.first.append(list(row))
        if len(self.ends) < TIMING_WINDOWS:
            return
        ends, rows = self.ends, self.first
        self.period = daily_period(float(np.median(np.diff(np.asarray(ends)))))
        self.origin, self.ends, self.first = ends[0], [], []
        if self.period == OFF:
            return
        self.profile = [[math.nan] * self.channels for _ in range(self.period)]
        for r, e in zip(rows, ends, strict=True):
            self._teach(self._phase(e), r)
            if self.off:
                return

    def _phase(self, end: float) -> int:
        """The time of day of a window ending at ``end``, in ``P`` steps."""
        return int(round((end - self.origin) * self.period / DAY_S)) % self.period

    def _teach(self, k: int, row: list[float]) -> None:
        """A window of the first ``2P``: every channel learns; at ``2P``, the gate."""
        profile = self.profile[k]
        if self.seen >= self.period:
            self.start.append([0.0 if p != p else abs(x - p) for x, p in zip(row, profile, strict=True)])
        for c, (p, x) in enumerate(zip(profile, row, strict=True)):
            profile[c] = x if p != p else p + PROFILE_ALPHA * (x - p)
        self.first.append(list(row))
        self.seen += 1
        if self.seen == 2 * self.period:
            self._gate()

    def _gate(self) -> None:
        values = np.asarray(self.first, dtype=np.float64)
        p = self.period
        ac_day, ac_half = autocorrelation(values, p), autocorrelation(values, p // 2)
        self.first = []
        self.open = np.flatnonzero((ac_day >= AC_MIN) & (ac_day - ac_half >= AC_MIN)).tolist()
        if not self.open:
            self.period, self.profile, self.start = OFF, [], []
            return
        self.scale = np.mean(np.asarray(self.start), axis=0).tolist()
        self.floor = np.maximum(SCALE_FLOOR * values.std(axis=0), 1e-12).tolist()

    def as_row(self) -> dict[str, object]:
        return {"channels": self.channels, "period": self.period, "origin": self.origin, "ends": self.ends,
                "seen": self.seen, "first": self.first, "start": self.start, "open": self.open,
                "profile": self.profile, "scale": self.scale, "floor": self.floor}

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> SeasonalState:
        """The state :meth:`as_row` gave; raises ValueError (or TypeError) on a row that does not read."""
        def get(key: str, kind: type | tuple[type, ...]) -> Any:
            value = row[key]
            if not isinstance(value, kind):
                raise ValueError(f"adaptive state: seasonal.{key} = {value!r} is of the wrong type")
            return value

        def floats(values: list[Any]) -> list[float]:
            return [float(v) for v in values]

        period = int(get("period", int))
        if period > MAX_PERIOD:
            raise ValueError(f"adaptive state: seasonal.period = {period} is over {MAX_PERIOD}")
        return cls(channels=int(get("channels", int)), period=period, origin=float(get("origin", (int, float))),
                   ends=floats(get("ends", list)), seen=int(get("seen", int)), first=[floats(r) for r in get("first", list)],
                   start=[floats(r) for r in get("start", list)], open=[int(c) for c in get("open", list)],
                   profile=[floats(r) for r in get("profile", list)], scale=floats(get("scale", list)),
                   floor=floats(get("floor", list)))

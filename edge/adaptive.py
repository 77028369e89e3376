"""Adaptive thresholds: each device's threshold follows its own normal scores over its life.

Between the model's scores and :class:`edge.decision.Decider`. Per device, the layer keeps a
streaming estimate of the upper tail of its *normal* window scores, the way a peaks-over-
threshold calibration does on training scores: a running quantile ``q`` at ``tail_level``
(0.9) and the mean excess ``e`` of the scores above it (an exponential tail). A normal window
scores above ``x`` with probability ``(1 - tail_level) exp(-(x - q) / e)``; the device's threshold
is where that equals ``target_rate``. Both estimates forget with a half-life counted in the
device's windows. The agent and ``edgewatch evaluate`` run this class, so a benchmark figure is
an agent figure.

What moves a threshold and what never does:

- **Never learn from flagged windows.** A window over the threshold, and the windows of an
  open anomaly run (within ``guard_windows`` of the last window over it), leave the estimate
  untouched: a fault that lasts keeps firing instead of becoming the new normal (River's
  ``QuantileFilter(protect_anomaly_detector=True)``).
- **Cold start.** A device never seen starts from the fleet prior the manifest carries (the
  calibrated threshold and the training-score quantiles ``train_p90`` / ``train_p99``). During
  its first ``warmup_windows`` windows every window teaches, one over the warm-up threshold
  counted *at* it (so a fault's size never enters the tail). For the first tenth of them it fires
  only above ``warmup_factor`` x the manifest's threshold; at each further tenth the warm-up
  threshold becomes the larger of the manifest's and the provisional own one; at the end its
  own estimate decides. A device whose normal lies far above the prior (more than 5 % of its
  windows over the warm-up threshold) learns too low a tail this way and storms until the next
  rule absorbs it: a fault inside the warm-up looks the same, and must not raise the threshold.
- **A new normal.** A device whose recent share of windows over its threshold stays above half
  its tail share (5 %, fifty times the default budget; averaged over ``BURN_HALF_LIFE`` windows)
  for ``absorb_after_s`` of its own time (0: never) has a new normal, or an estimate that was too
  low (a storm): the estimate restarts from its windows of that time, over the threshold or not.
  An operator's ``--new-normal`` (:meth:`AdaptiveLayer.rebaseline`) restarts the device's warm-up. A new model
  restarts every device from the new manifest's prior (:meth:`AdaptiveLayer.reset_prior`).
- **Smoothing.** With ``smooth_windows`` > 1 the layer decides on the mean score of the last
  windows (the short-term average of the NAB anomaly likelihood) and learns the tail of that mean.
- **Seasonal channel** (``seasonal``, :mod:`edge.seasonal`). Given each window's last row, a
  device that reports slowly enough (a daily profile of at most 2048 windows) and whose values
  repeat daily also gets a score from its daily profile, decided by a tail of its own with the
  same settings: a window is over when either is, its surprise is the larger one, its threshold
  stays the model's.

Every window gets a ``surprise``: ``-log10`` of the probability that a normal window of the
device scores at least as high (3.0 is one in a thousand). A window is over when its surprise
exceeds ``-log10(target_rate)``. :func:`likelihood` turns surprise into NAB's anomaly likelihood.

Pure logic, no threads, no clock: durations are the windows' own end times. A device's windows
are decided in window order and each update depends on the decision before it, so the loop
runs per window in plain floats (about a microsecond a window).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from edge.contract import ModelManifest
from edge.seasonal import SeasonalState

log = logging.getLogger(__name__)
_LN10 = math.log(10.0)
BURN_HALF_LIFE = 1000
"""Windows over which a device's recent over-threshold share (its alert-budget burn) is averaged."""
_BURN_ALPHA = 1.0 - 0.5 ** (1.0 / BURN_HALF_LIFE)
UNIT_FLOOR = 1e-12
"""The smallest threshold an ensemble member's score is divided by: a member whose training scores
were all 0 (a flat signal) has threshold 0, and any score above it is far above."""


@dataclass(frozen=True)
class AdaptiveSettings:
    """The ``[adaptive]`` config section; the defaults are what the agent ships with."""

    enabled: bool = True
    target_rate: float = 1e-3           # share of a device's normal windows allowed over its threshold
    half_life_windows: float = 500.0    # memory of the running estimate, in the device's windows
    warmup_windows: int = 300           # normal windows learned before a device's own threshold is used
    warmup_factor: float = 2.0          # during warm-up: fire only above the manifest threshold x this
    smooth_windows: int = 1             # decide on the mean score of this many windows (1: off)
    guard_windows: int = 16             # windows after one over the threshold that still do not teach
    absorb_after_s: float = 6 * 3600.0  # an anomaly run longer than this becomes the new normal (0: never)
    tail_level: float = 0.9             # the running quantile the tail is measured from
    min_excess: float = 0.01            # floor of the tail's scale, as a share of the manifest threshold
    save_interval_s: float = 60.0       # the state is saved beside the outbox this often (and at stop)
    seasonal: bool = True               # a daily-profile channel beside the score (edge.seasonal; off where it cannot help)

    @property
    def surprise_limit(self) -> float:
        """The surprise above which a window is over: ``-log10(target_rate)``."""
        return -math.log10(self.target_rate)

    def problems(self) -> list[tuple[str, object, str]]:
        """``(key, value, rule)`` for every value out of range (the config loader names the key)."""
        checks = [
            (0.0 < self.target_rate < 1.0 - self.tail_level, "target_rate", self.target_rate, "must be in (0, 1 - tail_level)"),
            (self.half_life_windows >= 1, "half_life_windows", self.half_life_windows, "must be >= 1"),
            (self.warmup_windows >= 10, "warmup_windows", self.warmup_windows, "must be >= 10"),
            (self.warmup_factor >= 1, "warmup_factor", self.warmup_factor, "must be >= 1"),
            (self.smooth_windows >= 1, "smooth_windows", self.smooth_windows, "must be >= 1"),
            (self.guard_windows >= 0, "guard_windows", self.guard_windows, "must be >= 0"),
            (self.absorb_after_s >= 0, "absorb_after_s", self.absorb_after_s, "must be >= 0 (0: never)"),
            (0.5 <= self.tail_level < 1.0, "tail_level", self.tail_level, "must be in [0.5, 1)"),
            (self.min_excess > 0, "min_excess", self.min_excess, "must be > 0"),
            (self.save_interval_s > 0, "save_interval_s", self.save_interval_s, "must be > 0"),
        ]
        return [(key, value, rule) for ok, key, value, rule in checks if not ok]


@dataclass(frozen=True)
class Prior:
    """What a device starts from: the manifest's threshold, and the tail of its training scores
    (``quantile`` at the settings' ``tail_level`` and the mean ``excess`` above it)."""

    threshold: float
    quantile: float
    excess: float

    @classmethod
    def from_manifest(cls, manifest: ModelManifest, threshold: float | None = None) -> Prior:
        """The prior of a manifest; ``threshold`` overrides its threshold (``decision.threshold``)."""
        return cls.from_calibration(float(manifest.threshold if threshold is None else threshold), manifest.calibration.params)

    @classmethod
    def from_calibration(cls, threshold: float, params: Mapping[str, float | str]) -> Prior:
        """From ``train_p90`` and ``train_p99`` of a calibration record (an exponential tail
        through both) where present; else a tail that puts the 1e-3 point at the threshold."""
        p90, p99 = params.get("train_p90"), params.get("train_p99")
        if isinstance(p90, float | int) and isinstance(p99, float | int) and 0 <= p90 < p99:
            return cls(threshold, float(p90), (float(p99) - float(p90)) / math.log(10.0))
        return cls(threshold, threshold / 2.0, threshold / 2.0 / math.log(100.0))


SEASONAL_PRIOR = Prior(threshold=5.0, quantile=1.0, excess=1.0)
"""The prior of the seasonal channel's tails, in mean residuals (its unit): they start past warm-up
(:meth:`AdaptiveLayer.start_from`), so only the floor of their scale comes from it (``min_excess`` x 5)."""


@dataclass
class DeviceState:
    """One device's estimate and its open run, in plain numbers (a row of the state store)."""

    quantile: float
    excess: float
    warm: bool = False                # past warm-up: the own estimate decides
    learned: int = 0                  # normal windows learned since the last (re)start
    since_over: int = 1 << 30         # windows since the last one over the threshold
    run_start: float = math.nan       # device time since which it alarms beyond its budget
    run: list[float] = field(default_factory=list)       # its scores since then (bounded)
    warmup: list[float] = field(default_factory=list)    # scores seen during warm-up
    warm_thr: float = math.nan        # the warm-up threshold
    recent: deque[float] = field(default_factory=deque)  # last scores, for smoothing
    windows: int = 0                  # windows decided (how far a device has got; the broker tests wait on it)
    over: int = 0                     # of them over the threshold
    over_rate: float = 0.0            # recent share of windows over (half-life BURN_HALF_LIFE windows)
    seasonal: SeasonalState | None = None   # its seasonal channel (edge.seasonal), once values came
    seasonal_tail: DeviceState | None = None  # the tail deciding that channel's score, once it scores

    def as_row(self) -> dict[str, object]:
        return {"quantile": self.quantile, "excess": self.excess, "warm": self.warm, "learned": self.learned,
                "since_over": self.since_over, "run_start": self.run_start, "run": self.run, "warmup": self.warmup,
                "warm_thr": self.warm_thr,
                "recent": list(self.recent), "windows": self.windows, "over": self.over, "over_rate": self.over_rate,
                "seasonal": None if self.seasonal is None else {
                    **self.seasonal.as_row(), "tail": None if self.seasonal_tail is None else self.seasonal_tail.as_row()}}

    @classmethod
    def from_row(cls, row: Mapping[str, object], smooth_windows: int) -> DeviceState:
        def num(key: str) -> float:
            value = row[key]
            if not isinstance(value, int | float):
                raise ValueError(f"adaptive state: {key} = {value!r} is not a number")
            return float(value)

        def floats(key: str) -> list[float]:
            value = row.get(key, [])
            if not isinstance(value, list):
                raise ValueError(f"adaptive state: {key} = {value!r} is not a list")
            return [float(v) for v in value]

        seasonal, seasonal_tail = cls._seasonal_from_row(row.get("seasonal"), smooth_windows)
        return cls(quantile=num("quantile"), excess=num("excess"), warm=bool(row["warm"]), learned=int(num("learned")),
                   since_over=int(num("since_over")), run_start=num("run_start"), run=floats("run"), warmup=floats("warmup"),
                   warm_thr=num("warm_thr"),
                   recent=deque(floats("recent"), maxlen=smooth_windows), windows=int(num("windows")), over=int(num("over")),
                   over_rate=num("over_rate"), seasonal=seasonal, seasonal_tail=seasonal_tail)

    @classmethod
    def _seasonal_from_row(cls, row: object, smooth_windows: int) -> tuple[SeasonalState | None, DeviceState | None]:
        """``seasonal`` and ``seasonal_tail`` from a row's ``seasonal`` entry (None, or absent in older rows)."""
        if row is None:
            return None, None
        if not isinstance(row, Mapping):
            raise ValueError(f"adaptive state: seasonal = {row!r} is not a mapping")
        tail = row.get("tail")
        if tail is not None and not isinstance(tail, Mapping):
            raise ValueError(f"adaptive state: seasonal.tail = {tail!r} is not a mapping")
        return SeasonalState.from_row(row), None if tail is None else cls.from_row(tail, smooth_windows)


def run_openings(fire: np.ndarray, guard_windows: int) -> np.ndarray:
    """The firing windows that open an anomaly run: no window fired in the ``guard_windows``
    before them (the rest continue a run the layer still holds open, the same anomaly)."""
    fired = np.flatnonzero(np.asarray(fire, dtype=bool))
    opens = np.zeros(len(fire), dtype=bool)
    if len(fired):
        opens[fired[np.concatenate(([True], np.diff(fired) > guard_windows))]] = True
    return opens


def likelihood(surprise: np.ndarray | float) -> np.ndarray:
    """NAB's anomaly likelihood: the probability that a normal window scores lower, ``1 - 10**-surprise``."""
    return 1.0 - np.power(10.0, -np.maximum(np.asarray(surprise, dtype=np.float64), 0.0))


class AdaptiveLayer:
    """Per-device thresholds for one model. Not thread-safe: the agent's worker thread owns it."""

    MAX_RUN = 4096
    """Scores of an open run kept for absorbing it (the latest 2048 to 4096 of them)."""

    def __init__(self, settings: AdaptiveSettings, prior: Prior) -> None:
        self.settings = settings
        self.devices: dict[str, DeviceState] = {}
        self.dirty: set[str] = set()  # devices changed since take_changes (to be saved)
        self.gone: set[str] = set()   # devices forgotten since take_changes (rows to delete)
        self._tail = 1.0 - settings.tail_level
        self._limit = settings.surprise_limit
        self._span = math.log(self._tail / settings.target_rate)   # threshold = q + span * e
        alpha = 1.0 - 0.5 ** (1.0 / settings.half_life_windows)
        self._alpha_q = alpha
        self._alpha_e = min(alpha / self._tail, 1.0)  # the excess learns from a tenth of the windows
        self._step = max(10, settings.warmup_windows // 10)  # warm-up checkpoints
        # the seasonal channel's tails: the same settings, in mean residuals; per device in DeviceState
        self._seasonal = AdaptiveLayer(replace(settings, seasonal=False), SEASONAL_PRIOR) if settings.seasonal else None
        self.reset_prior(prior)

    def reset_prior(self, prior: Prior) -> None:
        """A new model: every device starts again from ``prior``."""
        self.prior = prior
        self._floor = max(self.settings.min_excess * prior.threshold, 1e-12)
        self._warm_thr = prior.threshold * self.settings.warmup_factor
        self._warm_excess = max(prior.excess, self._floor)
        self.devices.clear()
        self.dirty.clear()
        self.gone.clear()

    def _new_state(self) -> DeviceState:
        return DeviceState(quantile=self.prior.quantile, excess=self._warm_excess, warm_thr=self._warm_thr,
                           recent=deque(maxlen=self.settings.smooth_windows))

    def threshold(self, device_id: str) -> float:
        """The device's threshold now, in score units (the manifest's unit)."""
        s = self.devices.get(device_id)
        if s is None:
            return self._warm_thr
        if not s.warm:
            return s.warm_thr
        return s.quantile + self._span * max(s.excess, self._floor)

    def warming(self, device_id: str) -> bool:
        s = self.devices.get(device_id)
        return s is None or not s.warm

    def decide_many(self, device_id: str, scores: np.ndarray, ends: np.ndarray,
                    values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decide ``device_id``'s consecutive windows (in window order): ``(over, surprise,
        thresholds)``, one per window, thresholds in score units. Learns from every window that
        may teach. ``ends``: the windows' end times in seconds. ``values`` (windows, channels):
        each window's last row, for the seasonal channel (None: it is skipped)."""
        s = self.devices.get(device_id)
        if s is None:
            s = self.devices[device_id] = self._new_state()
        self.dirty.add(device_id)
        over, surprise, thresholds = self._decide_state(s, scores, ends)
        if values is not None:
            self.decide_seasonal(device_id, values, ends, over, surprise)
        return over, surprise, thresholds

    def decide_seasonal(self, device_id: str, values: np.ndarray, ends: np.ndarray, over: np.ndarray,
                        surprise: np.ndarray) -> None:
        """The seasonal channel on windows of ``device_id`` just decided (``over`` and ``surprise``
        updated in place); nothing without the channel (``seasonal`` off) or for a device never decided."""
        s = self.devices.get(device_id)
        if s is not None and self._seasonal is not None:
            self._decide_seasonal(s, values, ends, over, surprise)

    def _decide_state(self, s: DeviceState, scores: np.ndarray | list[float],
                      ends: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The loop of :meth:`decide_many` on one device's state."""
        st = self.settings
        limit, span, floor = self._limit, self._span, self._floor
        smooth, guard, absorb = st.smooth_windows, st.guard_windows, st.absorb_after_s
        burning = self._tail / 2  # an over-threshold share no normal device reaches
        n = len(scores)
        over = np.zeros(n, dtype=bool)
        surprise = np.empty(n, dtype=np.float64)
        thresholds = np.empty(n, dtype=np.float64)
        values = np.asarray(scores, dtype=np.float64).tolist()
        end_list = np.asarray(ends, dtype=np.float64).tolist()
        recent = s.recent
        base = -math.log10(self._tail)
        for i in range(n):
            x = values[i]
            if smooth > 1:
                recent.append(x)
                x = math.fsum(recent) / len(recent)
            if s.warm:
                e = max(s.excess, floor)
                thr = s.quantile + span * e
                u = base + (x - s.quantile) / (e * _LN10)
            else:  # warm-up: the prior's tail, shifted so that its limit is the warm-up threshold
                e = self._warm_excess
                thr = s.warm_thr
                u = limit + (x - thr) / (e * _LN10)
            surprise[i] = u
            thresholds[i] = thr
            s.windows += 1
            is_over = x > thr
            s.over_rate += _BURN_ALPHA * (is_over - s.over_rate)
            if is_over:
                over[i] = True
                s.over += 1
            if not s.warm:  # every warm-up window teaches; one over the threshold counts at it
                self._learn(s, thr if is_over else x)
                continue
            if s.over_rate > burning:  # alarming far beyond the budget: keep the windows to absorb
                if not s.run:
                    s.run_start = end_list[i]
                if len(s.run) >= self.MAX_RUN:
                    del s.run[:self.MAX_RUN // 2]
                s.run.append(x)
                if absorb > 0 and end_list[i] - s.run_start >= absorb:
                    self._absorb_run(s)
                    continue
            elif s.run:
                s.run = []
            if is_over:
                s.since_over = 0
            else:
                s.since_over += 1
                if s.since_over > guard:  # not inside an open anomaly run: teaches
                    self._learn(s, x)
        return over, surprise, thresholds

    def _learn(self, s: DeviceState, x: float) -> None:
        """One normal window. During warm-up its score is kept; at the end of warm-up the tail is
        computed from the kept scores. Then: the quantile by stochastic approximation (a step of
        ``alpha * e`` up when above, ``alpha * e * tail / level`` down when below, at rest where a
        ``tail`` share is above) and the mean excess as an exponentially weighted mean."""
        s.learned += 1
        if not s.warm:
            s.warmup.append(x)
            if s.learned % self._step == 0:
                self._checkpoint(s)
            return
        e = max(s.excess, self._floor)
        if x > s.quantile:
            s.excess += self._alpha_e * (x - s.quantile - s.excess)
            s.quantile += self._alpha_q * e * self.settings.tail_level
        else:
            s.quantile -= self._alpha_q * e * self._tail

    def _checkpoint(self, s: DeviceState) -> None:
        """Every tenth of the warm-up: at the end, the device's own estimate takes over; before
        it, the warm-up threshold becomes the larger of the prior's and the provisional own one
        (so it never fires below either while it learns)."""
        if s.learned >= self.settings.warmup_windows:
            self._estimate(s, s.warmup)
            s.warmup = []
        else:
            q, e = self._tail_of(s.warmup)
            s.warm_thr = max(self.prior.threshold, q + self._span * max(e, self._floor))

    def _tail_of(self, scores: list[float]) -> tuple[float, float]:
        """The ``tail_level`` quantile of ``scores`` and the mean excess above it."""
        arr = np.asarray(scores, dtype=np.float64)
        q = float(np.quantile(arr, self.settings.tail_level))
        above = arr[arr > q]
        return q, float(np.mean(above - q)) if len(above) else self._floor

    def _estimate(self, s: DeviceState, scores: list[float]) -> None:
        """The device's own estimate from a batch of normal scores; warm-up is over."""
        s.quantile, s.excess = self._tail_of(scores)
        s.warm = True

    def _absorb_run(self, s: DeviceState) -> None:
        """It has alarmed beyond its budget for ``absorb_after_s``: those windows become the estimate."""
        self._estimate(s, s.run)
        s.learned = len(s.run)
        s.run = []
        s.since_over = 1 << 30
        s.over_rate = 0.0

    def start_from(self, scores: list[float]) -> DeviceState:
        """A device state past warm-up whose tail is estimated from ``scores``, the device's own
        normal window scores (at least a few tens of them; none over a threshold). The caller keeps
        it: ``layer.devices[device_id] = layer.start_from(scores)`` (a device whose normal scores
        are known) or, as the seasonal channel does, as a tail of its own."""
        s = self._new_state()
        self._estimate(s, scores)
        s.learned = len(scores)
        return s

    def _decide_seasonal(self, s: DeviceState, values: np.ndarray, ends: np.ndarray, over: np.ndarray,
                         surprise: np.ndarray) -> None:
        """The seasonal channel of the windows :meth:`decide_many` just decided (in place: a window
        over its tail is over, its surprise the larger). Silent while it measures the period and
        for the first ``2P`` windows; off for good where it cannot help (then one check a call).
        Measured: about 5 us a window while it scores one channel (mostly the tail's call, one per
        window) and 0.7 us more per further open channel; about 1 us before; nothing when off."""
        engine = self._seasonal
        arr = np.asarray(values, dtype=np.float64)
        if engine is None or not len(arr):
            return
        channels = arr.shape[1] if arr.ndim == 2 else 1
        ch = s.seasonal
        if ch is None or ch.channels != channels:  # its first values, or a model of other channels
            ch, s.seasonal_tail = SeasonalState(channels), None
            s.seasonal = ch
        if ch.off:
            return
        rows = arr.reshape(len(arr), channels).tolist()
        end_list = np.asarray(ends, dtype=np.float64).tolist()
        guard, scale_alpha = self.settings.guard_windows, self._alpha_q
        for i, row in enumerate(rows):
            scored = ch.score(row, end_list[i])
            if scored is None:
                if ch.off:
                    return
                continue
            x, phase, residuals = scored
            tail = s.seasonal_tail
            if tail is None:
                tail = s.seasonal_tail = engine.start_from(ch.take_start())
            o, u, _ = engine._decide_state(tail, [x], end_list[i:i + 1])
            is_over = bool(o[0])
            if is_over:
                over[i] = True
            surprise[i] = max(surprise[i], float(u[0]))
            ch.learn(row, phase, residuals, protected=is_over or tail.since_over <= guard, scale_alpha=scale_alpha)

    def rebaseline(self, device_id: str) -> None:
        """A new normal by decision: the device warms up afresh from its next windows."""
        self.devices[device_id] = self._new_state()
        self.dirty.add(device_id)

    def forget(self, device_id: str) -> None:
        if self.devices.pop(device_id, None) is not None:
            self.gone.add(device_id)
        self.dirty.discard(device_id)

    def restore(self, rows: Mapping[str, Mapping[str, object]]) -> int:
        """Devices' states from stored rows (:meth:`DeviceState.as_row`) of the same model;
        returns how many were taken. A row that does not read is skipped and logged."""
        taken = 0
        for device_id, row in rows.items():
            try:
                state = DeviceState.from_row(row, self.settings.smooth_windows)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("adaptive_state_skipped device_id=%s error=%s", device_id, exc)
                continue
            if self._seasonal is None:  # a layer without the channel keeps none (a row saved while it ran)
                state.seasonal = state.seasonal_tail = None
            self.devices[device_id] = state
            taken += 1
        return taken

    def take_changes(self) -> tuple[dict[str, dict[str, object]], set[str]]:
        """Rows of the devices changed and the ids of those forgotten since the last call."""
        rows = {d: self.devices[d].as_row() for d in self.dirty if d in self.devices}
        gone, self.gone = self.gone, set()
        self.dirty = set()
        return rows, gone

    def unsaved(self, rows: Mapping[str, object], gone: set[str]) -> None:
        """Changes :meth:`take_changes` gave that could not be saved: they are taken again next time."""
        self.dirty.update(rows)
        self.gone.update(gone)

    def burn(self, device_id: str) -> float:
        """The device's alert-budget burn: its recent share of windows over the threshold
        divided by ``target_rate`` (1: on budget)."""
        s = self.devices.get(device_id)
        return 0.0 if s is None else s.over_rate / self.settings.target_rate


def _middle(rows: Sequence[np.ndarray] | Sequence[float]) -> np.ndarray:
    """The median over an odd number of rows, elementwise (``np.median`` costs ten times as much on
    the agent's batches of a few windows: 13 against 1.7 us a call)."""
    middle: np.ndarray = np.sort(np.array(rows), axis=0)[len(rows) // 2]
    return middle


class EnsembleLayer:
    """Per-device thresholds for an ensemble (manifest ``members``): one :class:`AdaptiveLayer` per
    member decides that member's scores with its own tail, learning from its own decisions as a
    single model's layer does; a window is over when more than half of the members are, and its
    surprise is the members' median (over the limit exactly then). Thresholds are reported in the
    ensemble score's unit: each member's threshold over its prior threshold, the median of them;
    the burn is the members' median. ``decision.threshold`` does not apply to the members.

    The seasonal channel sees the raw values, the same for every member, and learns from its own
    decisions only; so one channel (the first member's) runs once, on the voted decisions. That
    decides exactly as one channel per member would: a window it flags is over in every member, so
    in the vote, and the median of ``max(surprise, s)`` is ``max(median, s)``."""

    def __init__(self, settings: AdaptiveSettings, priors: Sequence[Prior]) -> None:
        self.settings = settings
        self.members = [AdaptiveLayer(settings if j == 0 else replace(settings, seasonal=False), prior)
                        for j, prior in enumerate(priors)]
        self._units = [max(prior.threshold, UNIT_FLOOR) for prior in priors]

    @property
    def devices(self) -> dict[str, DeviceState]:
        """The devices seen (every member sees the same ones), with the first member's states."""
        return self.members[0].devices

    def decide_many(self, device_id: str, scores: np.ndarray, ends: np.ndarray,
                    values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`AdaptiveLayer.decide_many`, on ``scores (windows, members)``: the graph's ``member_scores``."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.members):
            raise ValueError(f"an ensemble of {len(self.members)} decides member scores (windows, {len(self.members)}), "
                             f"got shape {scores.shape}")
        decided = [layer.decide_many(device_id, scores[:, j], ends) for j, layer in enumerate(self.members)]
        over = np.count_nonzero(np.array([d[0] for d in decided]), axis=0) > len(self.members) // 2
        surprise = _middle([d[1] for d in decided])
        thresholds = _middle([d[2] / unit for d, unit in zip(decided, self._units, strict=True)])
        if values is not None:
            self.members[0].decide_seasonal(device_id, values, ends, over, surprise)
        return over, surprise, thresholds

    def threshold(self, device_id: str) -> float:
        return float(_middle([layer.threshold(device_id) / unit for layer, unit in zip(self.members, self._units, strict=True)]))

    def warming(self, device_id: str) -> bool:
        return any(layer.warming(device_id) for layer in self.members)

    def burn(self, device_id: str) -> float:
        return float(_middle([layer.burn(device_id) for layer in self.members]))

    def rebaseline(self, device_id: str) -> None:
        for layer in self.members:
            layer.rebaseline(device_id)

    def forget(self, device_id: str) -> None:
        for layer in self.members:
            layer.forget(device_id)

    def restore(self, rows: Mapping[str, Mapping[str, object]]) -> int:
        """Devices' states from stored rows ``{"members": [row, ...]}`` (:meth:`take_changes`)."""
        taken = 0
        for device_id, row in rows.items():
            parts = row.get("members")
            if not isinstance(parts, list) or len(parts) != len(self.members):
                log.warning("adaptive_state_skipped device_id=%s error=not the rows of %d members", device_id, len(self.members))
                continue
            if all([layer.restore({device_id: part}) for layer, part in zip(self.members, parts, strict=True)]):
                taken += 1
            else:  # every member or none: a member without the device would warm up alone
                for layer in self.members:
                    layer.devices.pop(device_id, None)
        return taken

    def take_changes(self) -> tuple[dict[str, dict[str, object]], set[str]]:
        """One row per device changed in any member (all members' states), and the ids forgotten."""
        changed = set().union(*(layer.dirty for layer in self.members))
        gone = set().union(*(layer.gone for layer in self.members))
        for layer in self.members:
            layer.dirty, layer.gone = set(), set()
        rows: dict[str, dict[str, object]] = {d: {"members": [layer.devices[d].as_row() for layer in self.members]}
                                              for d in changed if all(d in layer.devices for layer in self.members)}
        return rows, gone

    def unsaved(self, rows: Mapping[str, object], gone: set[str]) -> None:
        for layer in self.members:
            layer.unsaved(rows, gone)


def layer_for(settings: AdaptiveSettings, manifest: ModelManifest, threshold: float | None = None) -> AdaptiveLayer | EnsembleLayer:
    """The layer that decides a model's windows: an ensemble's (manifest ``members``) or one model's
    (``threshold``, the config's ``decision.threshold``, overrides the manifest's)."""
    if manifest.members is not None:
        return EnsembleLayer(settings, [Prior.from_calibration(m.threshold, m.calibration.params) for m in manifest.members])
    return AdaptiveLayer(settings, Prior.from_manifest(manifest, threshold))

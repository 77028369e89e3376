"""Deciding: score against a threshold, k-of-n debounce per device, and the anomaly event.

Pure logic: no threads, no wall clock (``detected_at`` comes from an injected clock). A window
fires when its own score is above the device's threshold and at least ``k`` of the device's
last ``n`` windows (this one included) were above it; every firing window is one event, whose
``event_id`` is derived from device, window end and model hash, so a re-scored window gives
the same id. :meth:`Decider.decide_many` decides a device's run of windows in whole-array passes
and agrees with :meth:`Decider.decide` window by window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge.contract import AnomalyEvent, ModelManifest, SensorFault


@dataclass(frozen=True)
class Verdict:
    fire: bool
    over: bool        # this window's score is above the threshold
    threshold: float


class Decider:
    """k-of-n debounce per device over ``score > threshold``."""

    def __init__(self, threshold: float, *, k: int = 1, n: int = 1, device_thresholds: Mapping[str, float] | None = None) -> None:
        if not 1 <= k <= n:
            raise ValueError(f"k-of-n debounce needs 1 <= k <= n, got k={k} n={n}")
        self.threshold = threshold
        self.k = k
        self.n = n
        self.device_thresholds = dict(device_thresholds or {})
        self._history: dict[str, deque[bool]] = {}
        self._segment: dict[str, int] = {}

    def threshold_for(self, device_id: str) -> float:
        return self.device_thresholds.get(device_id, self.threshold)

    def decide(self, device_id: str, score: float, segment: int = 0) -> Verdict:
        """Record one window's score for ``device_id`` (in window order) and say whether it fires.

        A window of a new ``segment`` (the device's windows restarted after a gap) starts the
        debounce history afresh. The agent decides whole arrays (:meth:`decide_many`); this
        one-window form is the reference the tests hold it to."""
        threshold = self.threshold_for(device_id)
        over = score > threshold
        history = self._history.get(device_id)
        if history is None or self._segment.get(device_id, segment) != segment:
            history = self._history[device_id] = deque(maxlen=self.n)
        self._segment[device_id] = segment
        history.append(over)
        return Verdict(fire=over and sum(history) >= self.k, over=over, threshold=threshold)

    def decide_many(self, device_id: str, scores: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """:meth:`decide` for consecutive windows of ``device_id`` (in window order): returns
        ``(fire, over, threshold)``, two boolean arrays like ``scores``."""
        threshold = self.threshold_for(device_id)
        over = scores > threshold
        return self.debounce(device_id, over, segments), over, threshold

    def debounce(self, device_id: str, over: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """k-of-n over consecutive windows of ``device_id`` whose ``over`` was decided elsewhere
        (:class:`edge.adaptive.AdaptiveLayer`): which of them fire. The k-of-n count is a moving
        sum over the device's history followed by these windows, one per segment."""
        if not len(over):
            return over
        n = self.n
        cuts = [0, *(np.flatnonzero(segments[1:] != segments[:-1]) + 1).tolist(), len(over)]
        fire = over.copy() if self.k == 1 else np.zeros_like(over)
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            segment = int(segments[lo])
            history = self._history.get(device_id)
            if history is None or self._segment.get(device_id, segment) != segment:
                history = self._history[device_id] = deque(maxlen=n)
            self._segment[device_id] = segment
            part = over[lo:hi]
            if self.k > 1:  # k == 1: a window over the threshold always counts itself
                before = np.fromiter(history, dtype=np.int64, count=len(history))
                counts = np.concatenate(((0,), np.cumsum(np.concatenate((before, part)))))
                ends = np.arange(len(before) + 1, len(before) + len(part) + 1)
                fire[lo:hi] = part & (counts[ends] - counts[np.maximum(ends - n, 0)] >= self.k)
            history.extend(part[-n:].tolist())
        return fire

    def reset(self, device_id: str) -> None:
        """Forget a device's history (its windows restarted after a gap)."""
        self._history.pop(device_id, None)
        self._segment.pop(device_id, None)


def contributions(channel_scores: Sequence[float], channels: Sequence[str]) -> dict[str, float]:
    """Channel name to share of the score, summing to 1 (equal shares if the model gave none)."""
    values = [max(float(v), 0.0) if math.isfinite(float(v)) else 0.0 for v in channel_scores]
    total = sum(values)
    if total <= 0:
        return {c: 1.0 / len(channels) for c in channels}
    return {c: v / total for c, v in zip(channels, values, strict=True)}


def build_event(*, device_id: str, window_start: float, window_end: float, score: float, threshold: float,
                channel_scores: Sequence[float], manifest: ModelManifest, agent_id: str,
                clock: Callable[[], float], fault: SensorFault | None = None) -> AnomalyEvent:
    """The :class:`AnomalyEvent` for one firing window; with ``fault``, the ``sensor_fault`` event of a
    window that failed a sensor health check (its channel scores: equal shares of the fault's channels)."""
    if fault is not None:
        channel_scores = [1.0 if c in fault.channels else 0.0 for c in manifest.channel_names]
    return AnomalyEvent(
        device_id=device_id,
        agent_id=agent_id,
        window_start=window_start,
        window_end=window_end,
        score=float(score),
        threshold=float(threshold),
        channel_scores=contributions(channel_scores, manifest.channel_names),
        model_name=manifest.name,
        model_version=manifest.version,
        model_sha256=manifest.sha256,
        detected_at=clock(),
        kind="process" if fault is None else "sensor_fault",
        fault=fault,
    )

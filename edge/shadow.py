"""Shadow scoring: a candidate model scores the live model's windows before it is trusted.

While a trial runs, every batch the live model scores is scored by the candidate too; its
scores decide nothing. The trial ends healthy when it has seen ``min_windows`` windows over at
least ``min_seconds``, and rejected at once when a check fails:

- every candidate score is finite;
- the candidate's alert rate (scores above its own threshold) is at most
  ``max(rate_factor * live rate, rate_factor * manifest expected rate, rate_floor)``;
- the candidate's median inference time per batch is at most ``latency_factor`` times the live one's.

When the candidate's manifest carries the backtest's signed prediction (``expected_alerts``),
its live window rate (alerts / windows, as above) must also stay inside it, judged first:

- not above ``max(window_rate.p95 * prediction_tolerance, baseline_floor)`` (``prediction_high``;
  the floor, because a replay on which the candidate never alerted predicts a rate of 0);
- not above ``max_ratio * max(baseline_window_rate, baseline_floor)`` (``baseline_ratio``): the
  floor stands for a production model that (almost) never crossed its threshold on the replay, so a
  zero baseline does not reject every candidate that alerts once;
- not below ``window_rate.p05 / prediction_tolerance`` (``prediction_low``, too few alerts).

Each is judged on the rate's Wilson score interval at :data:`SIGMAS` standard deviations, not on
the point rate: the trial rejects only when the whole interval is outside the limit, so a short
trial seldom rejects on noise (a 3-sigma one-sided test is wrong about 1 in 740 times per check
under the binomial model). Overlapping windows share readings and their alerts
come in runs, so the interval counts ``windows * stride / window_length`` independent trials,
not ``windows``. The too-few check only bites once enough windows are seen for zero alerts to be
unlikely: about ``SIGMAS**2 * prediction_tolerance / p05`` effective windows; before that (and
when ``p05`` is 0) it passes. The two checks from above also need :data:`MIN_ALERTS_ABOVE`
independent alerts (alerts / overlap): at a handful of alerts the Wilson interval is too narrow (one
alert in ten windows is 1 % likely at a rate of 0.001, not 1 in 740), and one burst of a good
candidate on a live fault must not reject it.

Pure logic with an injected clock; called on the agent's worker thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge.contract import ExpectedAlerts, ModelManifest

Verdict = Literal["running", "healthy", "rejected"]
RejectReason = Literal["prediction_high", "prediction_low", "baseline_ratio", "rate", "latency", "non_finite",
                       "inference_failed", "superseded"]
REJECT_REASONS: tuple[RejectReason, ...] = ("prediction_high", "prediction_low", "baseline_ratio", "rate", "latency",
                                            "non_finite", "inference_failed", "superseded")
"""Why a candidate was rejected: the reason label of ``edgewatch_agent_model_rejections_total``."""

SIGMAS = 3.0
MIN_ALERTS_ABOVE = 3.0  # independent alerts (alerts / overlap) before a trial is judged above a signed limit


@dataclass(frozen=True)
class ShadowPolicy:
    min_windows: int = 200
    min_seconds: float = 10.0
    rate_factor: float = 3.0
    rate_floor: float = 0.02
    latency_factor: float = 5.0
    prediction_tolerance: float = 2.0  # the signed interval widened by this factor both ways
    baseline_floor: float = 0.001      # the smallest production window rate the baseline ratio is taken of


def expected_rate(manifest: ModelManifest) -> float:
    """The alert rate the model's calibration expects on normal data (0 when it does not say)."""
    value = manifest.calibration.params.get("expected_anomaly_rate", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def wilson_interval(rate: float, trials: float, sigmas: float = SIGMAS) -> tuple[float, float]:
    """The Wilson score interval of a binomial share ``rate`` seen over ``trials`` (may be
    fractional: effective trials); ``(0, 1)`` when nothing was seen."""
    if trials <= 0:
        return 0.0, 1.0
    z2 = sigmas * sigmas
    denom = 1 + z2 / trials
    centre = (rate + z2 / (2 * trials)) / denom
    half = sigmas * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials)) / denom
    low = 0.0 if rate <= 0 else max(0.0, centre - half)  # exactly 0 for no alerts, not a rounding error above it
    return low, min(1.0, centre + half)


@dataclass
class ShadowTrial:
    """One candidate's trial against the live model."""

    candidate_threshold: float
    candidate_expected_rate: float
    policy: ShadowPolicy = field(default_factory=ShadowPolicy)
    clock: Callable[[], float] = time.monotonic
    windows: int = 0
    candidate_alerts: int = 0
    live_alerts: int = 0
    live_seconds: list[float] = field(default_factory=list)
    candidate_seconds: list[float] = field(default_factory=list)
    started: float = field(default=float("nan"))
    verdict: Verdict = "running"
    reason: str = ""
    label: RejectReason | None = None  # set with a rejection
    prediction: ExpectedAlerts | None = None  # the candidate manifest's signed prediction
    overlap: float = 1.0  # window_length / stride: windows that share each reading

    @classmethod
    def of(cls, candidate: ModelManifest, policy: ShadowPolicy, *, clock: Callable[[], float]) -> ShadowTrial:
        """The trial of ``candidate``: its threshold, calibration and signed prediction."""
        return cls(candidate.threshold, expected_rate(candidate), policy, clock=clock,
                   prediction=candidate.expected_alerts, overlap=candidate.window_length / candidate.stride)

    def observe(self, live_scores: np.ndarray, live_threshold: float, live_s: float,
                candidate_scores: np.ndarray, candidate_s: float) -> Verdict:
        """Account one batch scored by both models; returns the verdict so far."""
        if self.verdict != "running":
            return self.verdict
        if math.isnan(self.started):
            self.started = self.clock()
        if not np.all(np.isfinite(candidate_scores)):
            return self.reject("non_finite", f"{int(np.sum(~np.isfinite(candidate_scores)))} non-finite scores")
        self.windows += len(candidate_scores)
        self.candidate_alerts += int(np.sum(candidate_scores > self.candidate_threshold))
        self.live_alerts += int(np.sum(live_scores > live_threshold))
        self.live_seconds.append(live_s)
        self.candidate_seconds.append(candidate_s)
        if self.windows < self.policy.min_windows or self.clock() - self.started < self.policy.min_seconds:
            return self.verdict
        return self._judge()

    def _judge(self) -> Verdict:
        p = self.policy
        live_rate = self.live_alerts / self.windows
        rate = self.candidate_alerts / self.windows
        if self.prediction is not None and (broken := self._against_prediction(self.prediction, rate)) is not None:
            return self.reject(*broken)
        bound = max(p.rate_factor * live_rate, p.rate_factor * self.candidate_expected_rate, p.rate_floor)
        if rate > bound:
            return self.reject("rate", f"alert rate {rate:.4f} above {bound:.4f} (live {live_rate:.4f})")
        live_ms = float(np.median(self.live_seconds))
        cand_ms = float(np.median(self.candidate_seconds))
        if cand_ms > p.latency_factor * live_ms and cand_ms > 0.005:
            return self.reject("latency", f"median inference {cand_ms * 1e3:.2f} ms above {p.latency_factor}x live {live_ms * 1e3:.2f} ms")
        self.verdict = "healthy"
        within = "" if self.prediction is None else ", within the signed prediction"
        self.reason = (f"{self.windows} windows: alert rate {rate:.4f} (live {live_rate:.4f}){within}, "
                       f"median inference {cand_ms * 1e3:.2f} ms (live {live_ms * 1e3:.2f} ms)")
        return self.verdict

    def _against_prediction(self, e: ExpectedAlerts, rate: float) -> tuple[RejectReason, str] | None:
        """Which side of the signed prediction ``rate`` leaves, beyond its Wilson interval, or None."""
        tol = self.policy.prediction_tolerance
        low, high = wilson_interval(rate, self.windows / max(self.overlap, 1.0))
        seen = f"alert rate {rate:.4f} ({SIGMAS:g}-sigma interval {low:.4f}-{high:.4f} over {self.windows} windows)"
        upper = max(e.window_rate["p95"] * tol, self.policy.baseline_floor)
        enough = self.candidate_alerts / max(self.overlap, 1.0) >= MIN_ALERTS_ABOVE  # to say "too many" at all
        if enough and low > upper:
            return "prediction_high", (f"{seen} above the signed prediction's {upper:.4f} "
                                       f"(p95 {e.window_rate['p95']:.4f} x tolerance {tol:g})")
        if e.baseline_window_rate is not None:
            base = max(e.baseline_window_rate, self.policy.baseline_floor)
            floored = "" if base == e.baseline_window_rate else f", floored from {e.baseline_window_rate:.4f}"
            if enough and low > e.max_ratio * base:
                return "baseline_ratio", (f"{seen} above the signed prediction's {e.max_ratio * base:.4f} "
                                          f"(max_ratio {e.max_ratio:g} x production's {base:.4f}{floored})")
        lower = e.window_rate["p05"] / tol
        if high < lower:
            return "prediction_low", (f"{seen} below the signed prediction's {lower:.4f} "
                                      f"(p05 {e.window_rate['p05']:.4f} / tolerance {tol:g}): too few alerts")
        return None

    def reject(self, label: RejectReason, reason: str) -> Verdict:
        """End the trial rejected (also used by the caller when the candidate cannot score)."""
        self.verdict = "rejected"
        self.label = label
        self.reason = reason
        return self.verdict

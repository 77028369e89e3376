"""Shadow scoring: a candidate model scores the live model's windows before it is trusted.

While a trial runs, every batch the live model scores is scored by the candidate too; its
scores decide nothing. The trial ends healthy when it has seen ``min_windows`` windows over at
least ``min_seconds``, and rejected at once when a check fails:

- every candidate score is finite;
- the candidate's alert rate (scores above its own threshold) is at most
  ``max(rate_factor * live rate, rate_factor * manifest expected rate, rate_floor)``;
- the candidate's median inference time per batch is at most ``latency_factor`` times the live one's.

Pure logic with an injected clock; called on the agent's worker thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge.contract import ModelManifest

Verdict = Literal["running", "healthy", "rejected"]


@dataclass(frozen=True)
class ShadowPolicy:
    min_windows: int = 200
    min_seconds: float = 10.0
    rate_factor: float = 3.0
    rate_floor: float = 0.02
    latency_factor: float = 5.0


def expected_rate(manifest: ModelManifest) -> float:
    """The alert rate the model's calibration expects on normal data (0 when it does not say)."""
    value = manifest.calibration.params.get("expected_anomaly_rate", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


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

    def observe(self, live_scores: np.ndarray, live_threshold: float, live_s: float,
                candidate_scores: np.ndarray, candidate_s: float) -> Verdict:
        """Account one batch scored by both models; returns the verdict so far."""
        if self.verdict != "running":
            return self.verdict
        if math.isnan(self.started):
            self.started = self.clock()
        if not np.all(np.isfinite(candidate_scores)):
            return self._reject(f"{int(np.sum(~np.isfinite(candidate_scores)))} non-finite scores")
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
        bound = max(p.rate_factor * live_rate, p.rate_factor * self.candidate_expected_rate, p.rate_floor)
        if rate > bound:
            return self._reject(f"alert rate {rate:.4f} above {bound:.4f} (live {live_rate:.4f})")
        live_ms = float(np.median(self.live_seconds))
        cand_ms = float(np.median(self.candidate_seconds))
        if cand_ms > p.latency_factor * live_ms and cand_ms > 0.005:
            return self._reject(f"median inference {cand_ms * 1e3:.2f} ms above {p.latency_factor}x live {live_ms * 1e3:.2f} ms")
        self.verdict = "healthy"
        self.reason = (f"{self.windows} windows: alert rate {rate:.4f} (live {live_rate:.4f}), "
                       f"median inference {cand_ms * 1e3:.2f} ms (live {live_ms * 1e3:.2f} ms)")
        return self.verdict

    def _reject(self, reason: str) -> Verdict:
        self.verdict = "rejected"
        self.reason = reason
        return self.verdict

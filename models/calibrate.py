"""Thresholds from training scores only: a quantile with a margin, or peaks over threshold
(a generalised Pareto tail fitted by the method of moments). The parameters written to the
manifest include what a drift monitor needs later: the expected anomaly rate and a few
training-score quantiles. :func:`channel_ranges` learns the per-channel range the agent's
sensor range check uses (manifest ``channel_ranges``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.contract import Calibration
from models.config import TrainConfig


def gpd_fit_moments(excesses: np.ndarray) -> tuple[float, float]:
    """Shape ``xi`` and scale ``sigma`` of a generalised Pareto distribution by the method of
    moments (valid for xi < 1/2): xi = (1 - m^2/v) / 2, sigma = m (m^2/v + 1) / 2."""
    m = float(np.mean(excesses))
    v = float(np.var(excesses))
    if v <= 0 or m <= 0:
        return 0.0, max(m, 1e-12)
    ratio = m * m / v
    return 0.5 * (1.0 - ratio), 0.5 * m * (ratio + 1.0)


def pot_threshold(scores: np.ndarray, *, level: float, risk: float) -> tuple[float, dict[str, float]]:
    """Score exceeded with probability ``risk`` under a GPD fitted to excesses over the ``level`` quantile."""
    t = float(np.quantile(scores, level))
    excess = scores[scores > t] - t
    if len(excess) < 5:
        return float(np.quantile(scores, 1.0 - risk)), {"initial_threshold": t, "xi": 0.0, "sigma": 0.0, "n_excess": float(len(excess))}
    xi, sigma = gpd_fit_moments(excess)
    ratio = risk * len(scores) / len(excess)
    if abs(xi) < 1e-9:
        value = t - sigma * np.log(ratio)
    else:
        value = t + sigma / xi * (ratio ** (-xi) - 1.0)
    return float(value), {"initial_threshold": t, "xi": xi, "sigma": sigma, "n_excess": float(len(excess))}


def calibrate(scores: np.ndarray, cfg: TrainConfig) -> tuple[float, Calibration]:
    """Threshold and its :class:`Calibration` record from training ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("calibration needs a non-empty set of finite training scores")
    params: dict[str, float | str] = {"margin": cfg.margin}
    if cfg.calibration == "quantile":
        base = float(np.quantile(scores, cfg.quantile))
        params.update(quantile=cfg.quantile, expected_anomaly_rate=1.0 - cfg.quantile)
    else:
        base, fitted = pot_threshold(scores, level=cfg.pot_level, risk=cfg.risk)
        params.update(fitted, level=cfg.pot_level, risk=cfg.risk, expected_anomaly_rate=cfg.risk)
    threshold = base * cfg.margin
    for q in (50, 90, 99):
        params[f"train_p{q}"] = float(np.percentile(scores, q))
    params["train_max"] = float(scores.max())
    params["train_exceed_rate"] = float(np.mean(scores > threshold))
    params["n_train_scores"] = float(len(scores))
    return threshold, Calibration(method=cfg.calibration, params=params)


RANGE_MARGIN = 1.0
"""Each side of a learned channel range is widened by this many times the training span. The
range check is for readings no process makes (a sensor at a rail, disconnected, in the wrong
unit); the model must keep the process faults. Measured on the default model's training data
against 80 synthetic faults (:func:`edge.synth.random_faults`, 10 seeds): a margin of 0.1 x span
puts 29 process faults (spikes, drifts, noise) out of range, 0.5 x span 7, 1.0 x span none."""


def channel_ranges(segments: Sequence[np.ndarray], names: Sequence[str], margin: float = RANGE_MARGIN) -> dict[str, tuple[float, float]]:
    """Per channel ``(min - margin * span, max + margin * span)`` over the training rows
    (``segments`` of ``(n, channels)``); a constant channel's span counts as 1 so that min < max."""
    rows = np.concatenate([np.asarray(s, dtype=np.float64) for s in segments])
    lo, hi = np.nanmin(rows, axis=0), np.nanmax(rows, axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return {name: (float(a - margin * w), float(b + margin * w)) for name, a, b, w in zip(names, lo, hi, span, strict=True)}

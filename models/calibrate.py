"""Thresholds from training scores only: a quantile with a margin, or peaks over threshold
(a generalised Pareto tail fitted by the method of moments). The parameters written to the
manifest include what a drift monitor needs later: the expected anomaly rate and a few
training-score quantiles."""

from __future__ import annotations

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

"""Thresholds from training scores: quantile with margin, peaks over threshold (GPD by moments)."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibrate import calibrate, gpd_fit_moments, pot_threshold
from tests.models.conftest import tiny_config


def test_quantile_with_margin_and_drift_monitor_params() -> None:
    scores = np.random.default_rng(0).exponential(size=100_000)
    threshold, cal = calibrate(scores, tiny_config(calibration="quantile", quantile=0.99, margin=1.2))
    assert threshold == pytest.approx(np.quantile(scores, 0.99) * 1.2)
    assert cal.method == "quantile"
    p = cal.params
    assert p["expected_anomaly_rate"] == pytest.approx(0.01)
    assert p["train_p50"] == pytest.approx(np.log(2), rel=0.02) and p["train_p99"] == pytest.approx(np.log(100), rel=0.03)
    assert p["train_exceed_rate"] < 0.01


@pytest.mark.parametrize(("xi", "sigma"), [(0.1, 2.0), (-0.2, 1.0), (0.0, 0.5)])
def test_gpd_moments_recover_known_parameters(xi: float, sigma: float) -> None:
    u = np.random.default_rng(1).random(400_000)
    sample = sigma * -np.log(u) if xi == 0 else sigma / xi * (u ** -xi - 1)
    fit_xi, fit_sigma = gpd_fit_moments(sample)
    assert fit_xi == pytest.approx(xi, abs=0.03)
    assert fit_sigma == pytest.approx(sigma, rel=0.05)


def test_pot_threshold_hits_the_target_risk_beyond_the_sample() -> None:
    rng = np.random.default_rng(2)
    train, fresh = rng.exponential(size=50_000), rng.exponential(size=2_000_000)
    threshold, params = pot_threshold(train, level=0.98, risk=1e-4)
    assert threshold > np.quantile(train, 0.98) and params["n_excess"] == pytest.approx(1000, abs=2)
    assert np.mean(fresh > threshold) == pytest.approx(1e-4, rel=0.5)
    assert threshold == pytest.approx(np.log(1e4), rel=0.08)  # the exponential's exact 1e-4 quantile


def test_pot_calibration_record() -> None:
    scores = np.random.default_rng(3).gamma(2.0, size=20_000)
    threshold, cal = calibrate(scores, tiny_config(calibration="pot", pot_level=0.95, risk=1e-3, margin=1.0))
    assert cal.method == "pot" and cal.params["expected_anomaly_rate"] == pytest.approx(1e-3)
    assert {"xi", "sigma", "initial_threshold", "train_p90"} <= set(cal.params)
    assert threshold > cal.params["initial_threshold"]  # type: ignore[operator]


def test_calibration_refuses_non_finite_scores() -> None:
    with pytest.raises(ValueError):
        calibrate(np.array([1.0, np.nan]), tiny_config())

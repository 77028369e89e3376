"""The shadow trial judged against the candidate's signed prediction (``expected_alerts``): too
many alerts, too few, above max_ratio x production, and the binomial margin that keeps a short
trial from rejecting on noise. Pure logic with a fake clock; the real-broker case is in
tests/cloud/test_model_updates.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge.config import load_config
from edge.contract import ConfigError, ExpectedAlerts
from edge.detector import load_manifest
from edge.metrics import AgentMetrics
from edge.shadow import REJECT_REASONS, ShadowPolicy, ShadowTrial, Verdict, wilson_interval
from tests.edge.agent_util import TINY_MODEL

POLICY = ShadowPolicy(min_windows=100, min_seconds=0.0, rate_floor=0.02)


def prediction(p05: float = 0.0, p50: float = 0.002, p95: float = 0.005, baseline: float | None = None,
               max_ratio: float = 2.0) -> ExpectedAlerts:
    return ExpectedAlerts(since=0.0, until=86400.0, devices=10, device_days=10.0,
                          alerts_per_device_day={"p05": 0.0, "p50": 1.0, "p95": 3.0},
                          window_rate={"p05": p05, "p50": p50, "p95": p95}, baseline_window_rate=baseline, max_ratio=max_ratio)


def run(windows: int, alerts: int, expected: ExpectedAlerts | None, *, overlap: float = 1.0, live_alerts: int = 0,
        policy: ShadowPolicy = POLICY) -> ShadowTrial:
    """Feed ``windows`` windows (``alerts`` of them above the candidate's threshold 1.0) in one batch."""
    trial = ShadowTrial(1.0, 0.001, policy, clock=lambda: 0.0, prediction=expected, overlap=overlap)
    cand = np.zeros(windows)
    cand[:alerts] = 2.0
    live = np.zeros(windows)
    live[:live_alerts] = 2.0
    trial.observe(live, 1.0, 0.001, cand, 0.001)
    return trial


def verdict(trial: ShadowTrial) -> tuple[Verdict, str | None]:
    return trial.verdict, trial.label


def test_no_prediction_keeps_the_old_gates() -> None:
    assert verdict(run(400, 4, None)) == ("healthy", None)
    trial = run(400, 40, None)  # 0.10 > max(3 x live 0, 3 x expected 0.001, floor 0.02)
    assert verdict(trial) == ("rejected", "rate") and "above 0.0200" in trial.reason
    assert verdict(run(400, 40, None, live_alerts=20)) == ("healthy", None)  # 3 x live 0.05 = 0.15


def test_within_the_prediction_is_healthy() -> None:
    trial = run(1000, 3, prediction(p05=0.001, p95=0.005, baseline=0.002))
    assert verdict(trial) == ("healthy", None) and "within the signed prediction" in trial.reason


def test_too_many_alerts() -> None:
    trial = run(1000, 60, prediction(p95=0.005))
    assert verdict(trial) == ("rejected", "prediction_high")
    assert trial.reason.startswith("alert rate 0.0600 (3-sigma interval 0.04")
    assert "above the signed prediction's 0.0100 (p95 0.0050 x tolerance 2)" in trial.reason
    # the signed check comes before the old rate gate, which this rate also breaks
    assert verdict(run(1000, 60, prediction(p95=0.005), policy=ShadowPolicy(min_windows=100, min_seconds=0,
                                                                             prediction_tolerance=20))) == ("rejected", "rate")


def test_too_few_alerts() -> None:
    trial = run(1000, 0, prediction(p05=0.05, p50=0.1, p95=0.2))
    assert verdict(trial) == ("rejected", "prediction_low")
    assert "below the signed prediction's 0.0250 (p05 0.0500 / tolerance 2): too few alerts" in trial.reason
    # p05 = 0: nothing is too few, however many windows
    assert verdict(run(5000, 0, prediction(p05=0.0))) == ("healthy", None)


def test_above_max_ratio_times_production() -> None:
    expected = prediction(p95=0.5, p50=0.2, baseline=0.004, max_ratio=2.0)
    trial = run(1000, 50, expected, live_alerts=100)  # inside p95 x 2, and the live model is loud too
    assert verdict(trial) == ("rejected", "baseline_ratio")
    assert "above the signed prediction's 0.0080 (max_ratio 2 x production's 0.0040)" in trial.reason
    assert verdict(run(1000, 5, expected, live_alerts=100)) == ("healthy", None)


def test_zero_baseline_is_floored() -> None:
    expected = prediction(baseline=0.0, max_ratio=2.0)
    assert verdict(run(1000, 1, expected)) == ("healthy", None)  # one alert does not reject
    trial = run(1000, 30, expected, live_alerts=300)
    assert verdict(trial) == ("rejected", "prediction_high")
    trial = run(1000, 30, prediction(p95=0.2, p50=0.1, baseline=0.0), live_alerts=300)
    assert verdict(trial) == ("rejected", "baseline_ratio") and "floored from 0.0000" in trial.reason


def test_a_prediction_of_no_alerts_is_floored() -> None:
    # a replay on which the candidate never alerted signs p95 = 0: a quiet candidate is healthy, not "above 0"
    silent = prediction(p05=0.0, p50=0.0, p95=0.0, baseline=0.0)
    assert verdict(run(400, 0, silent)) == ("healthy", None)
    assert verdict(run(4000, 4, silent)) == ("healthy", None)  # 0.001, at the floor
    assert verdict(run(4000, 80, silent)) == ("rejected", "prediction_high")
    # one burst (two overlapping windows) is not yet "too many", however short the trial
    short = ShadowPolicy(min_windows=10, min_seconds=0.0)
    assert verdict(run(40, 2, silent, overlap=4.0, live_alerts=20, policy=short)) == ("healthy", None)
    assert verdict(run(400, 12, silent, overlap=4.0)) == ("rejected", "prediction_high")


def test_margin_with_few_windows_does_not_reject() -> None:
    high = prediction(p95=0.005)  # allowed 0.01
    assert verdict(run(200, 4, high, overlap=4.0)) == ("healthy", None)  # 0.02, but 50 effective windows
    assert verdict(run(200, 4, high)) == ("healthy", None)  # 0.02 over 200 independent ones: not yet sure
    assert verdict(run(4000, 80, high)) == ("rejected", "prediction_high")  # 0.02 over 4,000: sure
    low = prediction(p05=0.01, p50=0.02, p95=0.05)  # too few below 0.005
    assert verdict(run(200, 0, low)) == ("healthy", None)  # zero alerts in 200 windows proves nothing at 0.005
    assert verdict(run(4000, 0, low)) == ("rejected", "prediction_low")
    assert verdict(run(4000, 0, low, overlap=4.0)) == ("healthy", None)  # but 1,000 overlapping ones do not


def test_wilson_interval() -> None:
    assert wilson_interval(0.0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0.0, 91)
    assert low == 0.0 and high == pytest.approx(0.09)  # z^2 / (n + z^2)
    low, high = wilson_interval(0.5, 10_000)
    assert low == pytest.approx(0.485, abs=1e-3) and high == pytest.approx(0.515, abs=1e-3)


def test_nonfinite_and_latency_are_labelled() -> None:
    trial = ShadowTrial(1.0, 0.0, POLICY, clock=lambda: 0.0, prediction=prediction())
    trial.observe(np.zeros(3), 1.0, 0.001, np.array([0.0, np.nan, 0.0]), 0.001)
    assert verdict(trial) == ("rejected", "non_finite")
    trial = ShadowTrial(1.0, 0.0, POLICY, clock=lambda: 0.0, prediction=prediction())
    trial.observe(np.zeros(200), 1.0, 0.001, np.zeros(200), 0.5)
    assert verdict(trial) == ("rejected", "latency")


def test_rejections_metric_has_every_reason_at_zero() -> None:
    metrics = AgentMetrics(CollectorRegistry())
    for reason in REJECT_REASONS:
        assert metrics.registry.get_sample_value("edgewatch_agent_model_rejections_total", {"reason": reason}) == 0.0


@pytest.mark.parametrize(("text", "key"), [("shadow_prediction_tolerance = 0.5", "updates.shadow_prediction_tolerance"),
                                           ("shadow_baseline_floor = 0", "updates.shadow_baseline_floor"),
                                           ("shadow_baseline_floor = 1.5", "updates.shadow_baseline_floor")])
def test_config_keys_validated(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[updates]\n{text}\n")
    with pytest.raises(ConfigError, match=key):
        load_config(path, env={})
    path.write_text("[updates]\nshadow_prediction_tolerance = 3.0\nshadow_baseline_floor = 0.01\n")
    u = load_config(path, env={}).updates
    assert (u.shadow_prediction_tolerance, u.shadow_baseline_floor) == (3.0, 0.01)


def test_trial_of_a_manifest_takes_its_prediction_and_overlap() -> None:
    m = dataclasses.replace(load_manifest(TINY_MODEL), expected_alerts=prediction())
    trial = ShadowTrial.of(m, POLICY, clock=lambda: 0.0)
    assert (trial.prediction, trial.overlap, trial.candidate_threshold) == (prediction(), 8.0, m.threshold)
    assert ShadowTrial.of(load_manifest(TINY_MODEL), POLICY, clock=lambda: 0.0).prediction is None

"""The adaptive layer (edge/adaptive.py): per-device thresholds that follow each device's normal,
never learn from flagged windows, warm up from the prior, absorb a lasting run, and decide the
same whatever the batching. Pure logic: seeded synthetic scores, no brokers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edge.adaptive import AdaptiveLayer, AdaptiveSettings, DeviceState, Prior, likelihood, run_openings
from edge.config import load_config
from edge.contract import ConfigError

SETTINGS = AdaptiveSettings()
PRIOR = Prior(threshold=30.0, quantile=11.0, excess=3.8)  # the default model's: train_p90 11.1, p99 19.9


def normal_scores(n: int, *, level: float = 10.0, seed: int = 0, shape: float = 4.0) -> np.ndarray:
    """Gamma-distributed window scores around ``level``: a reconstruction error's shape."""
    return np.random.default_rng(seed).gamma(shape, level / shape, n)


def times(n: int, start: float = 0.0, period: float = 8.0) -> np.ndarray:
    return start + period * np.arange(n, dtype=np.float64)


def test_each_device_gets_its_own_threshold_at_the_target_rate() -> None:
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    quiet, loud = normal_scores(20_000, level=5.0, seed=1), normal_scores(20_000, level=25.0, seed=2)
    over_q, _, thr_q = layer.decide_many("quiet", quiet, times(len(quiet)))
    over_l, _, thr_l = layer.decide_many("loud", loud, times(len(loud)))
    # after warm-up, the false-alarm rate of each sits near the target, whatever its level
    for over in (over_q, over_l):
        assert over[1000:].mean() < 5 * SETTINGS.target_rate
    assert thr_l[-1] > 3 * thr_q[-1]
    assert layer.threshold("loud") == pytest.approx(thr_l[-1], rel=0.02)  # after learning the last window
    # a fixed threshold (the prior's) storms on the loud device and is blind on the quiet one
    assert (loud > PRIOR.threshold).mean() > 0.1 and (quiet > PRIOR.threshold).mean() == 0


def test_a_fault_that_lasts_keeps_firing_and_never_teaches_the_estimate() -> None:
    settings = replace(SETTINGS, absorb_after_s=0.0)  # never absorbed: only the protection is at work
    layer = AdaptiveLayer(settings, PRIOR)
    layer.decide_many("d", normal_scores(2000, seed=3), times(2000))
    before = (layer.devices["d"].quantile, layer.devices["d"].excess)
    fault = normal_scores(5000, level=60.0, seed=4, shape=50.0)
    over, surprise, _ = layer.decide_many("d", fault, times(5000, start=16_000))
    assert over.mean() > 0.95 and over[-500:].all()
    assert (layer.devices["d"].quantile, layer.devices["d"].excess) == pytest.approx(before, rel=0.02)
    assert np.all(likelihood(surprise[over]) > 1 - settings.target_rate)


def test_a_run_longer_than_absorb_after_s_becomes_the_new_normal() -> None:
    settings = replace(SETTINGS, absorb_after_s=3600.0)
    layer = AdaptiveLayer(settings, PRIOR)
    layer.decide_many("d", normal_scores(1000, seed=5), times(1000))
    shifted = normal_scores(2000, level=60.0, seed=6, shape=50.0)
    over, _, _ = layer.decide_many("d", shifted, times(2000, start=8000.0, period=8.0))
    fired_for_s = 8.0 * np.flatnonzero(~over)[0]
    # it fired until its recent over-threshold share had been above 5 % for an hour (that share
    # passes 5 % after 74 windows of a half-life of 1000), then the shift was its new normal
    assert 3600.0 + 8.0 * 70 <= fired_for_s <= 3600.0 + 8.0 * 80
    assert over[len(over) // 2:].mean() < 0.01


def test_cold_start_fires_only_far_above_the_prior_then_uses_its_own_estimate() -> None:
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    # an unfamiliar operating point: normal windows at 35-60, over the prior's threshold of 30
    unfamiliar = 35.0 + 25.0 * np.random.default_rng(7).random(SETTINGS.warmup_windows + 2000)
    over, _, thresholds = layer.decide_many("new", unfamiliar, times(len(unfamiliar)))
    assert not over.any()
    assert thresholds[0] == pytest.approx(PRIOR.threshold * SETTINGS.warmup_factor)
    assert layer.warming("new") is False and thresholds[-1] > 60.0
    # a fault far above it still fires during warm-up
    layer2 = AdaptiveLayer(SETTINGS, PRIOR)
    over2, _, _ = layer2.decide_many("new", np.array([40.0, 45.0, 300.0, 42.0]), times(4))
    assert over2.tolist() == [False, False, True, False]


def test_decisions_do_not_depend_on_batching() -> None:
    scores = np.concatenate([normal_scores(1500, seed=8), normal_scores(200, level=80.0, seed=9), normal_scores(1500, seed=10)])
    ends = times(len(scores))
    whole = AdaptiveLayer(SETTINGS, PRIOR).decide_many("d", scores, ends)
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    rng = np.random.default_rng(11)
    cuts = np.sort(rng.choice(np.arange(1, len(scores)), 60, replace=False))
    parts = [layer.decide_many("d", scores[a:b], ends[a:b]) for a, b in zip([0, *cuts], [*cuts, len(scores)], strict=True)]
    for k in range(3):
        np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]))


def test_rebaseline_forget_and_a_new_prior_touch_what_they_say() -> None:
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    for device in ("a", "b"):
        layer.decide_many(device, normal_scores(1000, seed=12), times(1000))
    layer.rebaseline("a")
    assert layer.warming("a") and not layer.warming("b")
    layer.forget("b")
    assert "b" not in layer.devices
    layer.decide_many("c", normal_scores(1000, seed=13), times(1000))
    layer.reset_prior(replace(PRIOR, threshold=50.0))
    assert layer.devices == {} and layer.threshold("c") == pytest.approx(100.0)


def test_state_round_trips_through_a_row() -> None:
    settings = replace(SETTINGS, smooth_windows=3)
    layer = AdaptiveLayer(settings, PRIOR)
    scores = normal_scores(1200, seed=14)
    layer.decide_many("d", scores[:700], times(700))
    row = layer.devices["d"].as_row()
    copy = AdaptiveLayer(settings, PRIOR)
    copy.devices["d"] = DeviceState.from_row(row, settings.smooth_windows)
    a = layer.decide_many("d", scores[700:], times(500, start=5600))
    b = copy.decide_many("d", scores[700:], times(500, start=5600))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="quantile"):
        DeviceState.from_row({**row, "quantile": "high"}, 1)


def test_prior_from_calibration_and_its_fallback() -> None:
    prior = Prior.from_calibration(33.0, {"train_p90": 11.0, "train_p99": 20.0})
    assert prior.quantile == 11.0 and prior.excess == pytest.approx(9.0 / math.log(10.0))
    fallback = Prior.from_calibration(33.0, {"margin": 1.1})
    layer = AdaptiveLayer(replace(SETTINGS, warmup_factor=1.0), fallback)
    assert layer.threshold("x") == pytest.approx(33.0)


def test_run_openings_marks_the_first_window_of_each_run() -> None:
    fire = np.zeros(60, dtype=bool)
    fire[[3, 4, 5, 10, 30, 47]] = True
    assert np.flatnonzero(run_openings(fire, 5)).tolist() == [3, 30, 47]
    assert np.flatnonzero(run_openings(fire, 0)).tolist() == [3, 4, 5, 10, 30, 47]


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("target_rate", "0.5", "must be in (0, 1 - tail_level)"),
    ("warmup_windows", "3", "must be >= 10"),
    ("warmup_factor", "0.5", "must be >= 1"),
    ("absorb_after_s", "-1", "must be >= 0"),
])
def test_bad_adaptive_config_fails_at_start_naming_the_key(key: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"'adaptive\.{key}' = .* {rule.split(' (')[0]}"):
        load_config(None, env={f"EDGEWATCH_ADAPTIVE__{key.upper()}": value})


def test_a_device_far_from_the_prior_storms_in_warm_up_then_settles() -> None:
    """15 % of its normal windows are over the warm-up threshold: they fire and count at it, so the
    tail it learns is too low at first; windows over the threshold never teach, so it settles
    slowly, from the quiet windows between its alarms (documented in docs/detection.md)."""
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    loud = normal_scores(20_000, level=40.0, seed=15)
    over, _, _ = layer.decide_many("loud", loud, times(len(loud)))
    assert over[:SETTINGS.warmup_windows].mean() > 0.05
    assert over[-10_000:].mean() < 10 * SETTINGS.target_rate

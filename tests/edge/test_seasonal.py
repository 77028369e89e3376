"""The seasonal channel (edge/seasonal.py) inside the adaptive layer: a daily profile of each
device's raw values catches a day that departs from the others where the model's score sees
nothing; the gate keeps it shut on streams without a daily pattern and off at fast rates; its
state round-trips through the device's row and decides the same whatever the batching.
Pure logic: seeded synthetic streams, no brokers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cloud.evaluate.agent_path import agent_config, agent_decisions
from edge.adaptive import AdaptiveLayer, AdaptiveSettings, DeviceState, Prior
from edge.config import load_config
from edge.contract import ConfigError
from edge.seasonal import MAX_PERIOD, OFF, TIMING_WINDOWS, SeasonalState, daily_period

SETTINGS = AdaptiveSettings()
PRIOR = Prior(threshold=30.0, quantile=11.0, excess=3.8)
DAY = 288                      # 5-minute rows
FLAT = slice(5 * DAY + 72, 5 * DAY + 216)  # day 5, 06:00 to 18:00: the value stays where it was at 06:00


def daily(days: int, *, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """End times (5-minute steps) and rows: a daily sine plus noise on channel 0, noise on the others."""
    rng = np.random.default_rng(seed)
    n = days * DAY
    ends = 1.7e9 + 300.0 * np.arange(n)
    rows = rng.normal(0.0, 0.3, (n, channels)) + 20.0
    rows[:, 0] += 5.0 * np.sin(2 * np.pi * np.arange(n) / DAY)
    return ends, rows


def flat_middle(rows: np.ndarray) -> np.ndarray:
    out = rows.copy()
    out[FLAT, 0] = out[FLAT.start, 0]
    return out


def noise_scores(n: int, seed: int = 1) -> np.ndarray:
    """What a model that sees one window at a time gives such a stream: its usual scores."""
    return np.random.default_rng(seed).gamma(4.0, 2.5, n)


def blind_scores(n: int) -> np.ndarray:
    """A model that sees nothing at all: one score throughout."""
    return np.full(n, 10.0)


def test_a_flat_day_the_score_misses_fires_on_the_seasonal_channel() -> None:
    ends, rows = daily(7)
    rows = flat_middle(rows)
    scores = blind_scores(len(ends))
    with_values = AdaptiveLayer(SETTINGS, PRIOR).decide_many("d", scores, ends, rows)
    without = AdaptiveLayer(SETTINGS, PRIOR).decide_many("d", scores, ends)
    off = AdaptiveLayer(replace(SETTINGS, seasonal=False), PRIOR).decide_many("d", scores, ends, rows)
    assert not without[0][FLAT].any()                          # the score alone misses it
    assert with_values[0][FLAT].mean() > 0.3                   # the profile does not
    assert not with_values[0][:FLAT.start].any()            # and is quiet before it
    assert np.all(with_values[1] >= without[1])                # surprise: the larger of the two
    np.testing.assert_array_equal(with_values[2], without[2])  # threshold: the model's
    for k in range(3):                                         # adaptive.seasonal = false: the old decisions
        np.testing.assert_array_equal(off[k], without[k])


def test_only_channels_with_a_daily_pattern_score() -> None:
    ends, rows = daily(7, channels=3)
    rows[:, 2] = 7.0  # a constant channel
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    over, _, _ = layer.decide_many("d", noise_scores(len(ends)), ends, flat_middle(rows))
    state = layer.devices["d"].seasonal
    assert state is not None and state.period == DAY and state.open == [0]
    assert over[FLAT].mean() > 0.3


@pytest.mark.parametrize("shape", ["noise", "trend", "half-day"])
def test_a_stream_without_a_daily_pattern_keeps_the_gate_shut(shape: str) -> None:
    n = 4 * DAY
    ends = 300.0 * np.arange(n)
    t = np.arange(n, dtype=np.float64)
    values = {"noise": np.random.default_rng(3).normal(size=n), "trend": t / DAY + np.random.default_rng(4).normal(0, 0.05, n),
              "half-day": np.sin(4 * np.pi * t / DAY)}[shape]
    scores = noise_scores(n)
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    got = layer.decide_many("d", scores, ends, values[:, None])
    state = layer.devices["d"].seasonal
    assert state is not None and state.off and state.profile == [] and state.first == []
    want = AdaptiveLayer(SETTINGS, PRIOR).decide_many("d", scores, ends)
    for k in range(3):
        np.testing.assert_array_equal(got[k], want[k])


def test_at_1_hz_with_stride_8_the_channel_is_off() -> None:
    assert daily_period(8.0) == OFF and daily_period(86400 / MAX_PERIOD) == MAX_PERIOD and daily_period(86400 / 7) == OFF
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    ends = 8.0 * np.arange(3000)
    rows = np.sin(2 * np.pi * ends / 86400)[:, None]
    layer.decide_many("d", noise_scores(3000), ends, rows)
    state = layer.devices["d"].seasonal
    assert state is not None and state.off
    assert json.dumps(layer.devices["d"].as_row()["seasonal"]).count(",") < 20  # nothing kept


def test_state_round_trips_through_a_row() -> None:
    """At every stage (timing, learning its first two days, scoring), through JSON as the store keeps it."""
    ends, rows = daily(7)
    rows = flat_middle(rows)
    scores = noise_scores(len(ends))
    whole = AdaptiveLayer(SETTINGS, PRIOR).decide_many("d", scores, ends, rows)
    for cut in (TIMING_WINDOWS // 2, DAY + 5, 4 * DAY, FLAT.start + 3):
        layer = AdaptiveLayer(SETTINGS, PRIOR)
        head = layer.decide_many("d", scores[:cut], ends[:cut], rows[:cut])
        row = json.loads(json.dumps(layer.devices["d"].as_row(), allow_nan=True))
        copy = AdaptiveLayer(SETTINGS, PRIOR)
        copy.devices["d"] = DeviceState.from_row(row, SETTINGS.smooth_windows)
        tail = copy.decide_many("d", scores[cut:], ends[cut:], rows[cut:])
        for k in range(3):
            np.testing.assert_array_equal(whole[k], np.concatenate([head[k], tail[k]]))
    assert row["seasonal"]["tail"] is not None
    assert len(row["seasonal"]["profile"]) == DAY and row["seasonal"]["first"] == []
    with pytest.raises(ValueError, match="seasonal.scale"):
        DeviceState.from_row({**row, "seasonal": {**row["seasonal"], "scale": "wide"}}, 1)
    older = {k: v for k, v in row.items() if k != "seasonal"}  # a row saved before the channel
    assert DeviceState.from_row(older, 1).seasonal is None


def test_decisions_do_not_depend_on_batching() -> None:
    ends, rows = daily(7, channels=2)
    rows = flat_middle(rows)
    scores = noise_scores(len(ends))
    whole = AdaptiveLayer(SETTINGS, PRIOR).decide_many("d", scores, ends, rows)
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    cuts = np.sort(np.random.default_rng(11).choice(np.arange(1, len(ends)), 80, replace=False))
    parts = [layer.decide_many("d", scores[a:b], ends[a:b], rows[a:b]) for a, b in zip([0, *cuts], [*cuts, len(ends)], strict=True)]
    for k in range(3):
        np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]))


def test_forget_rebaseline_and_a_new_prior_clear_the_seasonal_state() -> None:
    ends, rows = daily(3)
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    for device in ("a", "b", "c"):
        layer.decide_many(device, noise_scores(len(ends)), ends, rows)
        assert isinstance(layer.devices[device].seasonal, SeasonalState) and layer.devices[device].seasonal_tail is not None
    layer.rebaseline("a")
    assert layer.devices["a"].seasonal is None and layer.devices["a"].seasonal_tail is None
    layer.forget("b")
    assert "b" not in layer.devices
    layer.reset_prior(PRIOR)
    assert layer.devices == {}


def test_a_model_with_other_channels_starts_the_channel_again() -> None:
    ends, rows = daily(3, channels=2)
    layer = AdaptiveLayer(SETTINGS, PRIOR)
    layer.decide_many("d", noise_scores(len(ends)), ends, rows)
    layer.decide_many("d", noise_scores(5), ends[:5] + 3 * 86400, rows[:5, :1])
    state = layer.devices["d"].seasonal
    assert state is not None and state.channels == 1 and state.period == 0 and layer.devices["d"].seasonal_tail is None


def test_the_benchmarks_pass_the_rows_to_the_agent_path() -> None:
    ends, rows = daily(7)
    config = agent_config()

    def fire(values: np.ndarray | None) -> np.ndarray:
        return agent_decisions(blind_scores(len(ends)), ends, start=100, window_length=16, threshold=30.0,
                               calibration={"train_p90": 11.0, "train_p99": 20.0}, config=config, values=values).fire

    assert fire(flat_middle(rows))[FLAT].any() and not fire(None)[FLAT].any()


@pytest.mark.parametrize(("value", "want"), [("false", False), ("true", True)])
def test_adaptive_seasonal_is_a_config_key(value: str, want: bool) -> None:
    assert load_config(None, env={"EDGEWATCH_ADAPTIVE__SEASONAL": value}).adaptive.seasonal is want


def test_a_bad_adaptive_seasonal_fails_at_start_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"adaptive\.seasonal"):
        load_config(None, env={"EDGEWATCH_ADAPTIVE__SEASONAL": "sometimes"})

"""Drift-invariant preprocessing knobs: ``window_transform`` (center, diff), ``level_weight`` and
``scale_floor``. Each changes what it should, is carried into the ONNX graph (the edge feeds raw
readings), and the exported graph equals torch for every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge.contract.errors import ConfigError
from edge.detector import OnnxDetector
from edge.synth import simulate
from models.data import make_windows
from models.export import write_artifact
from models.fit import fit
from models.preprocess import fit_preprocessor
from models.registry import family_names
from tests.models.conftest import WINDOW, tiny_config


def _windows(rows: np.ndarray, n: int = 8) -> np.ndarray:
    return np.ascontiguousarray(make_windows(rows, WINDOW, WINDOW)[:n], dtype=np.float32)


def test_center_transform_zeroes_every_window_mean(small_rows: np.ndarray) -> None:
    pre = fit_preprocessor(small_rows, mode="zscore", window_transform="center")
    s, z = pre(torch.as_tensor(_windows(small_rows)))
    np.testing.assert_allclose(s.mean(dim=1).numpy(), 0.0, atol=1e-5)
    torch.testing.assert_close(z, s)  # no PCA: model space is the transformed scaled space


def test_diff_transform_is_the_first_difference_with_a_zero_first_step(small_rows: np.ndarray) -> None:
    pre = fit_preprocessor(small_rows, mode="zscore", window_transform="diff")
    windows = _windows(small_rows)
    s, _ = pre(torch.as_tensor(windows))
    scaled = (windows - pre.center.numpy()) / pre.scale.numpy()
    np.testing.assert_allclose(s[:, 0].numpy(), 0.0)
    np.testing.assert_allclose(s[:, 1:].numpy(), np.diff(scaled, axis=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transform", ["center", "diff"])
def test_transformed_model_ignores_a_level_offset_unless_level_weight_is_set(small_rows: np.ndarray, transform: str) -> None:
    windows = _windows(small_rows)
    offset = np.zeros(6, dtype=np.float32)
    offset[3] = 5.0 * float(small_rows[:, 3].std())  # five training sds on one channel, the SKAB drift case
    plain = fit(small_rows, tiny_config(epochs=2))
    invariant = fit(small_rows, tiny_config(epochs=2, window_transform=transform))
    weighted = fit(small_rows, tiny_config(epochs=2, window_transform=transform, level_weight=0.1, score_mode="mse"))
    assert np.all(plain.score(windows + offset)[0] > plain.score(windows)[0])  # without the transform the offset scores
    np.testing.assert_allclose(invariant.score(windows + offset)[0], invariant.score(windows)[0], rtol=1e-3, atol=1e-5)
    # mse head: the offset changes only channel 3's level term, 0.1 x (scaled window mean)^2
    gain = weighted.score(windows + offset)[0] - weighted.score(windows)[0]
    level = weighted.detector.pre.level(torch.as_tensor(windows))[:, 3].numpy()
    shift = 5.0 * float(small_rows[:, 3].std()) / float(weighted.detector.pre.scale[3])
    np.testing.assert_allclose(gain, 0.1 * ((level + shift) ** 2 - level ** 2), rtol=1e-3, atol=1e-4)


def test_scale_floor_lifts_only_near_constant_channels(small_rows: np.ndarray) -> None:
    rows = small_rows.copy()
    rows[:, 2] = 50.0 + 1e-3 * np.sin(np.arange(len(rows)))  # near-constant at a level of 50
    plain = fit_preprocessor(rows, mode="zscore")
    floored = fit_preprocessor(rows, mode="zscore", scale_floor=0.01)
    assert float(floored.scale[2]) == pytest.approx(0.5, rel=1e-4)  # 1 % of the mean absolute reading
    assert float(plain.scale[2]) < 1e-2
    others = [c for c in range(6) if c != 2 and float(plain.scale[c]) > 0.01 * np.abs(rows[:, c]).mean()]
    assert others, "the fixture should have channels whose spread is above the floor"
    np.testing.assert_array_equal(floored.scale.numpy()[others], plain.scale.numpy()[others])
    minmax = fit_preprocessor(rows, mode="minmax", scale_floor=0.01)
    assert float(minmax.scale[2]) == pytest.approx(0.5, rel=1e-4)


def test_pca_with_a_transform_is_fitted_on_transformed_windows(small_rows: np.ndarray) -> None:
    pre = fit_preprocessor(small_rows, mode="zscore", components=6, whiten=True, window_transform="diff", window_length=WINDOW)
    _, z = pre(torch.as_tensor(np.ascontiguousarray(make_windows(small_rows, WINDOW, WINDOW // 2), dtype=np.float32)))
    cov = np.cov(z.numpy().reshape(-1, 6), rowvar=False)
    np.testing.assert_allclose(cov, np.eye(6), atol=2e-2)  # whitened in the space the model sees
    with pytest.raises(ValueError, match="window_length"):
        fit_preprocessor(small_rows, mode="zscore", components=3, window_transform="center")


def test_level_weight_without_a_transform_and_negative_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="level_weight"):
        tiny_config(level_weight=0.1)
    with pytest.raises(ConfigError, match="scale_floor"):
        tiny_config(scale_floor=-0.1)
    with pytest.raises(ConfigError, match="window_transform"):
        tiny_config(window_transform="detrend")


def test_the_knobs_default_off() -> None:
    cfg = tiny_config()
    assert (cfg.window_transform, cfg.level_weight, cfg.scale_floor) == ("none", 0.0, 0.0)


@pytest.mark.parametrize("family", family_names())
@pytest.mark.parametrize("transform", ["center", "diff"])
def test_onnx_equals_torch_with_the_drift_knobs(tmp_path: Path, family: str, transform: str) -> None:
    rows = simulate(800, seed=41)[0]
    cfg = tiny_config(family, epochs=1, window_transform=transform, level_weight=0.1, scale_floor=0.01)
    fitted = fit(rows, cfg)
    write_artifact(fitted, tmp_path, name="drift", created_at="2026-01-01T00:00:00Z")
    windows = np.ascontiguousarray(make_windows(simulate(300, seed=42)[0], WINDOW, 4), dtype=np.float32)
    (s_onnx, c_onnx), (s_torch, c_torch) = OnnxDetector.load(tmp_path).score(windows), fitted.score(windows)
    np.testing.assert_allclose(s_onnx, s_torch, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c_onnx, c_torch, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(s_onnx)) and np.all(s_onnx >= 0)

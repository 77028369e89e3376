"""Preprocessing: each scaling mode, PCA to k components, whitening; fitted on training rows only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.fit import fit
from models.preprocess import fit_preprocessor
from tests.models.conftest import WINDOW, tiny_config


def _apply(rows: np.ndarray, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    pre = fit_preprocessor(rows, **kw)  # type: ignore[arg-type]
    s, z = pre(torch.as_tensor(rows[None], dtype=torch.float32))
    return s[0].numpy().astype(np.float64), z[0].numpy().astype(np.float64)


def test_none_passes_readings_through(small_rows: np.ndarray) -> None:
    s, z = _apply(small_rows, mode="none")
    np.testing.assert_allclose(s, small_rows, rtol=1e-6)
    np.testing.assert_allclose(z, small_rows, rtol=1e-6)


def test_center_removes_the_mean_only(small_rows: np.ndarray) -> None:
    s, _ = _apply(small_rows, mode="center")
    np.testing.assert_allclose(s.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(s.std(axis=0), small_rows.std(axis=0), rtol=1e-4)


def test_zscore_gives_zero_mean_unit_variance(small_rows: np.ndarray) -> None:
    s, _ = _apply(small_rows, mode="zscore")
    np.testing.assert_allclose(s.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(s.std(axis=0), 1, rtol=1e-4)


def test_minmax_maps_training_range_to_unit_interval(small_rows: np.ndarray) -> None:
    s, _ = _apply(small_rows, mode="minmax")
    np.testing.assert_allclose(s.min(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.max(axis=0), 1, atol=1e-5)


def test_constant_channel_does_not_divide_by_zero(small_rows: np.ndarray) -> None:
    rows = small_rows.copy()
    rows[:, 2] = 5.0
    for mode in ("zscore", "minmax"):
        s, _ = _apply(rows, mode=mode)
        assert np.all(np.isfinite(s))


def test_pca_reduces_to_k_components_ordered_by_variance(small_rows: np.ndarray) -> None:
    _, z = _apply(small_rows, mode="zscore", components=2)
    assert z.shape == (len(small_rows), 2)
    var = z.var(axis=0)
    assert var[0] >= var[1]
    _, full = _apply(small_rows, mode="zscore", components=6)
    assert var.sum() > 0.8 * full.var(axis=0).sum()  # correlated channels: two components hold most variance


@pytest.mark.parametrize("components", [0, 3])
def test_whitening_gives_unit_variance_on_training_data(small_rows: np.ndarray, components: int) -> None:
    _, z = _apply(small_rows, mode="zscore", components=components, whiten=True)
    cov = np.cov(z, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(cov.shape[0]), atol=1e-3)


def test_pca_round_trip_is_exact_with_all_components(small_rows: np.ndarray) -> None:
    pre = fit_preprocessor(small_rows, mode="zscore", components=6, whiten=True)
    x = torch.as_tensor(small_rows[None, :50], dtype=torch.float32)
    s, z = pre(x)
    torch.testing.assert_close(pre.to_scaled(z), s, atol=1e-4, rtol=1e-4)


def test_too_many_components_is_an_error(small_rows: np.ndarray) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        fit_preprocessor(small_rows, mode="zscore", components=7)


def test_preprocessing_is_fitted_on_training_rows_only_and_is_inside_the_model(small_rows: np.ndarray) -> None:
    shifted = small_rows + 100.0
    a = fit(small_rows, tiny_config(epochs=1, pca_components=3, whiten=True))
    b = fit(shifted, tiny_config(epochs=1, pca_components=3, whiten=True))
    np.testing.assert_allclose(b.detector.pre.center.numpy() - a.detector.pre.center.numpy(), 100.0, rtol=1e-5)
    windows = np.ascontiguousarray(small_rows[:WINDOW * 4].reshape(4, WINDOW, 6), dtype=np.float32)
    np.testing.assert_allclose(a.score(windows)[0], b.score(windows + 100.0)[0], rtol=1e-3)  # raw readings in, same result


@pytest.mark.parametrize("mode", ["none", "center", "zscore", "minmax"])
def test_every_mode_trains_and_scores(small_rows: np.ndarray, mode: str) -> None:
    fitted = fit(small_rows, tiny_config(epochs=1, preprocess=mode))
    assert np.all(np.isfinite(fitted.train_scores)) and fitted.threshold > 0

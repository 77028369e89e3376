"""The detector contract (STYLE rule 7), run over every registered family through both the
torch graph and the exported ONNX graph loaded by the edge's OnnxDetector."""

from __future__ import annotations

import numpy as np
import pytest

from edge.contract.errors import ConfigError
from edge.synth import Fault, simulate
from models.data import make_windows
from models.fit import fit
from models.registry import family_names, get_builder
from models.synth_eval import auc
from tests.models.conftest import WINDOW, Trained, tiny_config

FAMILIES = family_names()


def _probe(seed: int = 31) -> np.ndarray:
    rows, _ = simulate(400, seed=seed)
    return make_windows(rows, WINDOW, 8)


def test_registry_lists_every_family_and_rejects_unknown() -> None:
    assert set(FAMILIES) == {"dense_ae", "conv_ae", "lstm_ae", "lstm_forecast", "tadgan", "vae", "rbm", "dbn_ae", "ladder"}
    with pytest.raises(ConfigError) as err:
        get_builder("transformer")
    assert "transformer" in str(err.value) and all(name in str(err.value) for name in FAMILIES)


def test_builders_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        get_builder("dense_ae")(6, WINDOW, tiny_config())


@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_finite_and_channel_shares_sum_to_one(trained: dict[str, Trained], family: str) -> None:
    t = trained[family]
    windows = _probe()
    for score, shares in (t.onnx.score(windows), t.fitted.score(windows)):
        assert score.shape == (len(windows),) and shares.shape == (len(windows), 6)
        assert np.all(np.isfinite(score)) and np.all(score >= 0)
        assert np.all(shares >= 0) and np.allclose(shares.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_scoring_is_deterministic_and_does_not_mutate_input(trained: dict[str, Trained], family: str) -> None:
    t = trained[family]
    windows = _probe()
    before = windows.copy()
    first_onnx, first_torch = t.onnx.score(windows)[0], t.fitted.score(windows)[0]
    np.testing.assert_array_equal(windows, before)
    np.testing.assert_array_equal(t.onnx.score(windows)[0], first_onnx)
    np.testing.assert_array_equal(t.fitted.score(windows)[0], first_torch)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_one_by_one(trained: dict[str, Trained], family: str) -> None:
    t = trained[family]
    windows = _probe()[:12]
    batch = t.onnx.score(windows)[0]
    single = np.array([t.onnx.score(windows[i:i + 1])[0][0] for i in range(len(windows))])
    np.testing.assert_allclose(single, batch, rtol=1e-5, atol=1e-6)
    torch_single = np.array([t.fitted.score(windows[i:i + 1])[0][0] for i in range(len(windows))])
    np.testing.assert_allclose(torch_single, t.fitted.score(windows)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_equals_torch(trained: dict[str, Trained], family: str) -> None:
    t = trained[family]
    rows, _ = simulate(400, seed=32, faults=[Fault("spike", "current", 100, 80), Fault("stuck", "flow", 250, 60)])
    windows = make_windows(rows, WINDOW, 4)
    (s_onnx, c_onnx), (s_torch, c_torch) = t.onnx.score(windows), t.fitted.score(windows)
    np.testing.assert_allclose(s_onnx, s_torch, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c_onnx, c_torch, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(train_rows: list[np.ndarray], family: str) -> None:
    cfg = tiny_config(family, epochs=1)
    a, b = fit(train_rows, cfg), fit(train_rows, cfg)
    for (name, x), y in zip(a.detector.state_dict().items(), b.detector.state_dict().values(), strict=True):
        assert np.array_equal(x.numpy(), y.numpy()), name


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_anomalies_clear_the_floor(trained: dict[str, Trained], family: str) -> None:
    """Windows inside spike, noise and drift faults outrank fault-free windows (AUC), on a fresh seed."""
    t = trained[family]
    clean, _ = simulate(3_000, seed=901)
    faults = [Fault("spike", "vibration", 300, 100), Fault("noise", "pressure", 1_000, 100),
              Fault("drift", "temperature", 1_700, 120, magnitude=1.0), Fault("spike", "flow", 2_400, 100)]
    faulty, labels = simulate(3_000, seed=902, faults=faults)
    neg = t.onnx.score(make_windows(clean, WINDOW, 4))[0]
    windows = make_windows(faulty, WINDOW, 4)
    inside = make_windows(labels[:, None].astype(np.float32), WINDOW, 4).min(axis=(1, 2)) > 0
    pos = t.onnx.score(windows[inside])[0]
    assert auc(neg, pos) > 0.8
    assert np.mean(pos > t.fitted.threshold) > 0.1  # the calibrated threshold catches a share of them
    assert np.mean(neg > t.fitted.threshold) < 0.02

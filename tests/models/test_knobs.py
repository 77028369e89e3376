"""One test per training knob, each showing the knob changes what it should."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.base import Detector
from models.config import TrainConfig
from models.fit import build_detector, fit
from models.layers import Maxout, dense_block, init_weights
from models.preprocess import fit_preprocessor
from models.registry import build_family
from models.train import make_optimizer
from tests.models.conftest import WINDOW, tiny_config


def _weights(detector: Detector) -> list[torch.Tensor]:
    return [p.detach().clone() for p in detector.net.parameters() if p.dim() >= 2]


@pytest.mark.parametrize(("name", "reference"), [
    ("relu", torch.relu), ("leaky_relu", lambda x: nn.functional.leaky_relu(x, 0.01)), ("elu", nn.functional.elu),
    ("tanh", torch.tanh), ("sigmoid", torch.sigmoid),
])
def test_activation_is_the_configured_function(name: str, reference: object) -> None:
    block = dense_block(5, 7, tiny_config(activation=name)).eval()
    x = torch.randn(3, 5)
    np.testing.assert_allclose(block(x).detach(), reference(block[0](x)).detach(), rtol=1e-6)  # type: ignore[operator]


def test_maxout_takes_the_max_of_pieces() -> None:
    block = dense_block(5, 7, tiny_config(activation="maxout", maxout_pieces=3)).eval()
    assert block[0].out_features == 21 and isinstance(block[1], Maxout)
    x = torch.randn(4, 5)
    pre = block[0](x).reshape(4, 7, 3)
    np.testing.assert_allclose(block(x).detach(), pre.amax(-1).detach())


@pytest.mark.parametrize(("scheme", "check"), [
    ("xavier_uniform", lambda w, fi, fo: w.abs().max() <= math.sqrt(6 / (fi + fo)) + 1e-6),
    ("xavier_normal", lambda w, fi, fo: abs(float(w.std()) / math.sqrt(2 / (fi + fo)) - 1) < 0.05),
    ("kaiming_uniform", lambda w, fi, fo: w.abs().max() <= math.sqrt(6 / fi) + 1e-6 and w.abs().max() > math.sqrt(6 / (fi + fo))),
    ("kaiming_normal", lambda w, fi, fo: abs(float(w.std()) / math.sqrt(2 / fi) - 1) < 0.05),
])
def test_initialisation_scheme(scheme: str, check: object) -> None:
    layer = nn.Sequential(nn.Linear(400, 300))
    nn.init.constant_(layer[0].bias, 3.0)
    init_weights(layer, tiny_config(init=scheme))
    assert check(layer[0].weight.detach(), 400, 300)  # type: ignore[operator]
    assert torch.all(layer[0].bias == 0)


def test_batch_norm_layers_learn_running_statistics(small_rows: np.ndarray) -> None:
    fitted = fit(small_rows, tiny_config(batch_norm=True, epochs=1))
    norms = [m for m in fitted.detector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert norms and all(int(m.num_batches_tracked) > 0 for m in norms)
    plain = fit(small_rows, tiny_config(epochs=1))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.detector.modules())


def test_dropout_changes_train_mode_outputs_only(small_rows: np.ndarray) -> None:
    detector = fit(small_rows, tiny_config(dropout=0.5, epochs=1)).detector
    _, z = detector.pre(torch.as_tensor(small_rows[:WINDOW * 4].reshape(4, WINDOW, 6), dtype=torch.float32))
    detector.net.train()
    assert not torch.equal(detector.net.estimate(z).values, detector.net.estimate(z).values)
    detector.net.eval()
    assert torch.equal(detector.net.estimate(z).values, detector.net.estimate(z).values)


@pytest.mark.parametrize("knob", ["l1", "l2"])
def test_weight_penalty_shrinks_weights(small_rows: np.ndarray, knob: str) -> None:
    base = tiny_config(epochs=3, lr=3e-3)
    norm = (lambda w: w.abs().sum()) if knob == "l1" else (lambda w: w.pow(2).sum())
    free = sum(float(norm(w)) for w in _weights(fit(small_rows, base).detector))
    penalised = sum(float(norm(w)) for w in _weights(fit(small_rows, base.with_(**{knob: 0.05})).detector))
    assert penalised < 0.8 * free


def test_max_norm_bounds_every_unit(small_rows: np.ndarray) -> None:
    limit = 0.3
    def largest(cfg: TrainConfig) -> float:
        return max(float(w.flatten(1).norm(dim=1).max()) for w in _weights(fit(small_rows, cfg).detector))
    assert largest(tiny_config(epochs=2)) > limit
    assert largest(tiny_config(epochs=2, max_norm=limit)) <= limit + 1e-5


def _quadratic_steps(optimizer: str, steps: int = 2, lr: float = 0.1) -> list[float]:
    w = nn.Parameter(torch.tensor([1.0]))
    opt = make_optimizer([w], tiny_config(optimizer=optimizer, lr=lr, momentum=0.9))
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * w ** 2).sum().backward()
        opt.step()
        out.append(float(w.detach()))
    return out


def test_optimisers_follow_their_update_rules() -> None:
    lr, m = 0.1, 0.9
    assert _quadratic_steps("sgd") == pytest.approx([0.9, 0.81])
    w1 = 1 - lr * 1.0  # momentum: v1 = g0; w2 = w1 - lr * (m v1 + g1)
    assert _quadratic_steps("momentum") == pytest.approx([w1, w1 - lr * (m * 1.0 + w1)])
    v1 = 1.0  # nesterov (torch form): step with g + m * v
    n1 = 1 - lr * (1.0 + m * v1)
    v2 = m * v1 + n1
    assert _quadratic_steps("nesterov") == pytest.approx([n1, n1 - lr * (n1 + m * v2)])
    assert _quadratic_steps("adam", steps=1) == pytest.approx([0.9], abs=1e-6)  # Adam's first step is lr * sign(g)


@pytest.mark.parametrize(("decay", "expected"), [
    ("constant", [0.1, 0.1, 0.1, 0.1, 0.1]),
    ("step", [0.1, 0.1, 0.05, 0.05, 0.025]),
    ("exponential", [0.1, 0.05, 0.025, 0.0125, 0.00625]),
    ("inverse_time", [0.1, 0.1 / 1.5, 0.1 / 2, 0.1 / 2.5, 0.1 / 3]),
])
def test_lr_decay_schedule(small_rows: np.ndarray, decay: str, expected: list[float]) -> None:
    cfg = tiny_config(optimizer="sgd", lr=0.1, lr_decay=decay, decay_rate=0.5, decay_steps=2, epochs=5, hidden=4)
    assert fit(small_rows, cfg).history.lr == pytest.approx(expected)


def test_epochs_and_validation_split(small_rows: np.ndarray) -> None:
    h = fit(small_rows, tiny_config(epochs=4, validation_split=0.2)).history
    assert len(h.train_loss) == len(h.val_loss) == 4 and not h.stopped_early
    assert fit(small_rows, tiny_config(epochs=2, validation_split=0.0)).history.val_loss == []


def test_early_stopping_stops_and_keeps_the_best_epoch(small_rows: np.ndarray) -> None:
    cfg = tiny_config(epochs=50, early_stopping=2, min_delta=1e9)  # nothing counts as an improvement after epoch 1
    h = fit(small_rows, cfg).history
    assert h.stopped_early and len(h.train_loss) == 3 and h.best_epoch == 0


def test_different_seed_different_weights(small_rows: np.ndarray) -> None:
    a = _weights(fit(small_rows, tiny_config(epochs=1, seed=1)).detector)
    b = _weights(fit(small_rows, tiny_config(epochs=1, seed=2)).detector)
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_fine_tuning_starts_from_the_given_weights(small_rows: np.ndarray, train_rows: list[np.ndarray]) -> None:
    source = fit(train_rows, tiny_config(epochs=2))
    frozen = tiny_config(epochs=1, optimizer="sgd", lr=1e-12, seed=99)  # a step that cannot move the weights
    tuned = fit(small_rows, frozen, init_from=source)
    for x, y in zip(_weights(source.detector), _weights(tuned.detector), strict=True):
        torch.testing.assert_close(x, y)
    assert torch.equal(tuned.detector.pre.center, source.detector.pre.center)  # preprocessing comes along
    fresh = fit(small_rows, frozen)
    assert not torch.equal(_weights(fresh.detector)[0], _weights(source.detector)[0])


def test_fine_tuning_from_a_mismatched_architecture_is_a_config_error(small_rows: np.ndarray) -> None:
    from edge.contract.errors import ConfigError
    source = fit(small_rows, tiny_config(epochs=1, hidden=8))
    with pytest.raises(ConfigError, match="do not fit"):
        fit(small_rows, tiny_config(epochs=1, hidden=12), init_from=source)


def test_lstm_options_bidirectional_and_layers() -> None:
    net = build_family("lstm_ae", channels=6, window_length=WINDOW, config=tiny_config("lstm_ae", bidirectional=True, layers=2))
    assert net.encoder.bidirectional and net.encoder.num_layers == 2  # type: ignore[union-attr]
    assert net.estimate(torch.randn(3, WINDOW, 6)).values.shape == (3, WINDOW, 6)
    one = build_family("lstm_ae", channels=6, window_length=WINDOW, config=tiny_config("lstm_ae", bidirectional=False))
    assert not one.encoder.bidirectional and one.encoder.num_layers == 1  # type: ignore[union-attr]


def test_kernel_size_shapes_the_convolutions() -> None:
    net = build_family("conv_ae", channels=6, window_length=WINDOW, config=tiny_config("conv_ae", kernel_size=7))
    assert net.encoder[0][0].kernel_size == (7,)  # type: ignore[index]
    assert net.estimate(torch.randn(2, WINDOW, 6)).values.shape == (2, WINDOW, 6)


def test_forecaster_scores_the_next_steps_and_refuses_bidirectional() -> None:
    from edge.contract.errors import ConfigError
    net = build_family("lstm_forecast", channels=6, window_length=WINDOW, config=tiny_config("lstm_forecast"))
    est = net.estimate(torch.randn(2, WINDOW, 6))
    assert est.start == 1 and est.values.shape == (2, WINDOW - 1, 6)
    with pytest.raises(ConfigError):
        build_family("lstm_forecast", channels=6, window_length=WINDOW, config=tiny_config("lstm_forecast", bidirectional=True))


def test_extra_score_weight_mixes_the_critic_in(small_rows: np.ndarray) -> None:
    windows = np.ascontiguousarray(small_rows[:WINDOW * 8].reshape(8, WINDOW, 6), dtype=np.float32)
    fitted = fit(small_rows, tiny_config("tadgan", epochs=1))
    with_critic = fitted.score(windows)[0]
    fitted.detector.extra_weight = 0.0
    without = fitted.score(windows)[0]
    assert np.all(with_critic >= without - 1e-5) and not np.allclose(with_critic, without)


def test_n_critic_runs_that_many_critic_updates(small_rows: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.tadgan import TadGan
    calls = {"critic": 0, "generator": 0}
    for name in ("critic", "generator"):
        original = getattr(TadGan, f"{name}_loss")
        def counting(self: TadGan, z: torch.Tensor, _o: object = original, _n: str = name) -> torch.Tensor:
            calls[_n] += 1
            return _o(self, z)  # type: ignore[operator]
        monkeypatch.setattr(TadGan, f"{name}_loss", counting)
    fit(small_rows, tiny_config("tadgan", epochs=1, n_critic=3))
    assert calls["generator"] > 0 and calls["critic"] == 3 * calls["generator"]


def test_vae_beta_weights_the_kl_term() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, WINDOW, 6)
    losses = []
    for beta in (0.0, 10.0):
        torch.manual_seed(1)
        net = build_family("vae", channels=6, window_length=WINDOW, config=tiny_config("vae", beta=beta)).eval()
        losses.append(float(net.loss(z).detach()))
    assert losses[1] > losses[0]


def test_train_stride_sets_the_number_of_training_windows(small_rows: np.ndarray) -> None:
    dense = fit(small_rows, tiny_config(epochs=1, train_stride=2))
    sparse = fit(small_rows, tiny_config(epochs=1, train_stride=8))
    assert len(dense.train_scores) == (len(small_rows) - WINDOW) // 2 + 1
    assert len(sparse.train_scores) == (len(small_rows) - WINDOW) // 8 + 1


def test_log_z_score_flags_a_channel_reconstructed_too_well(train_rows: list[np.ndarray]) -> None:
    """A stuck sensor lowers its reconstruction error: log_z (two-sided) raises the score, mse lowers it."""
    rows = np.concatenate(train_rows)
    windows = np.ascontiguousarray(rows[:WINDOW * 64].reshape(64, WINDOW, 6), dtype=np.float32)
    stuck = windows.copy()
    stuck[:, :, 4] = stuck[:, :1, 4]
    for mode, higher in (("log_z", True), ("mse", False)):
        fitted = fit(train_rows, tiny_config(epochs=3, score_mode=mode))
        normal, frozen = fitted.score(windows), fitted.score(stuck)
        assert (np.median(frozen[0]) > np.median(normal[0])) == higher
        if higher:
            assert np.median(frozen[1][:, 4]) > np.median(normal[1][:, 4])  # the stuck channel takes the blame


def test_build_detector_uses_pca_components_as_model_channels(small_rows: np.ndarray) -> None:
    pre = fit_preprocessor(small_rows, mode="zscore", components=3)
    detector = build_detector(pre, tiny_config(), 6)
    assert detector.net.encoder[0][0].in_features == 3 * WINDOW  # type: ignore[index]

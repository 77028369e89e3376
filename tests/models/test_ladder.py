"""The ``ladder`` family and the labelled set of the training loop (issue 18 item 3): the score is
the denoising error plus ``softplus(logit)``, constant with no labels; labels train the classifier
and only it; other families ignore them; one test per ladder knob."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.contract.errors import ConfigError
from edge.synth import Fault, simulate
from models.data import make_windows
from models.fit import FittedModel, fit
from models.ladder import Ladder
from models.train import LabelledWindows
from tests.models.conftest import WINDOW, Trained, tiny_config


def _ladder(fitted: FittedModel) -> Ladder:
    net = fitted.detector.net
    assert isinstance(net, Ladder)
    return net


def _labelled(n_incidents: int, seed: int = 3) -> LabelledWindows:
    """Windows inside spike faults labelled 1, and as many fault-free windows labelled 0."""
    faults = [Fault("spike", "vibration", 100 + 200 * i, 40) for i in range(n_incidents)]
    rows, inside = simulate(200 * n_incidents + 200, seed=seed, faults=faults)
    windows = make_windows(rows, WINDOW, 4)
    flags = make_windows(inside[:, None].astype(np.float32), WINDOW, 4)
    pos, neg = windows[flags.min(axis=(1, 2)) > 0], windows[flags.max(axis=(1, 2)) == 0][:len(windows) // 4]
    return LabelledWindows(np.concatenate([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))])


def test_with_no_labels_the_logit_is_zero_and_the_score_is_the_denoising_error(trained: dict[str, Trained]) -> None:
    fitted = trained["ladder"].fitted
    net = _ladder(fitted)
    assert not net.classifier_weight.any() and not net.classifier_bias.any()
    rows = np.random.default_rng(5).normal(size=(6, WINDOW, 6)) * 3 + 50
    with torch.no_grad():
        x = torch.as_tensor(rows, dtype=torch.float32)
        err, extra = fitted.detector.parts(x)
        d = ((torch.log(err + 1e-6) - fitted.detector.err_mu) / fitted.detector.err_sd) ** 2
    assert extra is not None and torch.equal(extra, torch.zeros(6))
    np.testing.assert_allclose(fitted.score(rows)[0], (d.sum(1) + np.log(2.0)).numpy(), rtol=1e-5)


def test_labels_train_the_classifier_and_raise_labelled_anomalies(train_rows: list[np.ndarray]) -> None:
    cfg = tiny_config("ladder", epochs=3)
    labelled = _labelled(6)
    without, with_labels = fit(train_rows, cfg), fit(train_rows, cfg, labelled=labelled)
    assert _ladder(with_labels).classifier_weight.abs().sum() > 0
    test = _labelled(6, seed=77)
    with torch.no_grad():
        logits = with_labels.detector.parts(torch.as_tensor(test.windows, dtype=torch.float32))[1]
    assert logits is not None
    assert float(logits[test.labels == 1].mean()) > float(logits[test.labels == 0].mean()) + 1.0
    gain = with_labels.score(test.windows)[0][test.labels == 1].mean() - without.score(test.windows)[0][test.labels == 1].mean()
    assert gain > 0


@pytest.mark.parametrize("family", ["dense_ae", "rbm"])
def test_families_without_labels_ignore_the_labelled_set(train_rows: list[np.ndarray], family: str) -> None:
    cfg = tiny_config(family, epochs=1)
    a, b = fit(train_rows, cfg), fit(train_rows, cfg, labelled=_labelled(2))
    for (name, x), y in zip(a.detector.state_dict().items(), b.detector.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_bad_labelled_sets_are_refused(train_rows: list[np.ndarray]) -> None:
    good = _labelled(1)
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        fit(train_rows, tiny_config("ladder"), labelled=good._replace(labels=good.labels * 2))
    with pytest.raises(ValueError, match="labelled windows must be"):
        fit(train_rows, tiny_config("ladder"), labelled=good._replace(windows=good.windows[:, :8]))


def test_noise_std_scales_the_noisy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    original = Ladder._encode

    def spy(self: Ladder, x: torch.Tensor, *, noise: float, update: bool) -> object:
        seen.append(noise)
        return original(self, x, noise=noise, update=update)

    monkeypatch.setattr(Ladder, "_encode", spy)
    net = Ladder(channels=2, window_length=WINDOW, config=tiny_config("ladder", noise_std=0.7))
    net.loss(torch.randn(8, WINDOW, 2))
    assert seen == [0.0, 0.7]


def test_layer_cost_weight_weighs_the_hidden_layers() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, WINDOW, 2)
    costs = []
    for weight in (0.0, 1.0, 2.0):
        torch.manual_seed(1)
        net = Ladder(channels=2, window_length=WINDOW, config=tiny_config("ladder", layer_cost_weight=weight))
        torch.manual_seed(2)
        costs.append(float(net.loss(z).detach()))
    assert costs[1] > costs[0]
    assert costs[2] - costs[0] == pytest.approx(2 * (costs[1] - costs[0]), rel=1e-4)


def test_supervised_weight_zero_leaves_the_classifier_untrained(train_rows: list[np.ndarray]) -> None:
    fitted = fit(train_rows, tiny_config("ladder", epochs=1, supervised_weight=0.0), labelled=_labelled(2))
    assert not _ladder(fitted).classifier_weight.any()


def test_maxout_is_refused_for_ladder() -> None:
    with pytest.raises(ConfigError, match="maxout"):
        tiny_config("ladder", activation="maxout")


def test_a_flat_series_trains_to_finite_scores() -> None:
    """A constant channel (NAB's art_flatline) leaves every unit constant: the normalisation's eps
    keeps the running statistics from amplifying the last batch's drift into an infinite loss."""
    rows = np.full((600, 1), 45.0)
    cfg = tiny_config("ladder", train_stride=1, hidden=32, batch_size=32, epochs=12, lr=1e-3)  # NAB's settings, shorter
    fitted = fit(rows, cfg)
    assert np.isfinite(fitted.train_scores).all()

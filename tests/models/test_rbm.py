"""The ``rbm`` and ``dbn_ae`` families and their knobs (issue 18): free-energy score and channel
shares, CD-k and persistent chains, the monitored reconstruction error in the report, divergence
stopping training before anything is written, greedy pretraining and ``init = "dbn"``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cloud.cli import main
from edge.contract.errors import ConfigError
from models.config import TrainConfig
from models.dbn import linear_layers
from models.dbn_ae import DbnAe
from models.fit import FittedModel, fit
from models.rbm import ContrastiveDivergence, Rbm, RbmLayer
from models.registry import build_family
from models.report import write_report
from models.train import TrainingDiverged
from tests.models.conftest import WINDOW, Trained, tiny_config


def _rbm(fitted: FittedModel) -> Rbm:
    net = fitted.detector.net
    assert isinstance(net, Rbm)
    return net


def _layer(n_visible: int = 5, n_hidden: int = 3, **kinds: bool) -> RbmLayer:
    torch.manual_seed(0)
    layer = RbmLayer(n_visible, n_hidden, **kinds)
    with torch.no_grad():
        layer.visible_bias.normal_()
    return layer


def test_free_energy_is_the_closed_form() -> None:
    v = torch.randn(4, 5)
    gauss, bern, top = _layer(gaussian=True), _layer(gaussian=False), _layer(gaussian=False, gaussian_hidden=True)
    w, c, b = gauss.linear.weight.detach(), gauss.linear.bias.detach(), gauss.visible_bias.detach()
    pre = v @ w.T + c
    softplus = torch.log1p(torch.exp(pre)).sum(1)
    torch.testing.assert_close(gauss.free_energy(v), 0.5 * ((v - b) ** 2).sum(1) - softplus)
    torch.testing.assert_close(bern.free_energy(v), -(v @ b) - softplus)
    torch.testing.assert_close(top.free_energy(v), -(v @ b) - 0.5 * (pre ** 2).sum(1))


def test_score_is_free_energy_above_the_training_floor_and_channels_share_the_visible_term(trained: dict[str, Trained]) -> None:
    fitted = trained["rbm"].fitted
    rows = np.random.default_rng(5).normal(size=(6, WINDOW, 6)) * 3 + 50
    score, shares = fitted.score(rows)
    with torch.no_grad():
        s, z = fitted.detector.pre(torch.as_tensor(rows, dtype=torch.float32))
        rbm = _rbm(fitted).rbm
        energy = rbm.free_energy(z.flatten(1))
        visible = ((z - rbm.visible_bias.reshape(WINDOW, 6)) ** 2).sum(dim=1)  # no PCA: model space = scaled space
    floor = float(fitted.detector.energy_floor)
    np.testing.assert_allclose(score, np.maximum(energy.numpy() - floor, 0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(shares, (visible / visible.sum(1, keepdim=True)).numpy(), rtol=1e-4, atol=1e-6)
    assert fitted.train_scores.min() == pytest.approx(0.0, abs=1e-3)  # the floor is the lowest training energy


def test_cd_k_runs_k_gibbs_steps_from_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _layer(gaussian=True)
    calls: list[torch.Tensor] = []
    sample = RbmLayer.sample_hidden

    def counted(self: RbmLayer, v: torch.Tensor) -> torch.Tensor:
        calls.append(v)
        return sample(self, v)

    monkeypatch.setattr(RbmLayer, "sample_hidden", counted)
    v = torch.randn(8, 5)
    ContrastiveDivergence(layer, tiny_config("rbm", k=3)).loss(v)
    assert len(calls) == 3 and torch.equal(calls[0], v)


def test_persistent_cd_continues_its_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _layer(gaussian=True)
    cd = ContrastiveDivergence(layer, tiny_config("rbm", persistent_cd=True))
    starts: list[torch.Tensor] = []
    gibbs = RbmLayer.gibbs

    def recorded(self: RbmLayer, v: torch.Tensor, steps: int) -> torch.Tensor:
        starts.append(v.clone())
        return gibbs(self, v, steps)

    monkeypatch.setattr(RbmLayer, "gibbs", recorded)
    first, second = torch.randn(8, 5), torch.randn(8, 5)
    cd.loss(first)
    after_first = cd.chains.clone() if cd.chains is not None else None
    cd.loss(second[:6])
    assert torch.equal(starts[0], first) and after_first is not None
    assert torch.equal(starts[1], after_first[:6]) and not torch.equal(starts[1], second[:6])
    plain = ContrastiveDivergence(layer, tiny_config("rbm"))
    plain.loss(second)
    assert plain.chains is None and torch.equal(starts[2], second)


def test_k_and_persistent_cd_change_the_weights(small_rows: np.ndarray) -> None:
    base = tiny_config("rbm", epochs=1)
    weights = [_rbm(fit(small_rows, base.with_(**c))).rbm.linear.weight.detach() for c in ({}, {"k": 3}, {"persistent_cd": True})]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_rbm_report_monitors_the_reconstruction_error(tmp_path: Path, small_rows: np.ndarray) -> None:
    fitted = fit(small_rows, tiny_config("rbm", epochs=3))
    write_report(fitted, tmp_path)
    history = json.loads((tmp_path / "report.json").read_text())["history"]
    assert history["monitor"] == "reconstruction_mse" and len(history["val_loss"]) == 3
    with torch.no_grad():
        _, z = fitted.detector.pre(torch.as_tensor(small_rows[:WINDOW * 8].reshape(8, WINDOW, 6), dtype=torch.float32))
        flat = z.flatten(1)
        expected = torch.mean((_rbm(fitted).rbm.reconstruct(flat) - flat) ** 2)
        assert float(_rbm(fitted).monitor(z)) == pytest.approx(float(expected))
    no_val = fit(small_rows, tiny_config("rbm", epochs=2, validation_split=0.0))
    assert no_val.history.val_loss == [] and no_val.history.monitor == "reconstruction_mse"


def test_diverging_rbm_stops_training_and_writes_no_artifact(tmp_path: Path, small_rows: np.ndarray,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    diverging = tiny_config("rbm", optimizer="sgd", lr=1e4, epochs=3)
    with pytest.raises(TrainingDiverged, match=r"rbm training diverged in epoch \d: free energy is nan"):
        fit(small_rows, diverging)
    np.save(tmp_path / "rows.npy", small_rows)
    out = tmp_path / "model"
    code = main(["train", "--data", str(tmp_path / "rows.npy"), "--out", str(out), "--family", "rbm", "--optimizer", "sgd",
                 "--lr", "1e4", "--epochs", "3", "--window", "16", "--stride", "8", "--hidden", "8", "--progress", "false"])
    assert code == 1 and "training diverged" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_dbn_pretraining_unrolls_each_rbm_into_encoder_and_mirror_decoder(small_rows: np.ndarray) -> None:
    cfg = tiny_config("dbn_ae", layers=2, hidden=12, latent=3, pretrain_epochs=3)
    net = build_family("dbn_ae", channels=6, window_length=WINDOW, config=cfg)
    assert isinstance(net, DbnAe)
    z = torch.as_tensor(small_rows[:WINDOW * 36].reshape(36, WINDOW, 6), dtype=torch.float32)
    z = (z - z.mean(dim=(0, 1))) / z.std(dim=(0, 1))
    torch.manual_seed(0)
    curves = net.pretrain(z, cfg)
    enc, dec = linear_layers(net.encoder), linear_layers(net.decoder)[::-1]
    assert [(e.in_features, e.out_features) for e in enc] == [(96, 12), (12, 12), (12, 3)]
    for e, d in zip(enc, dec, strict=True):
        assert torch.equal(d.weight, e.weight.T)
    assert len(curves) == 3 and all(len(c) == 3 for c in curves)
    assert curves[0][-1] < curves[0][0]  # the first RBM learns to reconstruct the windows
    assert all(isinstance(m, nn.Sigmoid) for m in net.encoder.modules() if isinstance(m, (nn.ReLU, nn.Sigmoid)))


def test_dense_ae_init_dbn_pretrains_and_the_default_does_not(small_rows: np.ndarray) -> None:
    pretrained = fit(small_rows, tiny_config(init="dbn", epochs=1))
    assert len(pretrained.history.pretrain_loss) == 2 and len(pretrained.history.pretrain_loss[0]) == 5
    assert fit(small_rows, tiny_config(epochs=1)).history.pretrain_loss == []
    assert fit(small_rows, tiny_config(init="dbn", epochs=1), init_from=pretrained).history.pretrain_loss == []  # fine-tuning


def test_init_dbn_is_refused_where_it_cannot_apply(small_rows: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="dense_ae or dbn_ae only"):
        TrainConfig(family="conv_ae", init="dbn")
    with pytest.raises(ConfigError, match="mirror"):
        fit(small_rows, tiny_config(init="dbn", activation="maxout", epochs=1))

"""Greedy layer-wise pretraining of a deep belief network, unrolled into an autoencoder
(Hinton & Salakhutdinov 2006).

The encoder's linear layers, in order, define a stack of RBMs: the first has Gaussian visible
units (the z-scored window), the others Bernoulli visible units (the hidden probabilities of the
layer below); the top one has Gaussian hidden units, the autoencoder's linear code. Each RBM
trains for ``pretrain_epochs`` epochs of CD-k on the output of the ones below it, with the
configured optimiser, learning rate and L2 penalty, and is then copied into the autoencoder:
``W`` and the hidden bias into the encoder layer, ``W^T`` and the visible bias into the mirror
decoder layer. Backpropagation then fine-tunes the whole network
(:func:`models.train.train_family`). Batch norm and dropout are not part of the RBMs; with an
activation other than sigmoid (``dense_ae`` with ``init = "dbn"``) the hidden layers are not the
RBMs' conditionals, so there the pretraining is an initialisation only.
"""

from __future__ import annotations

import torch
from torch import nn

from edge.contract.errors import ConfigError
from models.config import TrainConfig
from models.layers import penalty, weight_matrices
from models.rbm import ContrastiveDivergence, RbmLayer
from models.train import check_finite, make_optimizer

_INIT_SD = 0.01  # Hinton's practical guide: small random weights, zero biases


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def pretrain_unrolled(encoder: nn.Module, decoder: nn.Module, v: torch.Tensor, cfg: TrainConfig) -> list[list[float]]:
    """Pretrain one RBM per encoder linear layer on ``v`` ``(batch, features)`` and copy each into
    the encoder and its mirror decoder layer; returns each layer's per-epoch reconstruction error.
    Raises ConfigError when the decoder does not mirror the encoder (e.g. maxout's wider layers)
    and TrainingDiverged when a free energy or reconstruction error is not finite."""
    enc, dec = linear_layers(encoder), linear_layers(decoder)[::-1]
    shapes = [(e.in_features, e.out_features) for e in enc]
    if len(enc) != len(dec) or shapes != [(d.out_features, d.in_features) for d in dec]:
        raise ConfigError(f"train.init = 'dbn': the decoder does not mirror the encoder {shapes} "
                          f"(activation {cfg.activation!r}; maxout widens its layers)")
    history: list[list[float]] = []
    data = v.detach()
    for index, (e, d) in enumerate(zip(enc, dec, strict=True)):
        layer = RbmLayer(e.in_features, e.out_features, gaussian=index == 0, gaussian_hidden=index == len(enc) - 1)
        nn.init.normal_(layer.linear.weight, std=_INIT_SD)
        nn.init.zeros_(layer.linear.bias)
        history.append(train_rbm(layer, data, cfg, name=f"{cfg.family} pretraining layer {index + 1}"))
        with torch.no_grad():
            e.weight.copy_(layer.linear.weight)
            e.bias.copy_(layer.linear.bias)
            d.weight.copy_(layer.linear.weight.T)
            d.bias.copy_(layer.visible_bias)
            data = layer.hidden_prob(data)
    return history


def train_rbm(layer: RbmLayer, data: torch.Tensor, cfg: TrainConfig, *, name: str) -> list[float]:
    """``cfg.pretrain_epochs`` epochs of CD-k on ``data``; returns the reconstruction error per epoch."""
    cd = ContrastiveDivergence(layer, cfg)
    opt = make_optimizer(list(layer.parameters()), cfg)
    errors: list[float] = []
    for epoch in range(cfg.pretrain_epochs):
        order = torch.randperm(len(data))
        for i in range(0, len(order), cfg.batch_size):
            loss = cd.loss(data[order[i:i + cfg.batch_size]])
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss + penalty(weight_matrices(layer), cfg))
            opt.step()
            check_finite(float(loss.detach()), "free energy", family=name, epoch=epoch)
        with torch.no_grad():
            error = float(torch.mean((layer.reconstruct(data) - data) ** 2))
        errors.append(check_finite(error, "the reconstruction error", family=name, epoch=epoch))
    return errors

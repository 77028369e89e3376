"""``rbm``: a Gaussian-Bernoulli restricted Boltzmann machine over the flattened window.

Visible units are the window's model-space values (unit variance: the preprocessing z-scores
them), hidden units are binary. Training is contrastive divergence (CD-k, ``train.k`` Gibbs
steps, optionally persistent chains): :meth:`Rbm.loss` is the free-energy gap
``mean F(data) - mean F(negatives)``, whose gradient is the CD update, so the usual optimisers,
momentum and L2 weight decay of the training loop apply unchanged. Validation monitors the
mean-field reconstruction error (:meth:`Rbm.monitor`).

The anomaly score is the free energy ``F(v) = 0.5 |v - b|^2 - sum_j softplus(c_j + W_j v)``
(a matmul, a softplus and sums: exported as is). :class:`models.base.Detector` turns it into
``F - min F(training windows)`` floored at 0, and each channel's score is its share of the visible
term ``0.5 |v - b|^2`` (measured per original channel in the scaled space; with PCA the residual
is included). :class:`RbmLayer` is also the building block of the DBN pretraining
(:mod:`models.dbn`): there the upper layers have Bernoulli visible units.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from models.base import Estimate, Family
from models.config import TrainConfig


class RbmLayer(nn.Module):
    """One RBM: ``linear`` holds ``W`` (hidden x visible) and the hidden bias ``c``; ``visible_bias`` is ``b``.

    ``gaussian``: unit-variance Gaussian visible units (else Bernoulli); ``gaussian_hidden``:
    unit-variance Gaussian hidden units (the linear code layer at the top of a DBN) instead of
    binary ones. Sampling uses torch's global generator (seeded by :func:`models.fit.deterministic`)."""

    def __init__(self, n_visible: int, n_hidden: int, *, gaussian: bool, gaussian_hidden: bool = False) -> None:
        super().__init__()
        self.gaussian = gaussian
        self.gaussian_hidden = gaussian_hidden
        self.linear = nn.Linear(n_visible, n_hidden)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """``(batch, visible)`` -> ``(batch,)``; lower means more probable under the model."""
        pre = self.linear(v)
        hidden = 0.5 * (pre ** 2).sum(dim=1) if self.gaussian_hidden else functional.softplus(pre).sum(dim=1)
        if self.gaussian:
            return 0.5 * ((v - self.visible_bias) ** 2).sum(dim=1) - hidden
        return -(v @ self.visible_bias) - hidden

    def hidden_prob(self, v: torch.Tensor) -> torch.Tensor:
        """``E[h | v]``: probabilities of the binary hidden units (the mean for Gaussian ones)."""
        pre = self.linear(v)
        return pre if self.gaussian_hidden else torch.sigmoid(pre)

    def sample_hidden(self, v: torch.Tensor) -> torch.Tensor:
        mean = self.hidden_prob(v)
        return mean + torch.randn_like(mean) if self.gaussian_hidden else torch.bernoulli(mean)

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        pre = h @ self.linear.weight + self.visible_bias
        return pre if self.gaussian else torch.sigmoid(pre)

    def reconstruct(self, v: torch.Tensor) -> torch.Tensor:
        """Mean-field reconstruction ``E[v | p(h | v)]`` (the monitored quantity)."""
        return self.visible_mean(self.hidden_prob(v))

    @torch.no_grad()
    def gibbs(self, v: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` rounds of h ~ p(h|v), v ~ p(v|h); the last visible step is its mean (less noise)."""
        for step in range(steps):
            mean = self.visible_mean(self.sample_hidden(v))
            if step == steps - 1:
                return mean
            v = mean + torch.randn_like(mean) if self.gaussian else torch.bernoulli(mean)
        return v


class ContrastiveDivergence:
    """CD-k (or persistent CD) loss for one :class:`RbmLayer`; holds the persistent chains, which
    are training state only (never saved or exported)."""

    def __init__(self, layer: RbmLayer, cfg: TrainConfig) -> None:
        self.layer = layer
        self.k = cfg.k
        self.persistent = cfg.persistent_cd
        self.chains: torch.Tensor | None = None

    def loss(self, v: torch.Tensor) -> torch.Tensor:
        """``mean F(v) - mean F(v_k)``: its gradient is the CD-k update. Persistent chains start at
        the first batch and continue from where the last update left them."""
        start = v
        if self.persistent:
            if self.chains is None or len(self.chains) < len(v):
                self.chains = v.detach().clone()
            start = self.chains[:len(v)]
        negative = self.layer.gibbs(start, self.k)
        if self.persistent and self.chains is not None:
            self.chains[:len(v)] = negative
        return self.layer.free_energy(v).mean() - self.layer.free_energy(negative).mean()


class Rbm(Family):
    energy_based = True
    objective = "free energy"
    monitor_name = "reconstruction_mse"

    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        self.rbm = RbmLayer(channels * window_length, config.hidden, gaussian=True)
        self.cd = ContrastiveDivergence(self.rbm, config)

    def estimate(self, z: torch.Tensor) -> Estimate:
        """Values: the visible bias as a window (the visible term is the error against it);
        extra: the free energy."""
        centre = self.rbm.visible_bias.reshape(1, *z.shape[1:]).expand_as(z)
        return Estimate(centre, 0, self.rbm.free_energy(z.flatten(1)))

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        return self.cd.loss(z.flatten(1))

    def monitor(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(1)
        return torch.mean((self.rbm.reconstruct(flat) - flat) ** 2)


def build(*, channels: int, window_length: int, config: TrainConfig) -> Rbm:
    return Rbm(channels=channels, window_length=window_length, config=config)

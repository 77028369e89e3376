"""``vae``: a dense variational autoencoder. Training maximises the ELBO (reconstruction MSE +
``beta`` x KL per element); scoring is deterministic: the reconstruction from the posterior mean,
with the KL divergence of the window's posterior as the extra term (together: the negative ELBO)."""

from __future__ import annotations

import torch

from models.base import Estimate, Family
from models.config import TrainConfig
from models.dense_ae import mlp


class Vae(Family):
    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        size = channels * window_length
        self.latent = config.latent
        self.beta = config.beta
        self.encoder = mlp(size, 2 * config.latent, config)
        self.decoder = mlp(config.latent, size, config)

    def estimate(self, z: torch.Tensor) -> Estimate:
        stats = self.encoder(z.flatten(1))
        mu, logvar = stats[:, :self.latent], stats[:, self.latent:].clamp(-10.0, 10.0)
        code = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(dim=1)
        return Estimate(self.decoder(code).reshape(z.shape), 0, kl)

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        est = self.estimate(z)
        assert est.extra is not None
        return torch.mean((est.values - z) ** 2) + self.beta * est.extra.mean() / z[0].numel()


def build(*, channels: int, window_length: int, config: TrainConfig) -> Vae:
    return Vae(channels=channels, window_length=window_length, config=config)

"""``tadgan``: TadGAN-style detector (Geiger et al. 2020), dense variant.

Encoder E (window -> latent), generator G (latent -> window), critic Cx on windows and Cz on
latent codes, trained as Wasserstein GANs with gradient penalty in both spaces plus a cycle
(reconstruction) loss ``x ~ G(E(x))``. The score mixes the reconstruction error of ``G(E(x))``
with the critic's verdict ``-Cx(x)`` (each standardised on training data by the head).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from models.base import AdversarialFamily, Estimate
from models.config import TrainConfig
from models.dense_ae import mlp

_GP_WEIGHT = 10.0
_CYCLE_WEIGHT = 10.0


def _gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)))
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    penalty: torch.Tensor = _GP_WEIGHT * ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    return penalty


class TadGan(AdversarialFamily):

    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        size = channels * window_length
        self.latent = config.latent
        plain = replace(config, batch_norm=False, dropout=0.0)  # batch norm breaks the gradient penalty
        self.encoder = mlp(size, config.latent, config)
        self.generator = mlp(config.latent, size, config)
        self.critic_x = mlp(size, 1, plain)
        self.critic_z = mlp(config.latent, 1, plain)

    def estimate(self, z: torch.Tensor) -> Estimate:
        flat = z.flatten(1)
        recon = self.generator(self.encoder(flat)).reshape(z.shape)
        return Estimate(recon, 0, -self.critic_x(flat).squeeze(1))

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.critic_x.parameters(), *self.critic_z.parameters()]

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.generator.parameters()]

    def critic_loss(self, z: torch.Tensor) -> torch.Tensor:
        real = z.flatten(1)
        prior = torch.randn(real.shape[0], self.latent)
        with torch.no_grad():
            fake = self.generator(prior)
            code = self.encoder(real)
        loss_x: torch.Tensor = self.critic_x(fake).mean() - self.critic_x(real).mean() + _gradient_penalty(self.critic_x, real, fake)
        loss_z: torch.Tensor = self.critic_z(code).mean() - self.critic_z(prior).mean() + _gradient_penalty(self.critic_z, prior, code)
        return loss_x + loss_z

    def generator_loss(self, z: torch.Tensor) -> torch.Tensor:
        real = z.flatten(1)
        prior = torch.randn(real.shape[0], self.latent)
        code = self.encoder(real)
        adversarial: torch.Tensor = -self.critic_x(self.generator(prior)).mean() - self.critic_z(code).mean()
        cycle = torch.mean((self.generator(code) - real) ** 2)
        return adversarial + _CYCLE_WEIGHT * cycle


def build(*, channels: int, window_length: int, config: TrainConfig) -> TadGan:
    return TadGan(channels=channels, window_length=window_length, config=config)

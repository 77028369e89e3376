"""``dense_ae``: a fully connected autoencoder over the flattened window. With ``init = "dbn"``
its layers are first pretrained greedily as a stack of RBMs (:mod:`models.dbn`)."""

from __future__ import annotations

import torch
from torch import nn

from models.base import Estimate, Family
from models.config import TrainConfig
from models.layers import dense_block


def mlp(n_in: int, n_out: int, cfg: TrainConfig) -> nn.Sequential:
    """``cfg.layers`` hidden blocks of ``cfg.hidden`` units, then a linear layer to ``n_out``."""
    parts: list[nn.Module] = []
    width = n_in
    for _ in range(cfg.layers):
        parts.append(dense_block(width, cfg.hidden, cfg))
        width = cfg.hidden
    parts.append(nn.Linear(width, n_out))
    return nn.Sequential(*parts)


class DenseAE(Family):
    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        size = channels * window_length
        self.encoder = mlp(size, config.latent, config)
        self.decoder = mlp(config.latent, size, config)

    def estimate(self, z: torch.Tensor) -> Estimate:
        out = self.decoder(self.encoder(z.flatten(1)))
        return Estimate(out.reshape(z.shape), 0, None)

    def pretrain(self, z: torch.Tensor, cfg: TrainConfig) -> list[list[float]]:
        if cfg.init != "dbn":
            return []
        from models.dbn import pretrain_unrolled  # only when asked: it pulls in the training loop

        return pretrain_unrolled(self.encoder, self.decoder, z.flatten(1), cfg)


def build(*, channels: int, window_length: int, config: TrainConfig) -> DenseAE:
    return DenseAE(channels=channels, window_length=window_length, config=config)

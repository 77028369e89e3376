"""``dbn_ae``: a deep belief network unrolled into a deep autoencoder.

Layers ``window -> hidden x layers -> latent`` and back, sigmoid hidden units (the RBMs'
conditionals), a linear code (the top RBM's Gaussian hidden units) and a linear output (the
Gaussian visible units' mean). Before the epochs start, the stack is
pretrained greedily as RBMs (:mod:`models.dbn`, ``pretrain_epochs``, CD-``k``); the epochs then
fine-tune it with backpropagation on the reconstruction error, like ``dense_ae``. The
``activation`` knob does not apply (sigmoid throughout); batch norm and dropout do.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from models.base import Estimate, Family
from models.config import TrainConfig
from models.dbn import pretrain_unrolled
from models.dense_ae import mlp


class DbnAe(Family):
    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        sigmoid = replace(config, activation="sigmoid")
        self.encoder = mlp(channels * window_length, config.latent, sigmoid)
        self.decoder = mlp(config.latent, channels * window_length, sigmoid)

    def estimate(self, z: torch.Tensor) -> Estimate:
        out = self.decoder(self.encoder(z.flatten(1)))
        return Estimate(out.reshape(z.shape), 0, None)

    def pretrain(self, z: torch.Tensor, cfg: TrainConfig) -> list[list[float]]:
        return pretrain_unrolled(self.encoder, self.decoder, z.flatten(1), cfg)


def build(*, channels: int, window_length: int, config: TrainConfig) -> DbnAe:
    return DbnAe(channels=channels, window_length=window_length, config=config)

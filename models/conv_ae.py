"""``conv_ae``: a 1D-convolutional autoencoder (two stride-2 convolutions down, two transposed up)."""

from __future__ import annotations

import torch
from torch import nn

from models.base import Estimate, Family
from models.config import TrainConfig
from models.layers import conv_block, widen


class ConvAE(Family):
    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        if window_length % 4:
            raise ValueError(f"conv_ae needs window_length divisible by 4, got {window_length}")
        k, pad, h, lat = config.kernel_size, config.kernel_size // 2, config.hidden, config.latent
        self.encoder = nn.Sequential(
            conv_block(nn.Conv1d(channels, widen(h, config), k, stride=2, padding=pad), h, config),
            conv_block(nn.Conv1d(h, widen(lat, config), k, stride=2, padding=pad), lat, config),
        )
        self.decoder = nn.Sequential(
            conv_block(nn.ConvTranspose1d(lat, widen(h, config), k, stride=2, padding=pad, output_padding=1), h, config),
            nn.ConvTranspose1d(h, channels, k, stride=2, padding=pad, output_padding=1),
        )

    def estimate(self, z: torch.Tensor) -> Estimate:
        out = self.decoder(self.encoder(z.transpose(1, 2))).transpose(1, 2)
        return Estimate(out, 0, None)


def build(*, channels: int, window_length: int, config: TrainConfig) -> ConvAE:
    return ConvAE(channels=channels, window_length=window_length, config=config)

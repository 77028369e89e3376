"""``lstm_ae``: LSTM encoder-decoder. The encoder's last state (both directions when
``bidirectional``) goes through a dense bottleneck, is repeated over time and decoded by a
second LSTM; ``layers`` stacks LSTM layers (dropout between them)."""

from __future__ import annotations

import torch
from torch import nn

from models.base import Estimate, Family
from models.config import TrainConfig
from models.layers import dense_block


class LstmAE(Family):
    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        dirs = 2 if config.bidirectional else 1
        between = config.dropout if config.layers > 1 else 0.0
        self.dirs = dirs
        self.encoder = nn.LSTM(channels, config.hidden, num_layers=config.layers, batch_first=True,
                               bidirectional=config.bidirectional, dropout=between)
        self.bottleneck = dense_block(dirs * config.hidden, config.latent, config)
        self.decoder = nn.LSTM(config.latent, config.hidden, num_layers=config.layers, batch_first=True,
                               bidirectional=config.bidirectional, dropout=between)
        self.out = nn.Linear(dirs * config.hidden, channels)

    def estimate(self, z: torch.Tensor) -> Estimate:
        _, (h_n, _) = self.encoder(z)
        last = h_n[-self.dirs:].transpose(0, 1).flatten(1)
        code = self.bottleneck(last)
        decoded, _ = self.decoder(code.unsqueeze(1).expand(-1, z.shape[1], -1))
        return Estimate(self.out(decoded), 0, None)


def build(*, channels: int, window_length: int, config: TrainConfig) -> LstmAE:
    return LstmAE(channels=channels, window_length=window_length, config=config)

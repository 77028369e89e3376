"""``lstm_forecast``: an LSTM that predicts the next step from every prefix of the window;
the window is scored by the error of those next-step forecasts (steps 1 .. window-1)."""

from __future__ import annotations

import torch
from torch import nn

from edge.contract.errors import ConfigError
from models.base import Estimate, Family
from models.config import TrainConfig
from models.layers import dense_block


class LstmForecast(Family):
    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        if config.bidirectional:
            raise ConfigError("train.bidirectional: a forecaster cannot read the future; use lstm_ae")
        self.lstm = nn.LSTM(channels, config.hidden, num_layers=config.layers, batch_first=True,
                            dropout=config.dropout if config.layers > 1 else 0.0)
        self.head = nn.Sequential(dense_block(config.hidden, config.hidden, config, sequence=True),
                                  nn.Linear(config.hidden, channels))

    def estimate(self, z: torch.Tensor) -> Estimate:
        states, _ = self.lstm(z[:, :-1])
        return Estimate(self.head(states), 1, None)


def build(*, channels: int, window_length: int, config: TrainConfig) -> LstmForecast:
    return LstmForecast(channels=channels, window_length=window_length, config=config)

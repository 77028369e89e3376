"""Building blocks shared by the families: activations (maxout included), hidden blocks with
optional batch norm and dropout, weight initialisation and the max-norm constraint."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from models.config import TrainConfig


class Maxout(nn.Module):
    """Max over ``pieces`` consecutive features of ``dim`` (the layer before is ``pieces`` times wider)."""

    def __init__(self, pieces: int, dim: int) -> None:
        super().__init__()
        self.pieces = pieces
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim % x.dim()
        pieces: torch.Tensor = torch.unflatten(x, dim, (-1, self.pieces))
        return pieces.amax(dim + 1)


class SeqBatchNorm(nn.Module):
    """Batch norm over the feature axis of ``(batch, time, features)``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed: torch.Tensor = self.norm(x.transpose(1, 2))
        return normed.transpose(1, 2)


def activation(cfg: TrainConfig, *, dim: int = -1) -> nn.Module:
    """The configured activation; ``maxout`` reduces ``dim`` by ``cfg.maxout_pieces``."""
    name = cfg.activation
    if name == "maxout":
        return Maxout(cfg.maxout_pieces, dim)
    table: dict[str, nn.Module] = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01), "elu": nn.ELU(),
                                   "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}
    return table[name]


def widen(units: int, cfg: TrainConfig) -> int:
    """Width the layer before an activation needs (maxout needs ``pieces`` x units)."""
    return units * cfg.maxout_pieces if cfg.activation == "maxout" else units


def dense_block(n_in: int, n_out: int, cfg: TrainConfig, *, sequence: bool = False) -> nn.Sequential:
    """Linear -> [batch norm] -> activation -> [dropout]; ``sequence`` for (batch, time, features) input."""
    wide = widen(n_out, cfg)
    parts: list[nn.Module] = [nn.Linear(n_in, wide)]
    if cfg.batch_norm:
        parts.append(SeqBatchNorm(wide) if sequence else nn.BatchNorm1d(wide))
    parts.append(activation(cfg, dim=-1))
    if cfg.dropout > 0:
        parts.append(nn.Dropout(cfg.dropout))
    return nn.Sequential(*parts)


def conv_block(conv: nn.Module, out_channels: int, cfg: TrainConfig) -> nn.Sequential:
    """conv (already ``widen``-ed) -> [batch norm] -> activation over channels -> [dropout]."""
    parts: list[nn.Module] = [conv]
    if cfg.batch_norm:
        parts.append(nn.BatchNorm1d(widen(out_channels, cfg)))
    parts.append(activation(cfg, dim=1))
    if cfg.dropout > 0:
        parts.append(nn.Dropout(cfg.dropout))
    return nn.Sequential(*parts)


def init_weights(module: nn.Module, cfg: TrainConfig) -> None:
    """Initialise every weight matrix (Linear, Conv, LSTM) by ``cfg.init``; biases to zero.

    Kaiming uses the gain of the configured activation (leaky_relu's slope, relu otherwise)."""
    nonlinearity: Literal["leaky_relu", "relu"] = "leaky_relu" if cfg.activation == "leaky_relu" else "relu"
    for name, p in module.named_parameters():
        if p.dim() < 2:
            if name.endswith("bias") or "bias" in name.rsplit(".", 1)[-1]:
                nn.init.zeros_(p)
            continue
        if isinstance(_owner(module, name), nn.modules.batchnorm._BatchNorm):
            continue
        if cfg.init in ("xavier_uniform", "dbn"):  # dbn: pretraining later overwrites what it covers
            nn.init.xavier_uniform_(p)
        elif cfg.init == "xavier_normal":
            nn.init.xavier_normal_(p)
        elif cfg.init == "kaiming_uniform":
            nn.init.kaiming_uniform_(p, a=0.01 if nonlinearity == "leaky_relu" else 0.0, nonlinearity=nonlinearity)
        else:
            nn.init.kaiming_normal_(p, a=0.01 if nonlinearity == "leaky_relu" else 0.0, nonlinearity=nonlinearity)


def _owner(module: nn.Module, param_name: str) -> nn.Module:
    return module.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else module


def weight_matrices(module: nn.Module) -> list[nn.Parameter]:
    """Parameters the L1/L2/max-norm knobs act on: every weight with two or more dimensions."""
    return [p for p in module.parameters() if p.dim() >= 2]


@torch.no_grad()
def apply_max_norm(params: list[nn.Parameter], limit: float) -> None:
    """Rescale each unit's incoming weight vector (row of the first axis) to L2 norm <= ``limit``."""
    for p in params:
        p.copy_(torch.renorm(p, 2, 0, limit))


def penalty(params: list[nn.Parameter], cfg: TrainConfig) -> torch.Tensor:
    """L1 and L2 penalties on the given weights (zero tensor when both are off)."""
    total = torch.zeros(())
    if cfg.l1 > 0:
        total = total + cfg.l1 * sum((p.abs().sum() for p in params), torch.zeros(()))
    if cfg.l2 > 0:
        total = total + cfg.l2 * sum((p.pow(2).sum() for p in params), torch.zeros(()))
    return total

"""The family interface and the full exported graph (preprocessing -> family -> scoring head).

A family sees windows in model space ``z`` ``(batch, time, k)`` and returns an
:class:`Estimate` of ``z[:, start:]`` (a reconstruction, or a forecast of the next steps) plus an
optional per-window extra term (the TadGAN critic, the VAE KL divergence). :class:`Detector`
measures the error per original channel in the scaled space and turns it into ``score`` and
``channel_scores``; its statistics are fitted after training by :func:`fit_head`. An
energy-based family (``rbm``) returns its free energy as the extra term and its visible bias as
the estimate: the score is then the energy itself (see :class:`Detector`).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from edge.adaptive import UNIT_FLOOR
from models.config import ScoreMode, TrainConfig
from models.preprocess import Preprocessor

_LOG_EPS = 1e-6


class Estimate(NamedTuple):
    values: torch.Tensor  # estimate of z[:, start:], (batch, time - start, k)
    start: int
    extra: torch.Tensor | None  # (batch,) higher = more anomalous, or None


class Family(nn.Module):
    """Base of every model family. Subclasses implement :meth:`estimate`; adversarial ones
    derive from :class:`AdversarialFamily` instead."""

    energy_based: ClassVar[bool] = False  # score = the extra term (a free energy), see Detector
    objective: ClassVar[str] = "loss"  # what :meth:`loss` is, for error messages
    monitor_name: ClassVar[str] = "loss"  # what :meth:`monitor` is, for the training report
    uses_labels: ClassVar[bool] = False  # trains on labelled windows too; the extra term is a logit (see Detector)

    def estimate(self, z: torch.Tensor) -> Estimate:
        raise NotImplementedError

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """Training/validation loss on a model-space batch (mean squared error by default)."""
        est = self.estimate(z)
        return torch.mean((est.values - z[:, est.start:]) ** 2)

    def monitor(self, z: torch.Tensor) -> torch.Tensor:
        """Validation figure (lower is better; early stopping watches it): the loss by default,
        the reconstruction error where the loss is a sampled objective (contrastive divergence)."""
        return self.loss(z)

    def pretrain(self, z: torch.Tensor, cfg: TrainConfig) -> list[list[float]]:
        """Unsupervised pretraining on the model-space training windows ``(batch, time, k)``, called
        once before the epochs (greedy RBM layers for ``dbn_ae`` and ``dense_ae`` with
        ``init = "dbn"``); returns each layer's per-epoch reconstruction error. Nothing by default."""
        return []

    def supervised_loss(self, z: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor) -> torch.Tensor:
        """Cost on labelled model-space windows ``z`` with 0/1 ``labels`` (and an unlabelled batch),
        added to :meth:`loss` by the trainer; only families with ``uses_labels`` implement it."""
        raise NotImplementedError


class AdversarialFamily(Family):
    """A family trained as a GAN (TadGAN): the trainer steps the critic ``n_critic`` times per
    generator step, each on its own parameters and loss, instead of minimising :meth:`loss`."""

    def critic_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def generator_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def critic_loss(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Detector(nn.Module):
    """Raw windows ``(batch, window, channels)`` -> ``score (batch,)``, ``channel_scores (batch, channels)``.

    ``log_z``: each channel's mean squared error ``e_c`` becomes ``((log(e_c + eps) - mu_c) / sd_c)^2``
    (two-sided: a channel reconstructed unusually *well*, e.g. a stuck sensor, also scores);
    ``mse``: ``e_c`` itself. With a drift-invariant window transform and ``level_weight`` > 0,
    ``e_c`` first gains ``level_weight x level_c^2`` (the window's scaled mean, see
    :meth:`Preprocessor.level`), so a level far from training still counts, down-weighted. The
    extra term enters as ``w * ((x - mu) / sd)^2``. Channel scores are each channel's share of the
    channel part (non-negative, summing to 1). Never mutates input.

    An energy-based family ignores ``score_mode`` and the extra weight: the score is its free
    energy minus the lowest free energy of the training windows, floored at 0 (nats above the
    most probable training window), and channel scores are each channel's share of the error
    against the family's estimate (for ``rbm``: of the visible term).

    A family that uses labels (``ladder``) returns its classifier's logit as the extra term: it adds
    ``extra_weight x softplus(logit)`` (``-log(1 - P(anomaly))``, one-sided) to the channel part.
    """

    err_mu: torch.Tensor
    err_sd: torch.Tensor
    extra_mu: torch.Tensor
    extra_sd: torch.Tensor
    energy_floor: torch.Tensor  # energy-based families only

    def __init__(self, pre: Preprocessor, net: Family, *, channels: int, score_mode: ScoreMode, extra_weight: float,
                 level_weight: float = 0.0) -> None:
        super().__init__()
        self.pre = pre
        self.net = net
        self.score_mode = score_mode
        self.extra_weight = extra_weight
        self.level_weight = level_weight
        self.register_buffer("err_mu", torch.zeros(channels))
        self.register_buffer("err_sd", torch.ones(channels))
        self.register_buffer("extra_mu", torch.zeros(1))
        self.register_buffer("extra_sd", torch.ones(1))
        if net.energy_based:  # only then: other families keep their checkpoint keys
            self.register_buffer("energy_floor", torch.zeros(1))

    def parts(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-channel mean squared error ``(batch, channels)`` and the raw extra term."""
        s, z = self.pre(windows)
        est = self.net.estimate(z)
        err = ((s[:, est.start:] - self.pre.to_scaled(est.values)) ** 2).mean(dim=1)
        if self.level_weight > 0:
            err = err + self.level_weight * self.pre.level(windows) ** 2
        return err, est.extra

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        err, extra = self.parts(windows)
        if self.net.energy_based and extra is not None:
            return torch.clamp(extra - self.energy_floor, min=0.0), err / (err.sum(dim=1, keepdim=True) + 1e-12)
        if self.score_mode == "log_z":
            d = ((torch.log(err + _LOG_EPS) - self.err_mu) / self.err_sd) ** 2
        else:
            d = err
        channel_part = d.sum(dim=1)
        score = channel_part
        if self.net.uses_labels and extra is not None:
            score = score + self.extra_weight * functional.softplus(extra)
        elif extra is not None and self.extra_weight > 0:
            score = score + self.extra_weight * ((extra - self.extra_mu) / self.extra_sd) ** 2
        return score, d / (channel_part.unsqueeze(1) + 1e-12)


@torch.no_grad()
def fit_head(detector: Detector, windows: np.ndarray, batch: int = 4096) -> None:
    """Fit the head's statistics on training windows (call in eval mode, after training)."""
    errs: list[torch.Tensor] = []
    extras: list[torch.Tensor] = []
    for i in range(0, len(windows), batch):
        err, extra = detector.parts(torch.as_tensor(windows[i:i + batch], dtype=torch.float32))
        errs.append(err)
        if extra is not None:
            extras.append(extra)
    log_err = torch.log(torch.cat(errs) + _LOG_EPS)
    detector.err_mu.copy_(log_err.mean(dim=0))
    detector.err_sd.copy_(log_err.std(dim=0).clamp_min(1e-3))
    if extras:
        extra = torch.cat(extras)
        detector.extra_mu.copy_(extra.mean().reshape(1))
        detector.extra_sd.copy_(extra.std().clamp_min(1e-6).reshape(1))
        if detector.net.energy_based:
            detector.energy_floor.copy_(extra.min().reshape(1))


class Ensemble(nn.Module):
    """Member detectors of one family as one graph (``train.members``): raw windows -> ``score``,
    the median over members of each member's score divided by its threshold (a 2-of-3 vote on the
    members' fixed thresholds is ``score > 1``), ``channel_scores``, the members' mean shares, and
    ``member_scores (batch, members)``, each member's own score, which the agent decides member by
    member with its own adaptive threshold (:class:`edge.adaptive.EnsembleLayer`)."""

    thresholds: torch.Tensor

    def __init__(self, members: list[Detector], thresholds: list[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("thresholds", torch.tensor([max(t, UNIT_FLOOR) for t in thresholds], dtype=torch.float32))

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outs = [member(windows) for member in self.members]
        member_scores = torch.stack([o[0] for o in outs], dim=1)
        calibrated = torch.sort(member_scores / self.thresholds, dim=1).values
        return calibrated[:, len(outs) // 2], torch.stack([o[1] for o in outs]).mean(dim=0), member_scores

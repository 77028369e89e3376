"""The training loop: optimisers, learning-rate decay, L1/L2/max-norm, early stopping, and the
adversarial schedule for families that have a critic. Runs on the calling thread and blocks."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from edge.contract.errors import EdgewatchError
from models.base import AdversarialFamily, Detector, Family
from models.config import TrainConfig
from models.layers import apply_max_norm, penalty

log = logging.getLogger(__name__)


class TrainingDiverged(EdgewatchError):
    """A training objective or monitor became NaN or infinite (e.g. an RBM's free energy): training
    stops at once, so nothing is calibrated, exported or written."""


class LabelledWindows(NamedTuple):
    """Raw windows ``(n, window, channels)`` with 0/1 labels ``(n,)`` (1 = anomaly), for families that
    use labels (``ladder``); every other family ignores them."""

    windows: np.ndarray
    labels: np.ndarray


class _LabelledBatches:
    """Labelled model-space windows drawn in shuffled batches, cycling (a few labels meet many
    unlabelled batches); its own seeded generator, so families without labels draw nothing."""

    def __init__(self, z: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        self.z, self.labels, self.size = z, labels, min(batch_size, len(z))
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.order = torch.empty(0, dtype=torch.long)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.order) < self.size:
            self.order = torch.randperm(len(self.z), generator=self.generator)
        take, self.order = self.order[:self.size], self.order[self.size:]
        return self.z[take], self.labels[take]


@dataclass
class History:
    """Per-epoch losses (validation is the family's monitor: its reconstruction/forecast loss, or
    for ``rbm`` the mean-field reconstruction error ``monitor``) and learning rates; ``pretrain_loss``
    holds each pretrained layer's per-epoch reconstruction error (DBN pretraining)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    monitor: str = "loss"
    pretrain_loss: list[list[float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    momentum = 0.0 if cfg.optimizer == "sgd" else cfg.momentum
    return torch.optim.SGD(params, lr=cfg.lr, momentum=momentum, nesterov=cfg.optimizer == "nesterov")


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: constant, step (x decay_rate every decay_steps), exponential, 1/t."""
    sched = torch.optim.lr_scheduler
    if cfg.lr_decay == "step":
        return sched.StepLR(opt, step_size=cfg.decay_steps, gamma=cfg.decay_rate)
    if cfg.lr_decay == "exponential":
        return sched.ExponentialLR(opt, gamma=cfg.decay_rate)
    if cfg.lr_decay == "inverse_time":
        rate = cfg.decay_rate
        return sched.LambdaLR(opt, lambda epoch: 1.0 / (1.0 + rate * epoch))
    return sched.LambdaLR(opt, lambda epoch: 1.0)


class _Group:
    """One optimiser over one set of parameters, with its regularisers."""

    def __init__(self, params: list[nn.Parameter], cfg: TrainConfig) -> None:
        self.params = params
        self.weights = [p for p in params if p.dim() >= 2]
        self.cfg = cfg
        self.opt = make_optimizer(params, cfg)
        self.sched = make_scheduler(self.opt, cfg)

    def step(self, loss: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        total = loss + penalty(self.weights, self.cfg)
        torch.autograd.backward(total)
        self.opt.step()
        if self.cfg.max_norm > 0:
            apply_max_norm(self.weights, self.cfg.max_norm)
        return float(total.detach())


def check_finite(value: float, what: str, *, family: str, epoch: int) -> float:
    """``value`` if finite, else raise :class:`TrainingDiverged` naming the family, epoch and value."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"{family} training diverged in epoch {epoch + 1}: {what} is {value} "
                               "(lower train.lr, raise train.l2 or use train.optimizer = adam)")
    return value


def train_family(detector: Detector, windows: np.ndarray, cfg: TrainConfig, *, progress: bool = False,
                 pretrain: bool = True, labelled: LabelledWindows | None = None) -> History:
    """Train ``detector.net`` on raw ``windows`` (preprocessing already fitted), after the
    family's own pretraining when ``pretrain`` (off when fine-tuning from earlier weights).
    Validation is the last ``validation_split`` share of windows, measured by the family's
    monitor; with early stopping the best epoch's weights are restored. ``labelled`` windows are
    used only by a family with ``uses_labels``: each step then adds ``supervised_weight`` x its
    supervised cost on a batch of them (and the unlabelled batch). A non-finite loss or
    monitor raises :class:`TrainingDiverged` at once. Leaves the detector in eval mode."""
    started = time.perf_counter()
    net: Family = detector.net
    with torch.no_grad():
        _, z_all = detector.pre(torch.as_tensor(windows, dtype=torch.float32))
    n_val = int(len(z_all) * cfg.validation_split)
    z_train, z_val = z_all[:len(z_all) - n_val], z_all[len(z_all) - n_val:]
    if len(z_train) < 2:
        raise ValueError(f"need at least 2 training windows, got {len(z_train)}")
    gan = net if isinstance(net, AdversarialFamily) else None
    if gan is not None:
        groups = {"critic": _Group(gan.critic_parameters(), cfg), "generator": _Group(gan.generator_parameters(), cfg)}
    else:
        groups = {"net": _Group(list(net.parameters()), cfg)}
    shuffle = torch.Generator().manual_seed(cfg.seed)
    supervised = None
    if labelled is not None and len(labelled.labels) and net.uses_labels and cfg.supervised_weight > 0:
        with torch.no_grad():
            _, z_labelled = detector.pre(torch.as_tensor(labelled.windows, dtype=torch.float32))
        supervised = _LabelledBatches(z_labelled, torch.as_tensor(labelled.labels, dtype=torch.float32), cfg.batch_size, cfg.seed)
    history = History(monitor=net.monitor_name)
    if pretrain:
        history.pretrain_loss = net.pretrain(z_train, cfg)
    best_loss, best_state, waited = float("inf"), None, 0
    bar = tqdm(range(cfg.epochs), desc=f"train {cfg.family}", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        net.train()
        history.lr.append(groups["generator" if gan is not None else "net"].opt.param_groups[0]["lr"])
        order = torch.randperm(len(z_train), generator=shuffle)
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            batch = z_train[order[i:i + cfg.batch_size]]
            if len(batch) < 2:
                continue  # batch norm cannot train on one sample
            if gan is not None:
                for _ in range(cfg.n_critic):
                    groups["critic"].step(gan.critic_loss(batch))
                losses.append(groups["generator"].step(gan.generator_loss(batch)))
            else:
                loss = net.loss(batch)
                if supervised is not None:
                    loss = loss + cfg.supervised_weight * net.supervised_loss(*supervised.next(), batch)
                losses.append(check_finite(groups["net"].step(loss), net.objective, family=cfg.family, epoch=epoch))
        for group in groups.values():
            group.sched.step()
        history.train_loss.append(float(np.mean(losses)))
        net.eval()
        monitored = history.train_loss[-1]
        if n_val:
            monitored = check_finite(_evaluate(net, z_val, cfg.batch_size), f"the validation {net.monitor_name}",
                                     family=cfg.family, epoch=epoch)
            history.val_loss.append(monitored)
        elif net.monitor_name != "loss":  # a sampled objective is no stopping criterion: monitor the training windows
            monitored = check_finite(_evaluate(net, z_train, cfg.batch_size), net.monitor_name, family=cfg.family, epoch=epoch)
        bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}", val=f"{monitored:.4g}")
        if monitored < best_loss - cfg.min_delta:
            best_loss, waited, history.best_epoch = monitored, 0, epoch
            if cfg.early_stopping:
                best_state = copy.deepcopy(net.state_dict())
        else:
            waited += 1
            if cfg.early_stopping and waited >= cfg.early_stopping:
                history.stopped_early = True
                log.info("training_stopped_early epoch=%d best_epoch=%d", epoch, history.best_epoch)
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    detector.eval()
    history.seconds = time.perf_counter() - started
    log.info("training_finished family=%s epochs=%d seconds=%.1f", cfg.family, len(history.train_loss), history.seconds)
    return history


@torch.no_grad()
def _evaluate(net: Family, z: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    for i in range(0, len(z), batch_size):
        chunk = z[i:i + batch_size]
        total += float(net.monitor(chunk)) * len(chunk)
    return total / len(z)


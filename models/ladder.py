"""``ladder``: a Ladder network (Rasmus et al. 2015) for semi-supervised detection.

Encoder ``window -> hidden x layers -> latent`` (linear, batch normalisation, then a learned
shift and scale and the activation; the top layer is linear), run twice in training: a clean
path and a noisy path with Gaussian noise (``noise_std``) added to the input and to every
normalised pre-activation. A denoising decoder goes top-down: each layer combines the noisy
encoder value it receives through a lateral connection with the normalised top-down signal
``u`` through the vanilla combinator ``z_hat = (z_tilde - mu(u)) * v(u) + mu(u)``. The
unsupervised cost (:meth:`Ladder.loss`) is the input layer's reconstruction error plus
``layer_cost_weight`` x each hidden and the top layer's, against the clean path's normalised
values (the paper's second normalisation of the decoder's values is left out: with a constant
unit it divides by zero). Validation monitors the clean path's reconstruction error, which is
what the score measures. The supervised cost (:meth:`Ladder.supervised_loss`) is a logistic classifier on the
noisy top layer, trained only when labelled windows are given (see :func:`models.train.train_family`).

At score time the graph holds the clean encoder, the classifier and the decoder's input layer
fed by the clean path: :meth:`Ladder.estimate` returns the denoised input (the per-channel
error against it is the unsupervised term of the score) and the classifier's logit as the
extra term; :class:`models.base.Detector` adds ``extra_score_weight x softplus(logit)``
(``-log(1 - P(anomaly))``). The classifier starts at zero, so with no labels the extra term is
the constant ``log 2`` and the score ranks by reconstruction alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from models.base import Estimate, Family
from models.config import TrainConfig
from models.layers import activation

_EPS = 1e-2  # a constant unit (a flat series) must not blow the running statistics up by 1/sqrt(eps)


class RunningNorm(nn.Module):
    """Batch normalisation without affine terms whose running statistics only the clean path updates
    (the noisy path must not shift them); eval mode uses the running statistics (exported)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x: torch.Tensor, *, update: bool = False) -> torch.Tensor:
        if not self.training:
            return (x - self.running_mean) / torch.sqrt(self.running_var + _EPS)
        mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
        if update:
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(x.var(dim=0, unbiased=True), self.momentum)
        return (x - mean) / torch.sqrt(var + _EPS)


class Combinator(nn.Module):
    """The vanilla combinator ``g(z_tilde, u)``: ten per-unit parameters, initialised as in the paper
    (``a2 = a7 = 1``, the rest 0)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        init = torch.zeros(10, size)
        init[1] = init[6] = 1.0
        self.a = nn.Parameter(init)

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        a = self.a
        mu = a[0] * torch.sigmoid(a[1] * u + a[2]) + a[3] * u + a[4]
        v = a[5] * torch.sigmoid(a[6] * u + a[7]) + a[8] * u + a[9]
        return (z - mu) * v + mu


class _Pass:
    """One encoder pass: per layer the (noisy) normalised pre-activation ``z`` (the input itself at
    layer 0), and the top layer's output."""

    def __init__(self) -> None:
        self.z: list[torch.Tensor] = []
        self.top = torch.empty(0)


class Ladder(Family):
    uses_labels = True
    objective = "denoising cost"
    monitor_name = "clean_reconstruction_mse"

    def __init__(self, *, channels: int, window_length: int, config: TrainConfig) -> None:
        super().__init__()
        sizes = [channels * window_length] + [config.hidden] * config.layers + [config.latent]
        self.sizes = sizes
        self.noise_std = config.noise_std
        self.layer_cost_weight = config.layer_cost_weight
        self.weights = nn.ModuleList([nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.norms = nn.ModuleList([RunningNorm(b) for b in sizes[1:]])
        self.shift = nn.ParameterList([nn.Parameter(torch.zeros(b)) for b in sizes[1:]])
        self.scale = nn.ParameterList([nn.Parameter(torch.ones(b)) for b in sizes[1:]])
        self.act = activation(config)
        self.top_down = nn.ModuleList([nn.Linear(b, a, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.top_down_norms = nn.ModuleList([RunningNorm(s) for s in sizes])
        self.combinators = nn.ModuleList([Combinator(s) for s in sizes])
        self.classifier_weight = nn.Parameter(torch.zeros(config.latent))  # 1-D: init_weights leaves it at 0
        self.classifier_bias = nn.Parameter(torch.zeros(1))

    def _encode(self, x: torch.Tensor, *, noise: float, update: bool) -> _Pass:
        out = _Pass()
        h = x + noise * torch.randn_like(x) if noise else x
        out.z.append(h)
        top = len(self.weights) - 1
        for i, (linear, norm) in enumerate(zip(self.weights, self.norms, strict=True)):
            pre = linear(h)
            z = norm(pre, update=update)
            if noise:
                z = z + noise * torch.randn_like(z)
            out.z.append(z)
            h = self.scale[i] * (z + self.shift[i])
            if i < top:
                h = self.act(h)
        out.top = h
        return out

    def _logit(self, top: torch.Tensor) -> torch.Tensor:
        return top @ self.classifier_weight + self.classifier_bias

    def _decode(self, noisy: _Pass, *, update: bool = False) -> list[torch.Tensor]:
        """Denoised values of every layer, top first; ``update`` moves the running statistics of the
        top-down normalisations (from the clean path, which is what they see at score time)."""
        top = len(self.sizes) - 1
        out: list[torch.Tensor] = []
        z_hat = noisy.top
        for layer in range(top, -1, -1):
            signal = z_hat if layer == top else self.top_down[layer](z_hat)
            u = self.top_down_norms[layer](signal, update=update)
            z_hat = self.combinators[layer](noisy.z[layer], u)
            out.append(z_hat)
        return out

    def estimate(self, z: torch.Tensor) -> Estimate:
        """Clean path only: the denoised input (decoder fed by the clean encoder) and the logit."""
        clean = self._encode(z.flatten(1), noise=0.0, update=False)
        denoised = self._decode(clean)[-1]
        return Estimate(denoised.reshape(z.shape), 0, self._logit(clean.top))

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        """Per-layer denoising costs: input layer weight 1, hidden and top layers ``layer_cost_weight``."""
        x = z.flatten(1)
        clean = self._encode(x, noise=0.0, update=True)
        with torch.no_grad():
            self._decode(clean, update=True)
        noisy = self._encode(x, noise=self.noise_std, update=False)
        decoded = self._decode(noisy)[::-1]  # input layer first
        cost = torch.mean((decoded[0] - x) ** 2)
        for layer in range(1, len(self.sizes)):
            cost = cost + self.layer_cost_weight * torch.mean((decoded[layer] - clean.z[layer].detach()) ** 2)
        return cost

    def monitor(self, z: torch.Tensor) -> torch.Tensor:
        """The error the score is made of (clean path, no noise): deterministic, and a unit that was
        constant in training cannot turn validation noise into an overflow."""
        est = self.estimate(z)
        return torch.mean((est.values - z) ** 2)

    def supervised_loss(self, z: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor) -> torch.Tensor:
        """Class-balanced cross-entropy of the noisy path's classifier: half on the labelled anomalies
        (``labels == 1``), half on the normals (labelled normals and the unlabelled batch, which the
        archive makes overwhelmingly normal); a class that is absent contributes nothing."""
        windows = torch.cat([z, unlabelled]).flatten(1)
        target = torch.cat([labels.float(), torch.zeros(len(unlabelled))])
        logits = self._logit(self._encode(windows, noise=self.noise_std, update=False).top)
        each = functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        positive = target > 0.5
        parts = [each[mask].mean() for mask in (positive, ~positive) if bool(mask.any())]
        return torch.stack(parts).mean()


def build(*, channels: int, window_length: int, config: TrainConfig) -> Ladder:
    return Ladder(channels=channels, window_length=window_length, config=config)

"""Preprocessing fitted on training rows only and carried inside the exported graph.

Raw readings ``x`` -> scaled ``s = (x - center) / scale`` (none, center, zscore or minmax; the
scale optionally floored at a share of the channel's mean absolute level) -> per-window transform
(none; ``center``: subtract each window's per-channel mean; ``diff``: first differences, the
first step 0) -> model space ``z = (s - mean) @ proj`` (identity, PCA to k components,
optionally whitened). :meth:`Preprocessor.to_scaled` maps a model-space estimate back to the
(transformed) scaled space, where reconstruction errors are measured per original channel (the
PCA residual included). :meth:`Preprocessor.level` is each window's per-channel mean in the
scaled space, the part a drift-invariant transform discards (the detector may add it back,
down-weighted). The window transform is a plain attribute, not a buffer: checkpoints keep
their keys, and ``window_transform = "none"`` exports exactly the graph it did before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.config import Scaling, WindowTransform

_EPS = 1e-8


class Preprocessor(nn.Module):
    """Fitted transform as buffers, so it is saved with the weights and exported in the graph."""

    center: torch.Tensor
    scale: torch.Tensor
    mean: torch.Tensor
    proj: torch.Tensor
    back: torch.Tensor

    def __init__(self, channels: int, components: int, *, window_transform: WindowTransform = "none") -> None:
        super().__init__()
        self.window_transform: WindowTransform = window_transform
        self.register_buffer("center", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("proj", torch.eye(channels, components))
        self.register_buffer("back", torch.eye(components, channels))

    @property
    def components(self) -> int:
        return int(self.proj.shape[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, time, channels)`` raw -> (scaled, model space)."""
        s = self.transform((x - self.center) / self.scale)
        return s, (s - self.mean) @ self.proj

    def transform(self, s: torch.Tensor) -> torch.Tensor:
        """The per-window transform of scaled windows ``(batch, time, channels)``."""
        if self.window_transform == "center":
            return s - s.mean(dim=1, keepdim=True)
        if self.window_transform == "diff":
            return torch.cat([torch.zeros_like(s[:, :1]), s[:, 1:] - s[:, :-1]], dim=1)
        return s

    def level(self, x: torch.Tensor) -> torch.Tensor:
        """Each raw window's per-channel mean in the scaled space, ``(batch, channels)``."""
        return ((x - self.center) / self.scale).mean(dim=1)

    def to_scaled(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.back + self.mean


def fit_preprocessor(rows: np.ndarray, *, mode: Scaling, components: int = 0, whiten: bool = False, scale_floor: float = 0.0,
                     window_transform: WindowTransform = "none", window_length: int = 0) -> Preprocessor:
    """Fit on ``(n, channels)`` training rows. ``components`` 0 keeps every channel (no PCA
    unless ``whiten``, which then whitens all components). Deterministic (sign-fixed eigenvectors).
    ``scale_floor`` > 0 (zscore, minmax): each channel's scale is at least that share of its mean
    absolute training reading, so a near-constant channel does not turn small drifts into huge
    scaled values. With a ``window_transform``, PCA is fitted on the transformed training windows
    of ``window_length`` rows (stride half a window)."""
    rows = np.asarray(rows, dtype=np.float64)
    n_channels = rows.shape[1]
    if components > n_channels:
        raise ValueError(f"pca_components {components} exceeds the {n_channels} channels")
    center = np.zeros(n_channels)
    scale = np.ones(n_channels)
    if mode in ("center", "zscore"):
        center = rows.mean(axis=0)
    if mode == "zscore":
        scale = rows.std(axis=0)
    elif mode == "minmax":
        center = rows.min(axis=0)
        scale = rows.max(axis=0) - center
    if scale_floor > 0 and mode in ("zscore", "minmax"):
        scale = np.maximum(scale, scale_floor * np.abs(rows).mean(axis=0))
    scale = np.where(scale > _EPS, scale, 1.0)
    scaled = (rows - center) / scale
    if window_transform != "none" and (components or whiten):
        if not 2 <= window_length <= len(scaled):
            raise ValueError(f"window_length {window_length} does not fit {len(scaled)} rows for a {window_transform} transform")
        step = max(1, window_length // 2)
        windows = np.stack([scaled[i:i + window_length] for i in range(0, len(scaled) - window_length + 1, step)])
        rep = Preprocessor(n_channels, n_channels, window_transform=window_transform)
        scaled = rep.transform(torch.as_tensor(windows)).numpy().reshape(-1, n_channels)
    k = components or n_channels
    pre = Preprocessor(n_channels, k, window_transform=window_transform)
    mean = np.zeros(n_channels)
    proj = np.eye(n_channels, k)
    back = np.eye(k, n_channels)
    if components or whiten:
        mean = scaled.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(np.cov(scaled - mean, rowvar=False))
        order = np.argsort(eigval)[::-1][:k]
        eigval, eigvec = np.clip(eigval[order], _EPS, None), eigvec[:, order]
        signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(k)])
        eigvec = eigvec * np.where(signs == 0, 1.0, signs)
        root = np.sqrt(eigval) if whiten else np.ones(k)
        proj = eigvec / root
        back = (eigvec * root).T
    with torch.no_grad():
        for name, value in (("center", center), ("scale", scale), ("mean", mean), ("proj", proj), ("back", back)):
            getattr(pre, name).copy_(torch.as_tensor(value, dtype=torch.float32))
    return pre

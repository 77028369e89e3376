"""Preprocessing fitted on training rows only and carried inside the exported graph.

Raw readings ``x`` -> scaled ``s = (x - center) / scale`` (none, center, zscore or minmax) ->
model space ``z = (s - mean) @ proj`` (identity, PCA to k components, optionally whitened).
:meth:`Preprocessor.to_scaled` maps a model-space estimate back to the scaled space, where
reconstruction errors are measured per original channel (the PCA residual included).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.config import Scaling

_EPS = 1e-8


class Preprocessor(nn.Module):
    """Fitted transform as buffers, so it is saved with the weights and exported in the graph."""

    center: torch.Tensor
    scale: torch.Tensor
    mean: torch.Tensor
    proj: torch.Tensor
    back: torch.Tensor

    def __init__(self, channels: int, components: int) -> None:
        super().__init__()
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
        s = (x - self.center) / self.scale
        return s, (s - self.mean) @ self.proj

    def to_scaled(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.back + self.mean


def fit_preprocessor(rows: np.ndarray, *, mode: Scaling, components: int = 0, whiten: bool = False) -> Preprocessor:
    """Fit on ``(n, channels)`` training rows. ``components`` 0 keeps every channel (no PCA
    unless ``whiten``, which then whitens all components). Deterministic (sign-fixed eigenvectors)."""
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
    scale = np.where(scale > _EPS, scale, 1.0)
    scaled = (rows - center) / scale
    k = components or n_channels
    pre = Preprocessor(n_channels, k)
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

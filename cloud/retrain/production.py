"""What a retraining starts from: the production version in the registry, its weights if it has
torch weights, else the recipe for training from scratch with its manifest's family, window and
channels; plus the next version number."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cloud.registry import Registry
from edge.contract import ConfigError, ModelManifest
from edge.detector import load_manifest
from models.config import TrainConfig, config_from_mapping

log = logging.getLogger(__name__)
WEIGHTS = "weights.pt"


@dataclass(frozen=True)
class Starting:
    """The production version and how the candidate is trained from it."""

    model_dir: Path
    manifest: ModelManifest
    config: TrainConfig
    state: Mapping[str, torch.Tensor] | None  # None: no torch weights, train from scratch
    note: str


def load_production(registry: Registry, name: str, overrides: Mapping[str, Any]) -> Starting:
    """The production version of ``name`` and the training config for its successor.

    With ``weights.pt`` (a :func:`models.fit.save_checkpoint` file) the candidate fine-tunes from
    it with the checkpoint's config plus ``overrides``. Without (or with one that does not fit
    the manifest's channels), or when ``overrides`` change the family, it trains from scratch with
    the manifest's family, window, stride and calibration plus ``overrides``. Raises :class:`ConfigError` when there is no production
    version or the overrides change the window length (production and candidate are evaluated
    on the same windows)."""
    from models.fit import load_checkpoint

    model_dir = registry.production_dir(name)
    manifest = load_manifest(model_dir)
    weights = model_dir / WEIGHTS
    state: Mapping[str, torch.Tensor] | None = None
    if weights.exists():
        base, state, channels = load_checkpoint(weights)
        if tuple(c.name for c in channels) != manifest.channel_names:
            note = f"{weights} was trained on channels {[c.name for c in channels]}, not the manifest's: training from scratch"
            state, base = None, _scratch_config(manifest)
        else:
            note = f"fine-tuning from {manifest.name} {manifest.version} ({WEIGHTS})"
    else:
        base = _scratch_config(manifest)
        note = (f"{manifest.name} {manifest.version} has no torch weights ({WEIGHTS}): training from scratch with its "
                f"family {manifest.family}, window {manifest.window_length} and channels")
    config = config_from_mapping(dict(overrides), origin="retrain [train] overrides", base=base)
    if state is not None and config.family != base.family:
        state, config = None, config_from_mapping(dict(overrides), origin="retrain [train] overrides", base=_scratch_config(manifest))
        note = f"family {config.family} instead of production's {base.family}: training from scratch"
    if config.window_length != manifest.window_length:
        raise ConfigError(f"train.window_length = {config.window_length}: a retrained {name} must keep production's "
                          f"window length {manifest.window_length}")
    log.info("retrain_start_point model=%s version=%s fine_tune=%s", name, manifest.version, state is not None)
    return Starting(model_dir, manifest, config, state, note)


def _scratch_config(m: ModelManifest) -> TrainConfig:
    params = m.calibration.params
    extra: dict[str, Any] = {}
    if m.calibration.method in ("quantile", "pot"):
        extra["calibration"] = m.calibration.method
    for key in ("quantile", "margin"):
        value = params.get(key)
        if isinstance(value, float):
            extra[key] = value
    if m.calibration.method == "pot":
        for key, name in (("level", "pot_level"), ("risk", "risk")):
            if isinstance(params.get(key), float):
                extra[name] = params[key]
    return config_from_mapping({"family": m.family, "window_length": m.window_length, "stride": m.stride, **extra},
                               origin=f"manifest of {m.name} {m.version}")


def next_version(registry: Registry, name: str, requested: str | None = None) -> str:
    """``requested`` when free, else one minor above the highest registered version (``1.3.0`` -> ``1.4.0``)."""
    existing = registry.versions(name)
    if requested:
        if requested in existing:
            raise ConfigError(f"registry {registry.root}: {name} {requested} already exists; choose another --version")
        return requested
    numbers = [tuple(int(p) for p in v.split(".")) for v in existing if re.fullmatch(r"\d+(\.\d+){1,2}", v)]
    if not numbers:
        return "1.0.0"
    major, minor = max(numbers)[:2]
    return f"{major}.{minor + 1}.0"

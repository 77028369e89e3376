"""Model families by name. Builders are keyword-only and imported on first use (no work at import)."""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable

from edge.contract.errors import ConfigError
from models.base import Family
from models.config import TrainConfig

_FAMILIES: dict[str, str] = {
    "dense_ae": "models.dense_ae",
    "conv_ae": "models.conv_ae",
    "lstm_ae": "models.lstm_ae",
    "lstm_forecast": "models.lstm_forecast",
    "tadgan": "models.tadgan",
    "vae": "models.vae",
    "rbm": "models.rbm",
    "dbn_ae": "models.dbn_ae",
    "ladder": "models.ladder",
}


def family_names() -> tuple[str, ...]:
    """Every registered family, in a stable order."""
    return tuple(_FAMILIES)


def get_builder(name: str) -> Callable[..., Family]:
    """The keyword-only builder of family ``name``; raises ConfigError listing the known names."""
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}")
    builder: Callable[..., Family] = importlib.import_module(_FAMILIES[name]).build
    return builder


def uses_labels(name: str) -> bool:
    """Whether family ``name`` trains on labelled windows too (its builder's class says so)."""
    family: type[Family] = typing.get_type_hints(get_builder(name))["return"]
    return family.uses_labels


def build_family(name: str, *, channels: int, window_length: int, config: TrainConfig) -> Family:
    """Build an untrained family network for ``channels`` model-space inputs (after PCA)."""
    return get_builder(name)(channels=channels, window_length=window_length, config=config)

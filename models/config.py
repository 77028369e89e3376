"""The one typed training configuration: every classic knob, in a frozen dataclass.

Loaded from TOML (``[train]`` table or top level), from a mapping, or built directly; every
field carries its help text (the ``edgewatch train`` flags are generated from it). Unknown keys
and out-of-range values raise :class:`ConfigError` naming the file and the dotted key.
Environment overrides ``EDGEWATCH_TRAIN__<KEY>`` are applied by :func:`load_config`. Reading and
checking values is :mod:`edge.config_parse`'s, as for every other edgewatch config: one loader,
one policy (an unknown ``EDGEWATCH_TRAIN__`` variable is logged and ignored).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from edge.config_parse import coerce, read_toml, section_values
from edge.contract.errors import ConfigError

Activation = Literal["relu", "leaky_relu", "elu", "tanh", "sigmoid", "maxout"]
Init = Literal["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "dbn"]
Optimizer = Literal["sgd", "momentum", "nesterov", "adam"]
LrDecay = Literal["constant", "step", "exponential", "inverse_time"]
Scaling = Literal["none", "center", "zscore", "minmax"]
WindowTransform = Literal["none", "center", "diff"]
ScoreMode = Literal["log_z", "mse"]
CalibrationMethod = Literal["quantile", "pot"]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model, apart from the data. Same config + data + seed
    gives the same weights (single thread, deterministic algorithms)."""

    family: str = _f("dense_ae", "model family (dense_ae, conv_ae, lstm_ae, lstm_forecast, tadgan, vae, rbm, dbn_ae, ladder)")
    window_length: int = _f(32, "samples per window (the model input length)")
    stride: int = _f(8, "samples between two windows on the edge (written to the manifest)")
    train_stride: int = _f(2, "samples between two training windows (denser than stride gives more data)")
    hidden: int = _f(64, "width of hidden layers (units, conv channels or LSTM state)")
    latent: int = _f(8, "bottleneck size (latent units or conv channels)")
    layers: int = _f(1, "hidden layers per side (dense) or stacked LSTM layers")
    bidirectional: bool = _f(False, "bidirectional LSTM (lstm_ae only)")
    kernel_size: int = _f(5, "convolution kernel size, odd (conv_ae only)")
    activation: Activation = _f("relu", "activation of feed-forward and conv layers: relu, leaky_relu, elu, tanh, sigmoid, maxout")
    maxout_pieces: int = _f(2, "linear pieces per maxout unit")
    init: Init = _f("xavier_uniform", "weight initialisation: xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, "
                                      "dbn (greedy RBM pretraining of the dense layers; dense_ae and dbn_ae only)")
    batch_norm: bool = _f(False, "batch normalisation after each hidden layer")
    dropout: float = _f(0.0, "dropout probability after each hidden layer (and between LSTM layers)")
    l1: float = _f(0.0, "L1 penalty on weights, added to the loss")
    l2: float = _f(0.0, "L2 penalty on weights, added to the loss")
    max_norm: float = _f(0.0, "max-norm constraint on each unit's incoming weight vector, 0 = off")
    optimizer: Optimizer = _f("adam", "optimiser: sgd, momentum, nesterov, adam")
    lr: float = _f(1e-3, "initial learning rate")
    momentum: float = _f(0.9, "momentum for the momentum and nesterov optimisers")
    lr_decay: LrDecay = _f("constant", "learning-rate decay per epoch: constant, step, exponential, inverse_time (1/t)")
    decay_rate: float = _f(0.5, "decay factor (step, exponential) or k in lr/(1+k*epoch) (inverse_time)")
    decay_steps: int = _f(10, "epochs between two step decays")
    epochs: int = _f(20, "maximum training epochs")
    batch_size: int = _f(64, "windows per optimisation step")
    validation_split: float = _f(0.1, "share of training windows (the last ones) held out for validation")
    early_stopping: int = _f(0, "stop after this many epochs without validation improvement, 0 = off")
    min_delta: float = _f(0.0, "smallest validation-loss decrease that counts as improvement")
    seed: int = _f(0, "random seed: same seed, same weights")
    members: int = _f(1, "models in one artifact, fitted with seeds seed x members .. + members - 1 (1, or an odd number >= 3): "
                         "the agent decides each with its own adaptive threshold and fires on their majority")
    preprocess: Scaling = _f("zscore", "scaling fitted on training data: none, center, zscore, minmax")
    pca_components: int = _f(0, "PCA to this many components after scaling, 0 = off")
    whiten: bool = _f(False, "whiten (unit variance per principal component) after scaling")
    scale_floor: float = _f(0.0, "zscore/minmax scale at least this share of the channel's mean absolute training reading, 0 = off")
    window_transform: WindowTransform = _f("none", "per-window transform in the graph after scaling (drift invariance): none, "
                                                   "center (subtract each window's channel means), diff (first differences)")
    level_weight: float = _f(0.0, "with a window_transform: weight of each channel's squared scaled window mean added to its error, "
                                  "0 = levels ignored")
    score_mode: ScoreMode = _f("log_z", "score: log_z = sum of squared z-scores of log channel errors; mse = sum of channel errors")
    extra_score_weight: float = _f(1.0, "weight of the family's extra score term (tadgan critic, vae KL)")
    beta: float = _f(1.0, "KL weight in the VAE loss")
    n_critic: int = _f(1, "critic updates per generator update (tadgan)")
    k: int = _f(1, "Gibbs steps per contrastive-divergence update, CD-k (rbm, dbn pretraining)")
    persistent_cd: bool = _f(False, "persistent contrastive divergence: negative chains carried across updates (rbm, dbn pretraining)")
    pretrain_epochs: int = _f(5, "epochs of greedy RBM pretraining per layer (dbn_ae, and dense_ae with init = dbn)")
    noise_std: float = _f(0.3, "standard deviation of the Gaussian noise of the noisy encoder path (ladder)")
    layer_cost_weight: float = _f(0.1, "weight of each hidden layer's denoising cost against the input layer's 1 (ladder)")
    supervised_weight: float = _f(1.0, "weight of the supervised cost on labelled windows (ladder; no labels, no cost)")
    calibration: CalibrationMethod = _f("quantile", "threshold method: quantile (with margin) or pot (peaks over threshold)")
    quantile: float = _f(0.999, "training-score quantile for the quantile method")
    margin: float = _f(1.1, "threshold = calibrated value x margin")
    pot_level: float = _f(0.98, "initial threshold quantile for peaks over threshold")
    risk: float = _f(1e-4, "target exceedance probability for peaks over threshold")

    def __post_init__(self) -> None:
        _check_types(self)
        checks: list[tuple[bool, str, Any]] = [
            (self.window_length >= 4, "window_length", self.window_length),
            (1 <= self.stride <= self.window_length, "stride", self.stride),
            (self.train_stride >= 1, "train_stride", self.train_stride),
            (self.hidden >= 1 and self.latent >= 1 and self.layers >= 1, "hidden/latent/layers", (self.hidden, self.latent, self.layers)),
            (self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size", self.kernel_size),
            (self.maxout_pieces >= 2, "maxout_pieces", self.maxout_pieces),
            (0.0 <= self.dropout < 1.0, "dropout", self.dropout),
            (min(self.l1, self.l2, self.max_norm) >= 0.0, "l1/l2/max_norm", (self.l1, self.l2, self.max_norm)),
            (self.lr > 0, "lr", self.lr),
            (0.0 <= self.momentum < 1.0, "momentum", self.momentum),
            (self.decay_rate > 0 and self.decay_steps >= 1, "decay_rate/decay_steps", (self.decay_rate, self.decay_steps)),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs/batch_size", (self.epochs, self.batch_size)),
            (0.0 <= self.validation_split < 0.9, "validation_split", self.validation_split),
            (self.early_stopping >= 0, "early_stopping", self.early_stopping),
            (self.members == 1 or (self.members >= 3 and self.members % 2 == 1), "members", self.members),
            (self.pca_components >= 0, "pca_components", self.pca_components),
            (self.scale_floor >= 0.0, "scale_floor", self.scale_floor),
            (self.level_weight >= 0.0, "level_weight", self.level_weight),
            (self.n_critic >= 1, "n_critic", self.n_critic),
            (self.k >= 1, "k", self.k),
            (self.pretrain_epochs >= 1, "pretrain_epochs", self.pretrain_epochs),
            (self.noise_std > 0.0, "noise_std", self.noise_std),
            (min(self.layer_cost_weight, self.supervised_weight) >= 0.0, "layer_cost_weight/supervised_weight",
             (self.layer_cost_weight, self.supervised_weight)),
            (0.5 < self.quantile < 1.0, "quantile", self.quantile),
            (self.margin > 0, "margin", self.margin),
            (0.5 < self.pot_level < 1.0 and 0.0 < self.risk < 1.0 - self.pot_level, "pot_level/risk", (self.pot_level, self.risk)),
        ]
        for ok, key, value in checks:
            if not ok:
                raise ConfigError(f"train.{key}: {value!r} is out of range (see edgewatch train --help)")
        if self.early_stopping and self.validation_split <= 0:
            raise ConfigError("train.early_stopping needs train.validation_split > 0")
        if self.init == "dbn" and self.family not in {"dense_ae", "dbn_ae"}:
            raise ConfigError(f"train.init = 'dbn' pretrains dense layers: dense_ae or dbn_ae only, not {self.family!r}")
        if self.family == "ladder" and self.activation == "maxout":
            raise ConfigError("train.activation = 'maxout' does not apply to ladder (its layers are batch-normalised per unit)")
        if self.level_weight > 0 and self.window_transform == "none":
            raise ConfigError("train.level_weight needs train.window_transform center or diff (without it levels are already scored)")

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def field_help() -> dict[str, tuple[type, Any, str]]:
    """``name -> (type, default, help)`` for every field, for command-line generation."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: (_base_type(hints[f.name]), f.default, f.metadata["help"]) for f in fields(TrainConfig)}


def literal_choices(name: str) -> tuple[str, ...] | None:
    hint = typing.get_type_hints(TrainConfig)[name]
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None


def config_from_mapping(data: Mapping[str, Any], *, origin: str = "<mapping>", base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from plain values (``base`` or the defaults for the others); unknown keys and
    values of the wrong type raise ConfigError naming ``origin`` and the key."""
    known = {f.name for f in fields(TrainConfig)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{origin}: unknown key 'train.{key}'")
    return replace(base or TrainConfig(),
                   **{k: coerce(v, TrainConfig, k, f"{origin}: 'train.{k}'", from_env=False) for k, v in data.items()})


def load_config(path: Path | str | None = None, *, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Read a TOML file (``[train]`` table or top level), then apply ``EDGEWATCH_TRAIN__KEY`` overrides."""
    where = str(path) if path is not None else "<defaults>"
    raw = read_toml(Path(path)) if path is not None else {}
    extra = set(raw) - {"train"} if "train" in raw else set()
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]}")
    return TrainConfig(**train_overrides(raw.get("train", raw), where, os.environ if environ is None else environ))


def train_overrides(table: Any, where: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The typed values a ``[train]`` table and the ``EDGEWATCH_TRAIN__KEY`` variables set, the
    environment winning; a bad value, or an unknown key in the table, raises ConfigError."""
    return section_values(TrainConfig, table, "train", where, env)


def _base_type(hint: Any) -> type:
    if typing.get_origin(hint) is Literal:
        return str
    return hint if isinstance(hint, type) else str


def _check_types(cfg: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        hint = hints[f.name]
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
        if choices is not None:
            if value not in choices:
                raise ConfigError(f"train.{f.name}: {value!r} is not one of {', '.join(choices)}")
            continue
        kind = _base_type(hint)
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"train.{f.name}: {value!r} is not a {kind.__name__}")

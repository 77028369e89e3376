"""Fit a family on training rows: preprocessing, training, scoring head, calibration.

The one call the CLI, the zoo and benchmark evaluations use::

    fitted = fit(rows, TrainConfig(family="conv_ae", window_length=32), channels=names)
    write_artifact(fitted, out_dir, name="pump", version="1.0.0")   # models.export
    OnnxDetector.load(out_dir).score(windows)                          # edge.detector
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.adaptive import UNIT_FLOOR
from edge.contract import Calibration, Channel, Member
from edge.contract.errors import ConfigError
from models.base import Detector, Ensemble, fit_head
from models.calibrate import calibrate, channel_ranges
from models.config import TrainConfig, config_from_mapping
from models.data import fingerprint, make_windows
from models.layers import init_weights
from models.preprocess import Preprocessor, fit_preprocessor
from models.registry import build_family
from models.train import History, LabelledWindows, train_family

log = logging.getLogger(__name__)
CHECKPOINT = Path("training") / "checkpoint.pt"


@dataclass
class FittedModel:
    """A trained detector (torch, eval mode) with everything the manifest needs; an ensemble's
    ``detector`` is an :class:`Ensemble` and ``members`` holds each member's threshold and calibration."""

    detector: Detector | Ensemble
    config: TrainConfig
    channels: tuple[Channel, ...]
    sample_period_s: float
    threshold: float
    calibration: Calibration
    history: History
    train_scores: np.ndarray
    fingerprint: str
    channel_ranges: dict[str, tuple[float, float]] | None = None  # learned from the training rows (manifest channel_ranges)
    members: tuple[Member, ...] | None = None  # an ensemble's members (manifest members)

    @torch.no_grad()
    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Torch-eager scores of raw ``(batch, window, channels)`` windows (the ONNX graph's twin)."""
        out = self.detector(torch.as_tensor(np.asarray(windows), dtype=torch.float32))
        return out[0].numpy(), out[1].numpy()


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels for the duration (restores the previous mode)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def build_detector(pre: Preprocessor, config: TrainConfig, channels: int) -> Detector:
    """The full graph around ``pre``; the config's window transform and level weight are applied here
    (they are not buffers), so a preprocessor rebuilt from weights alone gets them too."""
    net = build_family(config.family, channels=pre.components, window_length=config.window_length, config=config)
    init_weights(net, config)
    pre.window_transform = config.window_transform
    return Detector(pre, net, channels=channels, score_mode=config.score_mode, extra_weight=config.extra_score_weight,
                    level_weight=config.level_weight)


def preprocessor_for(segments: Sequence[np.ndarray], config: TrainConfig) -> Preprocessor:
    """The preprocessing ``config`` asks for, fitted on the rows of ``segments`` (training data only)."""
    return fit_preprocessor(np.concatenate(segments), mode=config.preprocess, components=config.pca_components,
                            whiten=config.whiten, scale_floor=config.scale_floor, window_transform=config.window_transform,
                            window_length=config.window_length)


def fit(data: np.ndarray | Sequence[np.ndarray], config: TrainConfig, *, channels: Sequence[Channel | str] | None = None,
        sample_period_s: float = 1.0, init_from: FittedModel | Mapping[str, torch.Tensor] | Path | str | None = None,
        progress: bool = False, labelled: LabelledWindows | None = None) -> FittedModel:
    """Train ``config.family`` on ``data``: rows ``(n, channels)`` or a list of such segments
    (e.g. one per device; windows never straddle two). Preprocessing, head statistics and the
    threshold are fitted on these rows only. ``init_from`` fine-tunes: the weights *and* the
    preprocessing of an earlier model (a FittedModel, a state dict, a checkpoint file or a model
    folder with ``training/checkpoint.pt``) are loaded before training. Blocks; single use of torch
    global RNG (seeded from ``config.seed``). ``labelled`` windows (raw, ``window_length`` long,
    with 0/1 labels) train only a family that uses labels (``ladder``); they never fit the
    preprocessing, the head or the threshold. With ``config.members`` > 1 it fits that many
    models (seeds ``seed x members + j``; fine-tuning, each from its member of ``init_from``, an
    ensemble of as many) and returns them as one :class:`Ensemble`."""
    if config.members > 1:
        starts = _member_states(init_from, config.members) if init_from is not None else [None] * config.members
        return _ensemble([fit(data, replace(config, members=1, seed=config.seed * config.members + j), channels=channels,
                              sample_period_s=sample_period_s, init_from=start, progress=progress, labelled=labelled)
                          for j, start in enumerate(starts)], config)
    segments = [np.asarray(data, dtype=np.float64)] if isinstance(data, np.ndarray) else [np.asarray(s, dtype=np.float64) for s in data]
    if any(s.ndim != 2 for s in segments) or len({s.shape[1] for s in segments}) != 1:
        raise ValueError("data must be 2-D rows (n, channels), all segments with the same channels")
    n_channels = segments[0].shape[1]
    chans = _channels(channels, n_channels)
    windows = np.concatenate([make_windows(s, config.window_length, config.train_stride) for s in segments])
    if len(windows) < 4:
        raise ValueError(f"only {len(windows)} windows of {config.window_length} samples in the data")
    if labelled is not None:
        _check_labelled(labelled, config.window_length, n_channels)
    with deterministic(config.seed):
        pre = preprocessor_for(segments, config)
        detector = build_detector(pre, config, n_channels)
        if init_from is not None:
            _load_initial(detector, init_from)
        history = train_family(detector, windows, config, progress=progress, pretrain=init_from is None, labelled=labelled)
        fit_head(detector, windows)
    fitted = FittedModel(detector, config, chans, sample_period_s, 0.0, Calibration("none"), history,
                         np.empty(0), fingerprint(segments))
    fitted.train_scores = score_in_batches(fitted, windows)
    fitted.threshold, fitted.calibration = calibrate(fitted.train_scores, config)
    fitted.channel_ranges = channel_ranges(segments, [c.name for c in chans])
    log.info("model_fitted family=%s windows=%d threshold=%.4g", config.family, len(windows), fitted.threshold)
    return fitted


def _ensemble(members: list[FittedModel], config: TrainConfig) -> FittedModel:
    """Fitted members as one model: its score is calibrated like any model's, on the training windows."""
    first = members[0]
    detectors = [m.detector for m in members if isinstance(m.detector, Detector)]
    if len(detectors) != len(members):
        raise ValueError("an ensemble's members must be single models")
    ensemble = Ensemble(detectors, [m.threshold for m in members]).eval()
    fitted = FittedModel(ensemble, config, first.channels, first.sample_period_s, 0.0, Calibration("none"), first.history,
                         np.empty(0), first.fingerprint, first.channel_ranges,
                         tuple(Member(m.threshold, m.calibration) for m in members))
    calibrated = np.sort(np.stack([m.train_scores / max(m.threshold, UNIT_FLOOR) for m in members], axis=1), axis=1)
    fitted.train_scores = calibrated[:, len(members) // 2]  # what the graph's score is on the training windows
    fitted.threshold, fitted.calibration = calibrate(fitted.train_scores, config)
    return fitted


def score_in_batches(fitted: FittedModel, windows: np.ndarray, batch: int = 4096) -> np.ndarray:
    return np.concatenate([fitted.score(windows[i:i + batch])[0] for i in range(0, len(windows), batch)]) if len(windows) else np.empty(0)


def save_checkpoint(fitted: FittedModel, path: Path) -> None:
    """Weights, preprocessing, head and config, for fine-tuning later (not part of the edge artifact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(fitted.config), "state": fitted.detector.state_dict(),
                "channels": [asdict(c) for c in fitted.channels]}, path)


def load_checkpoint(path: Path | str) -> tuple[TrainConfig, dict[str, torch.Tensor], tuple[Channel, ...]]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    try:
        blob: dict[str, Any] = torch.load(path, weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"{path}: cannot read checkpoint: {exc}") from None
    return (config_from_mapping(blob["config"], origin=str(path)), blob["state"],
            tuple(Channel(**c) for c in blob["channels"]))


def _state(source: FittedModel | Mapping[str, torch.Tensor] | Path | str) -> Mapping[str, torch.Tensor]:
    if isinstance(source, FittedModel):
        return source.detector.state_dict()
    if isinstance(source, (str, Path)):
        return load_checkpoint(source)[1]
    return source


def _member_states(source: FittedModel | Mapping[str, torch.Tensor] | Path | str, members: int) -> list[Mapping[str, torch.Tensor]]:
    """Each member's weights in an ensemble's state (keys ``members.<j>.``), for fine-tuning it member by member."""
    state = _state(source)
    parts: list[Mapping[str, torch.Tensor]] = [
        {k.removeprefix(f"members.{j}."): v for k, v in state.items() if k.startswith(f"members.{j}.")} for j in range(members)]
    if not all(parts) or any(k.startswith(f"members.{members}.") for k in state):
        raise ConfigError(f"fine-tuning: the initial weights are not those of an ensemble of {members} members (train.members)")
    return parts


def _load_initial(detector: Detector, source: FittedModel | Mapping[str, torch.Tensor] | Path | str) -> None:
    state = _state(source)
    try:
        detector.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"fine-tuning: the initial weights do not fit this architecture: {exc}") from None


def _check_labelled(labelled: LabelledWindows, window_length: int, channels: int) -> None:
    shape = np.shape(labelled.windows)
    if len(shape) != 3 or shape[1:] != (window_length, channels) or np.shape(labelled.labels) != (shape[0],):
        raise ValueError(f"labelled windows must be (n, {window_length}, {channels}) with n labels, "
                         f"got {shape} and {np.shape(labelled.labels)}")
    if not np.isin(labelled.labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomaly)")


def _channels(channels: Sequence[Channel | str] | None, n: int) -> tuple[Channel, ...]:
    if channels is None:
        return tuple(Channel(f"ch{i}") for i in range(n))
    out = tuple(c if isinstance(c, Channel) else Channel(str(c)) for c in channels)
    if len(out) != n:
        raise ValueError(f"{len(out)} channel names for {n} data columns")
    return out

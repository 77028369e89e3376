"""The agent's decision path on a benchmark file: the same classes, the same defaults.

A benchmark file is one device. Its row scores (onnxruntime, the window ending on each row),
with the rows themselves for the layer's seasonal channel, go, in time order, through :class:`edge.adaptive.AdaptiveLayer`
(an ensemble's member scores through :class:`edge.adaptive.EnsembleLayer`) and the k-of-n
:class:`edge.decision.Decider`, configured from the agent's own config (``load_config``: the
defaults the agent ships with, or a given agent TOML file). The layer starts from the prior the
file's artifact would carry (its threshold and training-score quantiles) and meets the device at
the first row after the training rows, as an agent that gets the model once it is trained: it
never sees the training rows, whose in-sample scores are lower than any live device's would be.
Nothing here looks at labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.adaptive import AdaptiveLayer, EnsembleLayer, Prior, likelihood, run_openings
from edge.config import Config, load_config
from edge.decision import Decider

if TYPE_CHECKING:  # the edge-only install runs this module's agent_decisions without torch or onnx
    from cloud.evaluate.protocol import FileRun


@dataclass(frozen=True)
class AgentDecisions:
    """Per row: whether the agent fires an event for the window ending there, whether that event
    opens an anomaly run, the window's surprise (``-log10`` tail probability) and its threshold."""

    fire: np.ndarray
    opens: np.ndarray
    surprise: np.ndarray
    thresholds: np.ndarray

    @property
    def likelihood(self) -> np.ndarray:
        return likelihood(self.surprise)


def agent_config(path: Path | str | None = None) -> Config:
    """The agent's config: its shipped defaults, or a TOML file (for a tuning candidate); the
    environment is not read, so a run is reproducible."""
    return load_config(path, env={})


def agent_decisions(scores: np.ndarray, times_s: np.ndarray, *, start: int, window_length: int, threshold: float,
                    calibration: Mapping[str, float | str], config: Config, values: np.ndarray | None = None,
                    member_scores: np.ndarray | None = None,
                    members: Sequence[tuple[float, Mapping[str, float | str]]] | None = None) -> AgentDecisions:
    """Decide the rows from ``start`` (the first after the training rows) as the agent would (see
    the module docstring); earlier rows never fire, nor do rows before the first full window.
    With ``adaptive.enabled = false`` the decider's fixed threshold decides (the manifest's, or
    ``decision.threshold``). ``values`` (rows, channels): the file's rows, the last row of each
    window, for the layer's seasonal channel (None: without it). An ensemble's ``member_scores``
    (rows, members) and its ``members``' (threshold, calibration) are decided by its layer, as the agent does."""
    n = len(scores)
    first = max(start, window_length - 1)
    fixed = config.decision.threshold if config.decision.threshold is not None else threshold
    decider = Decider(fixed, k=config.decision.k, n=config.decision.n)
    segments = np.zeros(n - first, dtype=np.int64)
    window_scores = np.asarray(scores[first:], dtype=np.float64)
    fire = np.zeros(n, dtype=bool)
    surprise = np.zeros(n, dtype=np.float64)
    thresholds = np.full(n, np.nan)
    if config.adaptive.enabled:
        if member_scores is None or members is None:
            layer: AdaptiveLayer | EnsembleLayer = AdaptiveLayer(config.adaptive, Prior.from_calibration(fixed, calibration))
            decided = window_scores
        else:
            layer = EnsembleLayer(config.adaptive, [Prior.from_calibration(t, c) for t, c in members])
            decided = np.asarray(member_scores[first:], dtype=np.float64)
        rows = None if values is None else np.asarray(values, dtype=np.float64)[first:]
        over, surprise[first:], thresholds[first:] = layer.decide_many("file", decided, np.asarray(times_s[first:], dtype=np.float64), rows)
        fire[first:] = decider.debounce("file", over, segments)
        guard = config.adaptive.guard_windows
    else:
        fire[first:], _over, _t = decider.decide_many("file", window_scores, segments)
        thresholds[first:] = fixed
        surprise[first:] = window_scores / fixed if fixed > 0 else 0.0
        guard = 0
    return AgentDecisions(fire, run_openings(fire, guard), surprise, thresholds)


def decide_run(run: FileRun, times: np.ndarray, rows: np.ndarray, *, start: int, window_length: int,
               config: Config) -> AgentDecisions:
    """:func:`agent_decisions` on a fitted file (:func:`cloud.evaluate.protocol.fit_and_score`):
    its scores, threshold and calibration, the file's times (datetime64) and raw rows."""
    return agent_decisions(run.scores, times.astype(np.float64), start=start, window_length=window_length,
                           threshold=run.threshold, calibration=run.calibration, config=config, values=rows,
                           member_scores=run.member_scores, members=run.members)

"""One benchmark file, the way both protocols need it: fit a fresh model on the first rows,
export it, score every row through onnxruntime, calibrate the threshold on the training rows.

A row's score is the score of the window that *ends* on it (causal: what the edge would have
said at that moment). Rows before the first full window take the first window's score; the
protocols here only judge rows after the training rows, whose windows are always full.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge.detector import OnnxDetector
from models.calibrate import calibrate
from models.config import TrainConfig
from models.data import make_windows
from models.export import write_artifact
from models.fit import fit

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, ...]]
_CREATED_AT = "2026-01-01T00:00:00Z"  # evaluation artifacts are throw-away; a fixed time keeps them reproducible


@dataclass(frozen=True)
class FileRun:
    """Scores of every row (from onnxruntime), the threshold calibrated on the training rows only
    with its calibration record (what the artifact's manifest would carry), and the seconds spent
    fitting (training + head) and exporting. An ensemble's (``train.members``) also carries its members'
    row scores ``(rows, members)`` and each member's threshold and calibration, calibrated the same way."""

    scores: np.ndarray
    threshold: float
    calibration: Mapping[str, float | str]
    fit_seconds: float
    export_seconds: float
    member_scores: np.ndarray | None = None
    members: tuple[tuple[float, Mapping[str, float | str]], ...] | None = None


def row_scores(score: ScoreFn, rows: np.ndarray, window_length: int, *, batch: int = 2048,
               outputs: tuple[int, ...] = (0,)) -> list[np.ndarray]:
    """Per row, the ``outputs`` of ``score`` (by position) for the window ending on that row (stride 1),
    in one pass: ``(0,)`` the score, an ensemble's ``(0, 2)`` also its member scores ``(rows, members)``."""
    windows = make_windows(np.asarray(rows, dtype=np.float32), window_length, 1)
    if len(windows) == 0:
        raise ValueError(f"{len(rows)} rows are fewer than one window of {window_length}")
    runs = [score(windows[i:i + batch]) for i in range(0, len(windows), batch)]
    result = []
    for k in outputs:
        per_window = np.concatenate([r[k] for r in runs]).astype(np.float64)
        out = np.empty((len(rows), *per_window.shape[1:]), dtype=np.float64)
        out[window_length - 1:] = per_window
        out[:window_length - 1] = per_window[0]
        result.append(out)
    return result


def artifact_channel_name(name: str) -> str:
    """A benchmark column name made valid for the manifest (``Volume Flow RateRMS`` -> ``Volume_Flow_RateRMS``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.:-]", "_", name.strip())[:128]
    return cleaned if cleaned[:1].isalnum() else f"c{cleaned}"[:128]


def fit_and_score(rows: np.ndarray, n_train: int, config: TrainConfig, *, channels: Sequence[str]) -> FileRun:
    """Fit ``config`` on ``rows[:n_train]`` (preprocessing, model, head), export it to a temporary
    artifact, score all ``rows`` with :class:`OnnxDetector`, and calibrate the threshold (the
    config's method) on the onnxruntime scores of the windows lying wholly in the training rows.
    Blocks; uses torch in the calling thread."""
    rows = np.asarray(rows, dtype=np.float64)
    if n_train < config.window_length + 4:
        raise ValueError(f"{n_train} training rows are too few for windows of {config.window_length}")
    started = time.perf_counter()
    fitted = fit(rows[:n_train], config, channels=[artifact_channel_name(c) for c in channels])
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgewatch-eval-") as tmp:
        write_artifact(fitted, tmp, name="evaluation", version="0.0.0", created_at=_CREATED_AT)
        detector = OnnxDetector.load(tmp, threads=1)
        export_seconds = time.perf_counter() - started
        if config.members > 1:
            scores, member_scores = row_scores(detector.score_members, rows, config.window_length, outputs=(0, 2))
        else:
            (scores,), member_scores = row_scores(detector.score, rows, config.window_length), None
    train = slice(config.window_length - 1, n_train)
    threshold, calibration = calibrate(scores[train], config)
    members = None if member_scores is None else tuple(
        (float(t), c.params) for t, c in (calibrate(member_scores[train, j], config) for j in range(config.members)))
    log.debug("file_scored family=%s rows=%d threshold=%.4g fit_s=%.2f", config.family, len(rows), threshold, fit_seconds)
    return FileRun(scores, float(threshold), calibration.params, fit_seconds, export_seconds, member_scores, members)

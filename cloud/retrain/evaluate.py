"""Candidate against production, both through onnxruntime, on the same windows; then the gates.

Measures per model, each with its own manifest threshold (a window alarms when score > threshold):

- ``holdout_far``: share of holdout windows (recent normal-ish data) that alarm: the false-alarm rate.
- ``tp_recall``: share of true-positive incidents with at least one alarming window.
- ``fp_window_rate``: share of the windows of false-positive incidents (behaviour an operator
  called normal) that alarm. Per window, not per incident: production alarmed on at least some
  windows of each, so what matters is whether the candidate alarms on fewer or more of them.
- ``tp_window_rate`` / ``fp_alarm_rate``: the other granularity (reported, not gated).
- ``finite``: 1.0 when every score is a finite number.

Gates (the candidate passes when every applicable gate passes; a gate without data is skipped
and says so): finite scores; ``holdout_far <= production + max_far_increase``;
``tp_recall >= production - max_recall_drop``; ``fp_window_rate <= production + max_fp_increase``.
The holdout comes from the same new data the candidate learnt, so it cannot tell a real change
of normal behaviour from garbage; the labelled incidents can, which is why they are gated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.retrain.config import RetrainSection
from cloud.retrain.dataset import Dataset
from edge.detector import OnnxDetector


@dataclass(frozen=True)
class ModelScores:
    """One model's scores on a dataset's evaluation windows."""

    version: str
    threshold: float
    holdout: np.ndarray
    incidents: dict[str, np.ndarray]


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    applied: bool
    candidate: float | None
    production: float | None
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_model(model_dir: Path, dataset: Dataset, *, batch: int = 4096) -> ModelScores:
    """Load ``model_dir`` (hash-checked) into onnxruntime and score the holdout and incident windows."""
    detector = OnnxDetector.load(model_dir, threads=1)

    def run(windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.empty(0, dtype=np.float64)
        return np.concatenate([detector.score(windows[i:i + batch])[0] for i in range(0, len(windows), batch)]).astype(np.float64)

    m = detector.manifest
    return ModelScores(m.version, float(m.threshold), run(dataset.holdout),
                       {k: run(v) for k, v in dataset.incident_windows.items()})


def measure(scores: ModelScores, labels: Mapping[str, str]) -> dict[str, float | None]:
    """The module's measures for one model (None where there is nothing to measure)."""
    t = scores.threshold
    all_scores = [scores.holdout, *scores.incidents.values()]
    finite = all(bool(np.all(np.isfinite(s))) for s in all_scores)
    out: dict[str, float | None] = {
        "threshold": t, "finite": 1.0 if finite else 0.0, "holdout_windows": float(len(scores.holdout)),
        "holdout_far": _rate(scores.holdout > t) if len(scores.holdout) else None,
        "holdout_median_score": float(np.median(scores.holdout)) if len(scores.holdout) else None,
    }
    for label, key in (("true_positive", "tp"), ("false_positive", "fp")):
        chosen = [s for k, s in scores.incidents.items() if labels.get(k) == label and len(s)]
        hits = [bool(np.any(s > t)) for s in chosen]
        windows = np.concatenate(chosen) if chosen else np.empty(0)
        out[f"{key}_incidents"] = float(len(chosen))
        out[f"{key}_{'recall' if key == 'tp' else 'alarm_rate'}"] = float(np.mean(hits)) if hits else None
        out[f"{key}_window_rate"] = _rate(windows > t) if len(windows) else None
    return out


def apply_gates(candidate: Mapping[str, float | None], production: Mapping[str, float | None],
                section: RetrainSection) -> list[Gate]:
    """The gates of the module docstring, in order."""
    gates = [Gate("finite_scores", candidate["finite"] == 1.0, True, candidate["finite"], production["finite"],
                  "every candidate score is finite")]
    specs = [("holdout_far", section.max_far_increase, +1), ("tp_recall", section.max_recall_drop, -1),
             ("fp_window_rate", section.max_fp_increase, +1)]
    for key, margin, direction in specs:
        c, p = candidate.get(key), production.get(key)
        if c is None or p is None:
            gates.append(Gate(key, True, False, c, p, "skipped: no windows to measure it on"))
            continue
        if direction > 0:
            ok, rule = c <= p + margin + 1e-12, f"candidate <= production + {margin:g}"
        else:
            ok, rule = c >= p - margin - 1e-12, f"candidate >= production - {margin:g}"
        gates.append(Gate(key, ok, True, c, p, rule))
    return gates


def _rate(mask: np.ndarray) -> float:
    return float(np.mean(mask))

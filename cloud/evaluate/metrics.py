"""Point-wise detection metrics as the SKAB leaderboard defines them, and changepoints from a
binary prediction.

Counts are summed over every file before the ratios are taken (micro-averaging):
``F1 = TP / (TP + (FP + FN) / 2)``, ``FAR = FP / (FP + TN)``, ``MAR = FN / (FN + TP)``.
A ratio whose denominator is zero is reported as NaN, never as 0 or 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    """Confusion counts of a binary prediction against binary labels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def f1(self) -> float:
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    @property
    def far(self) -> float:
        """False alarm rate: share of normal points flagged."""
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        """Missed alarm rate: share of anomalous points not flagged."""
        return _ratio(self.fn, self.fn + self.tp)

    def as_dict(self) -> dict[str, float]:
        return {"f1": self.f1, "far": self.far, "mar": self.mar,
                "tp": float(self.tp), "fp": float(self.fp), "fn": float(self.fn), "tn": float(self.tn)}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def confusion(labels: np.ndarray, predictions: np.ndarray) -> Counts:
    """Counts of ``predictions`` against ``labels`` (both 0/1 or bool, same length)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(predictions).astype(bool)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    return Counts(tp=int(np.sum(y & p)), fp=int(np.sum(~y & p)), fn=int(np.sum(y & ~p)), tn=int(np.sum(~y & ~p)))


def micro(counts: Iterable[Counts]) -> Counts:
    """Sum of per-file counts (micro-averaging)."""
    total = Counts()
    for c in counts:
        total = total + c
    return total


def rising_edges(predictions: np.ndarray, *, initial: bool = False) -> np.ndarray:
    """Indices where a binary prediction switches from 0 to 1; ``initial`` is the state before
    index 0 (False: a prediction of 1 at index 0 is an edge)."""
    p = np.asarray(predictions).astype(np.int8)
    before = np.concatenate([[np.int8(initial)], p[:-1]])
    return np.flatnonzero((p == 1) & (before == 0))

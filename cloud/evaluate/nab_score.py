"""The NAB scoring function (Lavin & Ahmad, ICMLA 2015), written from the published description.

A detection is a row flagged anomalous. Each labelled window rewards only its *first* detection,
weighted by a scaled sigmoid of where it falls: ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` with ``y``
the position relative to the window's right end in window lengths, ``y = (i - end - 1) / length``
(so ``y = -1`` on the first row of the window, ``sigma`` about 0.987, and ``y -> 0`` at its end).
Detections outside windows are false positives: after a window they cost ``A_FP * sigma(y)``
with ``y = (i - end) / length > 0`` (``sigma`` in (-1, 0): small just after the window, -1 once ``y > 3``);
before the first window they cost ``-A_FP`` in full. A window without a detection costs ``A_FN``.
Detections inside the probationary period are ignored.

Normalised score: ``100 (S - S_null) / (S_perfect - S_null)``, the null detector never fires
(``S_null = -A_FN x windows``), the perfect one fires exactly on the first row of each window,
so a perfect detector scores 100 and the null detector 0. Over several files the raw, null
and perfect scores are summed before normalising. Where there are no windows at all (perfect
equals null), the normalised score is NaN; the raw score (0 at best) and FP count still inform.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Profile:
    """Application profile: reward for a true positive, cost of a false positive and of a miss."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_fp": Profile("reward_low_fp", 1.0, 0.22, 1.0),
    "reward_low_fn": Profile("reward_low_fn", 1.0, 0.11, 2.0),
}


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """``2 / (1 + exp(5 y)) - 1``, and exactly -1 for ``y > 3`` (far behind a window)."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(np.clip(5.0 * y, -50, 50))) - 1.0)


@dataclass(frozen=True)
class Layout:
    """One file's windows as inclusive row ranges, with each row's weights precomputed."""

    n_rows: int
    windows: tuple[tuple[int, int], ...]
    probation: int
    tp_factor: np.ndarray  # sigma(y) of each row (meaningful inside windows)
    fp_factor: np.ndarray  # sigma(y) after the previous window, -1 before any window; 0 inside windows

    @classmethod
    def build(cls, n_rows: int, windows: Sequence[tuple[int, int]], *, probation: int = 0) -> Layout:
        """``windows``: sorted, non-overlapping inclusive ``(start, end)`` row ranges; those ending
        inside the probationary period cannot be scored and are dropped."""
        kept = tuple((int(s), int(e)) for s, e in windows if e >= probation)
        for (s0, e0), (s1, _) in zip(kept, kept[1:], strict=False):
            if s1 <= e0:
                raise ValueError(f"windows overlap: ({s0}, {e0}) and ({s1}, ...)")
        if any(s > e or s < 0 or e >= n_rows for s, e in kept):
            raise ValueError(f"windows {kept} do not fit {n_rows} rows")
        rows = np.arange(n_rows)
        tp = np.zeros(n_rows)
        fp = np.full(n_rows, -1.0)
        for k, (s, e) in enumerate(kept):
            length = e - s + 1
            stop = kept[k + 1][0] if k + 1 < len(kept) else n_rows
            tp[s:e + 1] = scaled_sigmoid((rows[s:e + 1] - e - 1) / length)
            fp[s:e + 1] = 0.0
            fp[e + 1:stop] = scaled_sigmoid((rows[e + 1:stop] - e) / length)
        return cls(n_rows, kept, probation, tp, fp)


@dataclass(frozen=True)
class FileScore:
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int

    def __add__(self, other: FileScore) -> FileScore:
        return FileScore(self.raw + other.raw, self.null + other.null, self.perfect + other.perfect,
                         self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def normalised(self) -> float:
        span = self.perfect - self.null
        return float(100.0 * (self.raw - self.null) / span) if span > 0 else float("nan")


def score_file(layout: Layout, detections: np.ndarray, profile: Profile) -> FileScore:
    """Raw, null and perfect NAB scores of one file's boolean ``detections`` (one per row)."""
    d = np.asarray(detections, dtype=bool).copy()
    if d.shape != (layout.n_rows,):
        raise ValueError(f"{d.shape} detections for {layout.n_rows} rows")
    d[:layout.probation] = False
    raw, tp, inside = 0.0, 0, np.zeros(layout.n_rows, dtype=bool)
    for s, e in layout.windows:
        inside[s:e + 1] = True
        hits = np.flatnonzero(d[s:e + 1])
        if len(hits):
            tp += 1
            raw += profile.a_tp * float(layout.tp_factor[s + hits[0]])
    false = d & ~inside
    raw += profile.a_fp * float(layout.fp_factor[false].sum())
    fn = len(layout.windows) - tp
    raw -= profile.a_fn * fn
    perfect = profile.a_tp * float(scaled_sigmoid(-1.0)) * len(layout.windows)
    return FileScore(raw, -profile.a_fn * len(layout.windows), perfect, tp, int(false.sum()), fn)


def score_corpus(layouts: Sequence[Layout], detections: Iterable[np.ndarray], profile: Profile) -> FileScore:
    """Sum of the files' scores (normalise the sum, never average per-file normalised scores)."""
    total = FileScore(0.0, 0.0, 0.0, 0, 0, 0)
    for layout, d in zip(layouts, detections, strict=True):
        total = total + score_file(layout, d, profile)
    return total


def best_threshold(layouts: Sequence[Layout], scores: Sequence[np.ndarray], profile: Profile,
                   *, candidates: int = 300) -> tuple[float, FileScore]:
    """NAB's optimisation step: the threshold on ``scores`` (rows flagged where ``score >= t``)
    that maximises the corpus score for ``profile``, searched over score quantiles spaced
    logarithmically towards the top (where a good threshold lies: 1e-5 of the rows flagged and up)."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    levels = np.concatenate([1.0 - np.logspace(-5, 0, candidates), np.linspace(0.0, 1.0, 21)])
    grid = np.unique(np.concatenate([np.quantile(pooled, np.clip(levels, 0.0, 1.0)), [np.inf]]))
    best_t, best = float(grid[-1]), score_corpus(layouts, [s >= grid[-1] for s in scores], profile)
    for t in grid[:-1]:
        result = score_corpus(layouts, [s >= t for s in scores], profile)
        if result.raw > best.raw:
            best_t, best = float(t), result
    return best_t, best


def windows_from_times(times: np.ndarray, spans: Sequence[tuple[np.datetime64, np.datetime64]]) -> list[tuple[int, int]]:
    """Inclusive row ranges of the rows whose time lies in each ``(start, end)`` span (sorted
    ``times``); spans holding no row are dropped."""
    t = np.asarray(times)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        lo = int(np.searchsorted(t, start, side="left"))
        hi = int(np.searchsorted(t, end, side="right")) - 1
        if lo <= hi:
            out.append((lo, hi))
    return out

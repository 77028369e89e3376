"""The NAB scoring function (Lavin & Ahmad, ICMLA 2015), with the rules of NAB's own code.

The rules are those of NAB v1.1 (github.com/numenta/NAB, master): ``nab/sweeper.py``
(``calcSweepScore``, ``calcScoreByThreshold``), the optimiser ``nab/optimizer.py`` that sweeps
with them, and ``Runner.normalize`` in ``nab/runner.py`` (``run.py --optimize --score --normalize``).

A detection is a row flagged anomalous. Rows inside the probationary period (the caller gives
its length; NAB's is ``min(floor(0.15 n), 750)``) count for nothing, flagged or not. Each
labelled window rewards only its *first* detection, ``A_TP * sigma(y) / sigma(-1)``, with
``sigma(y) = 2 / (1 + exp(5 y)) - 1`` and ``y = (i - end - 1) / width`` the position relative to
the window's right end (``y = -1`` on the first row of the window: exactly ``A_TP``; ``y -> 0``
at its end). Later detections in the same window neither add nor cost. Detections outside windows
are false positives: after a window they cost ``A_FP * sigma(y)`` with ``y = (i - end) / (width - 1)``
(``sigma`` in (-1, 0): small just after the window, -1 once ``y > 3``); before the first window
they cost ``-A_FP`` in full. A window counts as "after" even when it ended inside the
probationary period. A window without a detection costs ``A_FN``.

Normalised score: ``100 (S - S_null) / (S_perfect - S_null)``. The null detector never fires
(``S_null = -A_FN x scored windows``); ``S_perfect = A_TP x windows``, what a detector firing on the
first row of each window earns. A window that ends inside the probationary period is not scored,
yet NAB counts it in ``S_perfect`` (its corpus has none). Over several files the raw, null and
perfect scores are summed before normalising. Where there are no windows at all (perfect equals
null), the normalised score is NaN; the raw score (0 at best) and FP count still inform.

NAB's threshold optimisation tries every distinct score value ``t`` of the corpus (rows flagged
where ``score >= t``) and flagging nothing, and keeps the best corpus score, the highest threshold
among equals. Where NAB divides by zero (a false positive after a one-row window), the false
positive here costs ``A_FP`` in full.
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


MAX_TP = float(scaled_sigmoid(-1.0))  # sigma on a window's first row, 0.98661...: NAB divides every reward by it


@dataclass(frozen=True)
class Layout:
    """One file's windows as inclusive row ranges, with each row's weights precomputed."""

    n_rows: int
    windows: tuple[tuple[int, int], ...]  # the scored ones: ending at or after the probationary period
    probation: int
    tp_factor: np.ndarray  # sigma(y) / MAX_TP of each row (meaningful inside windows)
    fp_factor: np.ndarray  # sigma(y) after the previous window, -1 before any window; 0 inside windows
    labelled: int  # every window given, scored or not: NAB's perfect score counts them all

    @classmethod
    def build(cls, n_rows: int, windows: Sequence[tuple[int, int]], *, probation: int = 0) -> Layout:
        """``windows``: sorted, non-overlapping inclusive ``(start, end)`` row ranges; those ending
        inside the probationary period cannot be scored (they still set the false-positive decay)."""
        given = tuple((int(s), int(e)) for s, e in windows)
        for (s0, e0), (s1, _) in zip(given, given[1:], strict=False):
            if s1 <= e0:
                raise ValueError(f"windows overlap: ({s0}, {e0}) and ({s1}, ...)")
        if any(s > e or s < 0 or e >= n_rows for s, e in given):
            raise ValueError(f"windows {given} do not fit {n_rows} rows")
        rows = np.arange(n_rows)
        tp = np.zeros(n_rows)
        fp = np.full(n_rows, -1.0)
        for k, (s, e) in enumerate(given):
            width = e - s + 1
            stop = given[k + 1][0] if k + 1 < len(given) else n_rows
            tp[s:e + 1] = scaled_sigmoid((rows[s:e + 1] - e - 1) / width) / MAX_TP
            fp[s:e + 1] = 0.0
            if width > 1:
                fp[e + 1:stop] = scaled_sigmoid((rows[e + 1:stop] - e) / (width - 1))
        kept = tuple((s, e) for s, e in given if e >= probation)
        return cls(n_rows, kept, probation, tp, fp, len(given))

    def window_of_rows(self) -> np.ndarray:
        """Each row's index in :attr:`windows`, -1 outside them."""
        out = np.full(self.n_rows, -1, dtype=np.int64)
        for k, (s, e) in enumerate(self.windows):
            out[s:e + 1] = k
        return out


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
    perfect = profile.a_tp * layout.labelled
    return FileScore(raw, -profile.a_fn * len(layout.windows), perfect, tp, int(false.sum()), fn)


def score_corpus(layouts: Sequence[Layout], detections: Iterable[np.ndarray], profile: Profile) -> FileScore:
    """Sum of the files' scores (normalise the sum, never average per-file normalised scores)."""
    total = FileScore(0.0, 0.0, 0.0, 0, 0, 0)
    for layout, d in zip(layouts, detections, strict=True):
        total = total + score_file(layout, d, profile)
    return total


def best_threshold(layouts: Sequence[Layout], scores: Sequence[np.ndarray], profile: Profile) -> tuple[float, FileScore]:
    """NAB's optimisation step: the threshold on ``scores`` (rows flagged where ``score >= t``) that
    maximises the corpus score for ``profile``, among every distinct score value outside the
    probationary periods, and ``inf`` (flag nothing). Ties go to the highest threshold, as in NAB.

    One sort of all rows and one pass over them, highest score first: a false positive adds its
    cost as it is reached, a window row adds the gain of becoming its window's earliest detection.
    NaN scores are never flagged."""
    parts: list[tuple[np.ndarray, ...]] = []
    n_windows = 0
    for layout, file_scores in zip(layouts, scores, strict=True):
        s = np.asarray(file_scores, dtype=np.float64)
        if s.shape != (layout.n_rows,):
            raise ValueError(f"{s.shape} scores for {layout.n_rows} rows")
        rows = np.arange(layout.probation, layout.n_rows)
        rows = rows[~np.isnan(s[rows])]
        window = layout.window_of_rows()[rows]
        inside = window >= 0
        weight = np.where(inside, profile.a_tp * layout.tp_factor[rows], profile.a_fp * layout.fp_factor[rows])
        parts.append((s[rows], weight, np.where(inside, window + n_windows, -1), rows))
        n_windows += len(layout.windows)
    if not any(len(part[0]) for part in parts):
        return float("inf"), score_corpus(layouts, [np.zeros(lay.n_rows, dtype=bool) for lay in layouts], profile)
    value, weight, window, row = (np.concatenate(col) for col in zip(*parts, strict=True))
    order = np.argsort(-value, kind="stable")
    value, weight, window, row = value[order], weight[order], window[order], row[order]
    gain = np.where(window < 0, weight, 0.0)
    gain[window >= 0] = _window_gains(window, row, weight, profile.a_fn)
    total = -profile.a_fn * n_windows + np.cumsum(gain)
    last = np.flatnonzero(np.append(value[1:] != value[:-1], True))  # the last row of each distinct value
    thresholds = np.concatenate([[np.inf], value[last]])
    results = np.concatenate([[-profile.a_fn * n_windows], total[last]])
    best = float(thresholds[int(np.argmax(results))])  # argmax: the first, highest, of equal scores
    return best, score_corpus(layouts, [np.asarray(s) >= best for s in scores], profile)


def _window_gains(window: np.ndarray, row: np.ndarray, weight: np.ndarray, a_fn: float) -> np.ndarray:
    """For the window rows of a sweep (highest score first): how much each raises its window's part,
    from ``-a_fn`` to the reward of the earliest row detected so far (a later row adds 0)."""
    at = np.flatnonzero(window >= 0)
    if not len(at):
        return np.empty(0)
    by_window = np.argsort(window[at], kind="stable")
    grouped = at[by_window]  # window by window, sweep order kept within each
    w, r = window[grouped], row[grouped]
    key = w * (int(r.max()) + 1) - r  # unique; grows with the window and with earliness in it
    pos = np.arange(len(grouped))
    improved = key == np.maximum.accumulate(key)  # the earliest of its window so far
    current = weight[grouped][np.maximum.accumulate(np.where(improved, pos, 0))]
    first = np.append(True, w[1:] != w[:-1])
    previous = np.where(first, -a_fn, np.append(0.0, current[:-1]))
    gains = np.empty(len(at))
    gains[by_window] = current - previous  # back to sweep order
    return gains


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

"""Detection quality on fresh synthetic data (edge.synth): recall per fault kind, detection
delay, and false alarms per hour on fault-free runs, from any ``score(windows)`` function (pass
``OnnxDetector.score`` to measure what the edge will run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edge.synth import FAULT_KINDS, SAMPLE_PERIOD_S, FaultKind, random_faults, simulate
from models.data import make_windows

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outscores a negative, ties count half)."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    ranks = np.concatenate([neg, pos]).argsort(kind="stable").argsort(kind="stable").astype(np.float64)
    values = np.concatenate([neg, pos])
    for v in np.unique(values):  # average ranks of ties
        idx = values == v
        if idx.sum() > 1:
            ranks[idx] = ranks[idx].mean()
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg)))


def _scores(score: ScoreFn, rows: np.ndarray, window_length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    windows = make_windows(rows, window_length, stride)
    starts = np.arange(len(windows)) * stride
    return np.concatenate([score(windows[i:i + 2048])[0] for i in range(0, len(windows), 2048)]), starts


def evaluate_synthetic(score: ScoreFn, *, threshold: float, window_length: int, stride: int, seeds: Sequence[int],
                       n_steps: int = 12_000, faults_per_run: int = 8, kinds: Sequence[FaultKind] = FAULT_KINDS) -> dict[str, float]:
    """``recall_<kind>`` (share of faults with a window over threshold while the fault is in it),
    ``delay_<kind>_s`` (mean samples from fault start to the end of the first alarming window, x
    sample period), ``auc_<kind>`` (windows inside faults vs fault-free windows),
    ``false_alarms_per_hour`` (windows over threshold per hour of fault-free data) and
    ``false_alarm_events_per_hour`` (runs of consecutive alarming windows per hour)."""
    metrics: dict[str, float] = {}
    clean: list[np.ndarray] = []
    for seed in seeds:
        rows, _ = simulate(n_steps, seed=seed)
        clean.append(_scores(score, rows, window_length, stride)[0])
    clean_all = np.concatenate(clean)
    hours = len(clean_all) * stride * SAMPLE_PERIOD_S / 3600.0
    metrics["false_alarms_per_hour"] = float((clean_all > threshold).sum() / hours)
    events = sum(int(np.sum(np.diff(np.concatenate([[0], (c > threshold).astype(int)])) == 1)) for c in clean)
    metrics["false_alarm_events_per_hour"] = float(events / hours)
    for kind in kinds:
        hits, delays, inside = [], [], []
        for seed in seeds:
            faults = random_faults(n_steps, seed=seed + 7919, count=faults_per_run, kinds=(kind,))
            rows, _ = simulate(n_steps, seed=seed, faults=faults)
            scores, starts = _scores(score, rows, window_length, stride)
            ends = starts + window_length
            for fault in faults:
                overlap = (ends > fault.start) & (starts < fault.start + fault.duration)
                inside.append(scores[(starts >= fault.start) & (ends <= fault.start + fault.duration)])
                alarming = np.flatnonzero(overlap & (scores > threshold))
                hits.append(len(alarming) > 0)
                if len(alarming):
                    delays.append(max(0, int(ends[alarming[0]]) - fault.start) * SAMPLE_PERIOD_S)
        metrics[f"recall_{kind}"] = float(np.mean(hits))
        metrics[f"delay_{kind}_s"] = float(np.mean(delays)) if delays else -1.0
        metrics[f"auc_{kind}"] = auc(clean_all, np.concatenate(inside))
    return metrics

"""From archived telemetry windows and labelled incidents to what a retraining uses.

Rules (each window is counted under exactly one of them, in this order):

1. Channels: a window without every channel of the model is skipped (``skipped_channels``).
2. True-positive incidents: a window of a device in an incident labelled ``true_positive``
   (its span ``[opened_at - pad, last_event_at + pad]``) is a known fault: never trained on, never
   in the holdout; it goes to the true-positive evaluation set (``true_positive``).
3. False-positive incidents: likewise for ``false_positive`` labels, into the false-positive
   evaluation set (``false_positive``). Held out of training so the evaluation is not leaked.
4. Holdout: the latest ``holdout_share`` of each device's remaining windows (``holdout``), whatever
   the live model said about them: filtering them on the live verdict would hand the production
   model a zero false-alarm rate by construction.
5. Flagged: a remaining window the live model flagged anomalous is left out of training when
   ``exclude_flagged`` (``flagged``): probably a fault nobody labelled, not normal behaviour.
6. The rest is trained on (``train``). Rows of training windows are merged per device into
   contiguous segments (overlapping windows share rows), cut wherever a row lies in an excluded
   window's span or in a labelled incident, and wherever time jumps by more than 1.5 sample periods.
   Training windows never straddle a gap or a device.

A family that learns from labels (``ladder``) also gets :func:`labelled_set`: the windows of the
earlier labelled incidents (true positives as anomalies, false positives as normal), while the
latest ``holdout_share`` of each label's incidents (at least one) stay the evaluation sets. A window
inside both a true-positive and a false-positive incident of its device is a contradiction
(``Dataset.contradictions``); only such a family refuses it.

Pure numpy; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from models.data import make_windows


@dataclass(frozen=True)
class ArchivedWindow:
    """One telemetry window from the archive: ``values[i, j]`` is ``channels[j]`` at ``ts[i]``."""

    device_id: str
    channels: tuple[str, ...]
    ts: np.ndarray
    values: np.ndarray
    score: float
    threshold: float
    anomalous: bool
    model_sha256: str = ""

    @property
    def start(self) -> float:
        return float(self.ts[0])

    @property
    def end(self) -> float:
        return float(self.ts[-1])


@dataclass(frozen=True)
class LabelledIncident:
    """An incident an operator labelled: which devices, when, and the verdict."""

    incident_id: str
    label: str  # "true_positive" | "false_positive"
    device_ids: tuple[str, ...]
    start: float  # the incident's opened_at (its first anomalies lie up to the processor's window_s before: pad covers it)
    end: float  # last_event_at: the last anomaly's window end


@dataclass
class Dataset:
    """What one retraining uses; windows are ``(n, window_length, channels)`` float32 in model channel order."""

    train_segments: list[np.ndarray]
    holdout: np.ndarray
    incident_windows: dict[str, np.ndarray]  # incident id -> its windows (labelled incidents with archived windows)
    incident_labels: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    time_range: tuple[float, float] | None = None
    contradictions: list[tuple[str, float, str, str]] = field(default_factory=list)  # device, window start, tp id, fp id
    incident_starts: dict[str, float] = field(default_factory=dict)

    @property
    def train_windows(self) -> int:
        return self.counts.get("train_windows", 0)


def build_dataset(windows: Sequence[ArchivedWindow], incidents: Sequence[LabelledIncident], *, channels: Sequence[str],
                  window_length: int, train_stride: int, eval_stride: int, sample_period_s: float,
                  holdout_share: float, incident_pad_s: float, exclude_flagged: bool) -> Dataset:
    """Apply the module's rules; see there. ``windows`` may come in any order."""
    channels = tuple(channels)
    counts = dict.fromkeys(("archived", "skipped_channels", "true_positive", "false_positive", "holdout", "flagged",
                            "train"), 0)
    spans: dict[str, list[tuple[float, float, LabelledIncident]]] = defaultdict(list)
    for inc in sorted(incidents, key=lambda i: i.label != "true_positive"):  # a window in both kinds is a fault
        for device in inc.device_ids:
            spans[device].append((inc.start - incident_pad_s, inc.end + incident_pad_s, inc))
    by_device: dict[str, list[tuple[ArchivedWindow, np.ndarray]]] = defaultdict(list)
    incident_rows: dict[str, list[np.ndarray]] = defaultdict(list)
    excluded: dict[str, list[tuple[float, float]]] = defaultdict(list)
    contradictions: list[tuple[str, float, str, str]] = []
    for w in windows:
        counts["archived"] += 1
        values = _reorder(w, channels)
        if values is None:
            counts["skipped_channels"] += 1
            continue
        hits = [s[2] for s in spans.get(w.device_id, ()) if w.start <= s[1] and w.end >= s[0]]
        hit = hits[0] if hits else None
        both = next((h for h in hits if h.label != "true_positive"), None)
        if hit is not None and hit.label == "true_positive" and both is not None:
            contradictions.append((w.device_id, w.start, hit.incident_id, both.incident_id))
        if hit is not None:
            counts[hit.label] += 1
            incident_rows[hit.incident_id].append(values)
            excluded[w.device_id].append((w.start, w.end))
            continue
        by_device[w.device_id].append((w, values))
    holdout: list[np.ndarray] = []
    train_rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for device, items in by_device.items():
        items.sort(key=lambda item: item[0].start)
        cut = len(items) - int(round(holdout_share * len(items))) if len(items) > 1 else len(items)
        for w, values in items[cut:]:
            holdout.append(values)
            excluded[device].append((w.start, w.end))
        counts["holdout"] += len(items) - cut
        for w, values in items[:cut]:
            if exclude_flagged and w.anomalous:
                counts["flagged"] += 1
                excluded[device].append((w.start, w.end))
            else:
                counts["train"] += 1
                train_rows[device].append((w.ts, values))
    segments = [seg for device, rows in sorted(train_rows.items())
                for seg in _segments(rows, excluded[device], sample_period_s)]
    holdout_windows = _cut(holdout, window_length, eval_stride, len(channels))
    incident_windows = {k: _cut(v, window_length, eval_stride, len(channels)) for k, v in incident_rows.items()}
    counts["train_windows"] = int(sum(max(0, (len(s) - window_length) // train_stride + 1) for s in segments))
    counts["train_rows"] = int(sum(len(s) for s in segments))
    counts["holdout_windows"] = len(holdout_windows)
    labels = {inc.incident_id: inc.label for inc in incidents if inc.incident_id in incident_windows}
    times = [w.start for w in windows] + [w.end for w in windows]
    return Dataset(segments, holdout_windows, incident_windows, labels, counts,
                   devices=sorted(by_device), time_range=(min(times), max(times)) if times else None,
                   contradictions=contradictions, incident_starts={inc.incident_id: inc.start for inc in incidents})


def labelled_set(d: Dataset, holdout_share: float) -> tuple[np.ndarray, np.ndarray, Dataset]:
    """Training windows and 0/1 labels from the labelled incidents (true positive = 1), and ``d``
    with only the incidents kept for evaluation: per label, the latest ``holdout_share`` of its
    incidents by start, at least one. Windows ``(n, window_length, channels)``; none: ``n = 0``."""
    train: list[tuple[np.ndarray, int]] = []
    keep: set[str] = set()
    for label, flag in (("true_positive", 1), ("false_positive", 0)):
        ids = sorted((i for i, lab in d.incident_labels.items() if lab == label), key=lambda i: d.incident_starts.get(i, 0.0))
        n_eval = max(1, int(np.ceil(holdout_share * len(ids)))) if ids else 0
        keep.update(ids[len(ids) - n_eval:])
        train.extend((d.incident_windows[i], flag) for i in ids[:len(ids) - n_eval])
    shape = d.holdout.shape[1:]
    windows = np.concatenate([w for w, _ in train]) if train else np.empty((0, *shape), dtype=np.float32)
    labels = np.concatenate([np.full(len(w), flag, dtype=np.int64) for w, flag in train]) if train else np.empty(0, dtype=np.int64)
    kept = replace(d, incident_windows={i: w for i, w in d.incident_windows.items() if i in keep},
                   incident_labels={i: lab for i, lab in d.incident_labels.items() if i in keep})
    return windows, labels, kept


def degenerate(d: Dataset, channels: Sequence[str], max_flat_share: float) -> str:
    """Non-finite training rows, or too many rows in segments where a channel is constant (a stuck or
    dead sensor, a broken gateway): nothing sensible can be learnt from them."""
    rows = np.concatenate(d.train_segments)
    if not np.all(np.isfinite(rows)):
        return "training data: non-finite values"
    flat_rows, flat = 0, set()
    for seg in d.train_segments:
        std, level = seg.std(axis=0), np.maximum(1.0, np.abs(seg.mean(axis=0)))
        stuck = [c for c, s, m in zip(channels, std, level, strict=True) if s <= 1e-9 * m]
        if stuck:
            flat_rows += len(seg)
            flat.update(stuck)
    share = flat_rows / len(rows)
    if share > max_flat_share:
        return f"training data: {share:.0%} of the rows in segments with a constant channel ({', '.join(sorted(flat))})"
    return ""


def _reorder(w: ArchivedWindow, channels: tuple[str, ...]) -> np.ndarray | None:
    if w.channels == channels:
        return np.asarray(w.values, dtype=np.float64)
    if not set(channels) <= set(w.channels):
        return None
    return np.asarray(w.values, dtype=np.float64)[:, [w.channels.index(c) for c in channels]]


def _segments(rows: list[tuple[np.ndarray, np.ndarray]], excluded: list[tuple[float, float]],
              period: float) -> list[np.ndarray]:
    """Merge windows' rows by timestamp (first value wins), drop excluded rows, split at gaps."""
    ts = np.concatenate([t for t, _ in rows])
    values = np.concatenate([v for _, v in rows])
    ts, first = np.unique(ts, return_index=True)
    values = values[first]
    keep = np.ones(len(ts), dtype=bool)
    for lo, hi in excluded:
        keep &= ~((ts >= lo) & (ts <= hi))
    ts, values = ts[keep], values[keep]
    if len(ts) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ts) > 1.5 * period) + 1
    return [seg for seg in np.split(values, breaks) if len(seg)]


def _cut(windows: list[np.ndarray], window_length: int, stride: int, n_channels: int) -> np.ndarray:
    """Evaluation windows of exactly ``window_length`` rows: archived windows as they are when their
    length matches, else cut with ``stride`` (shorter ones are dropped)."""
    out = [make_windows(w, window_length, stride) if len(w) != window_length else w[None].astype(np.float32) for w in windows]
    out = [w for w in out if len(w)]
    return np.concatenate(out) if out else np.empty((0, window_length, n_channels), dtype=np.float32)

"""NAB's streaming protocol, scored from onnxruntime outputs.

Per file: the probationary period (the first 15 % of rows, at most 750) is the only training
data; a fresh model is fitted on it, every row gets a score in [0, 1] (``s / (s + threshold)``,
so 0.5 is the threshold calibrated on the probationary rows), and detections inside the
probationary period are ignored. After a row at or above 0.5 the detector stays quiet (reports
0) for ``holdoff`` rows: NAB counts every flagged row outside a window as a false positive, so
a score that stays high through a regime change would otherwise cost hundreds of them; the
rule is causal (no look-ahead), as NAB requires. Windows come from ``labels/combined_windows.json``. As in NAB,
the detection threshold is then optimised per profile over the whole corpus; the calibrated
threshold (0.5, no label used) is reported next to it. Scores are given per category
(``data/<category>/``) and for the corpus.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cloud.evaluate.nab_score import PROFILES, FileScore, Layout, best_threshold, score_corpus, windows_from_times
from cloud.evaluate.protocol import fit_and_score
from edge.contract.errors import ConfigError
from models.config import TrainConfig

log = logging.getLogger(__name__)

NAB_DEFAULTS: dict[str, object] = {
    "window_length": 16, "train_stride": 1, "stride": 1, "hidden": 32, "latent": 4, "epochs": 40,
    "batch_size": 32, "validation_split": 0.1, "early_stopping": 8, "preprocess": "zscore", "quantile": 0.99, "margin": 1.5,
}


@dataclass(frozen=True)
class NabFile:
    key: str  # "<category>/<file>.csv", as in combined_windows.json
    times: np.ndarray  # datetime64[s]
    values: np.ndarray  # (n, 1)
    layout: Layout

    @property
    def category(self) -> str:
        return self.key.split("/")[0]


def probation_rows(n_rows: int) -> int:
    """NAB's probationary period: 15 % of the file, at most 750 rows."""
    return min(int(0.15 * n_rows), 750)


def read_nab_file(path: Path, key: str, spans: Sequence[tuple[str, str]]) -> NabFile:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        if header[:2] != ["timestamp", "value"]:
            raise ConfigError(f"{path}: expected a NAB header timestamp,value, got {header}")
        body = [row for row in reader if row]
    try:
        times = np.array([r[0].strip() for r in body], dtype="datetime64[s]")
        values = np.array([[float(r[1])] for r in body])
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable row: {exc}") from None
    windows = windows_from_times(times, [(np.datetime64(s[:19]), np.datetime64(e[:19])) for s, e in spans])
    return NabFile(key, times, values, Layout.build(len(times), windows, probation=probation_rows(len(times))))


def discover_nab(data_dir: Path | str) -> list[NabFile]:
    """Files under ``data_dir/data/<category>/*.csv`` with windows from ``data_dir/labels/combined_windows.json``."""
    root = Path(data_dir)
    labels_path = root / "labels" / "combined_windows.json"
    try:
        labels: Mapping[str, list[tuple[str, str]]] = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--data {root}: cannot read {labels_path}: {exc}") from None
    paths = sorted((root / "data").glob("*/*.csv"))
    if not paths:
        raise ConfigError(f"--data {root}: no data/<category>/*.csv files")
    files = []
    for path in paths:
        key = f"{path.parent.name}/{path.name}"
        if key not in labels:
            raise ConfigError(f"{labels_path}: no windows for {key}")
        files.append(read_nab_file(path, key, labels[key]))
    return files


def unit_scores(raw: np.ndarray, threshold: float) -> np.ndarray:
    """Map non-negative scores to [0, 1) with the threshold at 0.5: ``s / (s + threshold)``."""
    s = np.maximum(np.asarray(raw, dtype=np.float64), 0.0)
    return s / (s + max(threshold, 1e-12))


def hold_off(scores: np.ndarray, rows: int, *, level: float = 0.5) -> np.ndarray:
    """Causal alarm hold-off: after a row scoring ``level`` or more, the next ``rows`` rows report 0."""
    out = np.asarray(scores, dtype=np.float64).copy()
    quiet = 0
    for i, value in enumerate(out):
        if quiet > 0:
            out[i] = 0.0
            quiet -= 1
        elif value >= level:
            quiet = rows
    return out


def score_files(files: Sequence[NabFile], config: TrainConfig, *, holdoff: int = 0,
                progress: bool = True) -> tuple[list[np.ndarray], list[float]]:
    """One score in [0, 1] per row of every file (after the hold-off), and the fit seconds per file."""
    scores, seconds = [], []
    for f in tqdm(files, desc=f"nab {config.family}", unit="file", disable=not progress):
        run = fit_and_score(f.values, f.layout.probation, config, channels=["value"])
        scores.append(hold_off(unit_scores(run.scores, run.threshold), holdoff))
        seconds.append(run.fit_seconds)
    return scores, seconds


def _entry(score: FileScore, threshold: float) -> dict[str, float]:
    return {"score": score.normalised, "raw": score.raw, "threshold": threshold, "tp": score.tp, "fp": score.fp, "fn": score.fn}


def nab_metrics(files: Sequence[NabFile], scores: Sequence[np.ndarray]) -> dict[str, Any]:
    """Per profile: the corpus-optimised threshold and, per category and for the corpus, the
    normalised score with that threshold and with the calibrated one (0.5)."""
    layouts = [f.layout for f in files]
    categories = sorted({f.category for f in files})
    out: dict[str, Any] = {}
    for name, profile in PROFILES.items():
        t_best, _ = best_threshold(layouts, scores, profile)
        entry: dict[str, Any] = {"optimised_threshold": t_best}
        for group in [*categories, "corpus"]:
            idx = [i for i, f in enumerate(files) if group in ("corpus", f.category)]
            sub_layouts, sub_scores = [layouts[i] for i in idx], [scores[i] for i in idx]
            entry[group] = {
                "optimised": _entry(score_corpus(sub_layouts, [s >= t_best for s in sub_scores], profile), t_best),
                "calibrated": _entry(score_corpus(sub_layouts, [s >= 0.5 for s in sub_scores], profile), 0.5),
            }
        out[name] = entry
    return out


def write_scores(files: Sequence[NabFile], scores: Sequence[np.ndarray], out_dir: Path) -> None:
    """NAB's results format: ``out_dir/<category>/<file>.csv`` with ``timestamp,value,anomaly_score,label``."""
    for f, s in zip(files, scores, strict=True):
        target = out_dir / f.key
        target.parent.mkdir(parents=True, exist_ok=True)
        label = np.zeros(len(s), dtype=int)
        for a, b in f.layout.windows:
            label[a:b + 1] = 1
        with target.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "value", "anomaly_score", "label"])
            for t, v, x, y in zip(np.datetime_as_string(f.times, unit="s"), f.values[:, 0], s, label, strict=True):
                writer.writerow([str(t).replace("T", " "), f"{v:.6g}", f"{x:.6f}", int(y)])

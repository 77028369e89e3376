"""NAB's streaming protocol, scored from onnxruntime outputs through the agent's decision path.

Per file: the probationary period (the first 15 % of rows, at most 750) is the only training
data; a fresh model is fitted on it and every row gets the onnxruntime score of the window ending
on it. Detections inside the probationary period are ignored; windows come from
``labels/combined_windows.json``.

**The agent's decisions (the main figures).** Each file is one device: its scores go through
the agent's adaptive layer and debounce with the agent's config
(:mod:`cloud.evaluate.agent_path`). A detection is a window whose event *opens* an anomaly run;
the events that continue an open run are the same anomaly (the processor folds them into one
incident), and NAB would count each as a false positive after its window. The detection's NAB
score is its anomaly likelihood (:func:`edge.adaptive.likelihood`, 0 on rows without an opening
event), so NAB's optimised threshold can only drop openings, and the label-free default is the
agent's own (``1 - adaptive.target_rate``). ``every_window`` counts every firing window instead.

**Static (the previous path, for comparison).** ``s / (s + threshold)`` with the threshold
calibrated on the probationary rows at 0.5, and after a row at or above 0.5 a causal hold-off of
``holdoff`` rows reporting 0 (a length chosen in an earlier round with NAB's labels in view).

As in NAB, the detection threshold is optimised per profile over the whole corpus; the default
threshold (no label used) is reported next to it. Scores are given per category (``data/<category>/``),
for the corpus, and per file (standard profile, default threshold) for the spread.
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

from cloud.evaluate.agent_path import AgentDecisions, decide_run
from cloud.evaluate.nab_score import PROFILES, FileScore, Layout, best_threshold, score_corpus, windows_from_times
from cloud.evaluate.protocol import fit_and_score
from edge.config import Config
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


@dataclass(frozen=True)
class NabRun:
    """One file's outcome: the agent's decisions, the static path's scores, the fit seconds."""

    agent: AgentDecisions
    static: np.ndarray
    fit_seconds: float

    @property
    def openings(self) -> np.ndarray:
        """NAB score column of the agent's detections: the likelihood of each run-opening window, else 0."""
        return np.where(self.agent.opens, self.agent.likelihood, 0.0)

    @property
    def every_window(self) -> np.ndarray:
        return np.where(self.agent.fire, self.agent.likelihood, 0.0)


def score_files(files: Sequence[NabFile], config: TrainConfig, agent: Config, *, holdoff: int = 0,
                progress: bool = True) -> list[NabRun]:
    """Fit, score and decide every file (blocks; torch in the calling thread)."""
    runs = []
    for f in tqdm(files, desc=f"nab {config.family}", unit="file", disable=not progress):
        run = fit_and_score(f.values, f.layout.probation, config, channels=["value"])
        decisions = decide_run(run, f.times, f.values, start=f.layout.probation, window_length=config.window_length, config=agent)
        runs.append(NabRun(decisions, hold_off(unit_scores(run.scores, run.threshold), holdoff), run.fit_seconds))
    return runs


def _entry(score: FileScore, threshold: float) -> dict[str, float]:
    return {"score": score.normalised, "raw": score.raw, "threshold": threshold, "tp": score.tp, "fp": score.fp, "fn": score.fn}


def nab_metrics(files: Sequence[NabFile], scores: Sequence[np.ndarray], *, default: float = 0.5) -> dict[str, Any]:
    """Per profile: the corpus-optimised threshold and, per category and for the corpus, the
    normalised score with that threshold and with the label-free ``default`` (under the key
    ``calibrated``); per file, the standard profile's score at ``default`` (``per_file``)."""
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
                "calibrated": _entry(score_corpus(sub_layouts, [s >= default for s in sub_scores], profile), default),
            }
        out[name] = entry
    standard = PROFILES["standard"]
    out["per_file"] = {f.key: _entry(score_corpus([f.layout], [s >= default], standard), default)
                       for f, s in zip(files, scores, strict=True)}
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

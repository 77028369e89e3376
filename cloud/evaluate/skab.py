"""The SKAB leaderboard protocol, scored from onnxruntime outputs through the agent's decision path.

For every labelled file: fit a fresh preprocessing and model on the first 400 rows, calibrate
the threshold on those rows only, predict the remaining rows. The prediction for a row is the
agent's decision on the window ending there (:mod:`cloud.evaluate.agent_path`: the adaptive
layer and debounce with the agent's config, the file one device seen from its first row); the
static prediction (the file's calibrated threshold x a scale) is kept beside it. Outlier metrics (F1, FAR, MAR)
are micro-averaged over all files; changepoint detection is scored with NAB (predicted
changepoints = rising edges of the binary prediction, a window of ``nab_window_s`` to the right
of every true changepoint, cut short where the next true changepoint starts).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cloud.evaluate.agent_path import decide_run
from cloud.evaluate.metrics import Counts, confusion, micro, rising_edges
from cloud.evaluate.nab_score import PROFILES, FileScore, Layout, score_file
from cloud.evaluate.protocol import fit_and_score
from edge.config import Config
from edge.contract.errors import ConfigError
from models.config import TrainConfig

log = logging.getLogger(__name__)

N_TRAIN = 400
LABEL_COLUMNS = ("anomaly", "changepoint")
TIME_COLUMN = "datetime"
DEFAULT_EXCLUDE = ("anomaly-free",)

# Shared by every family unless a TOML file or a flag says otherwise (see docs/benchmarks.md).
# scale_floor: a z-score scale of at least 1 % of each channel's mean level; SKAB's thermocouple
# and temperature barely move in 400 rows, then drift several of those tiny sds on normal rows.
SKAB_DEFAULTS: dict[str, object] = {
    "window_length": 16, "train_stride": 1, "stride": 1, "hidden": 32, "latent": 8, "epochs": 40,
    "batch_size": 32, "validation_split": 0.1, "early_stopping": 8, "lr": 1e-3,
    "preprocess": "zscore", "scale_floor": 0.01, "score_mode": "mse", "quantile": 0.99, "margin": 1.5,
}


@dataclass(frozen=True)
class SkabFile:
    """One SKAB CSV: times, sensor rows ``(n, channels)``, labels."""

    path: Path
    subfolder: str
    times: np.ndarray  # datetime64[s]
    rows: np.ndarray
    channels: tuple[str, ...]
    anomaly: np.ndarray  # int8
    changepoint: np.ndarray  # int8

    @property
    def key(self) -> str:
        return f"{self.subfolder}/{self.path.stem}"


@dataclass
class FileResult:
    """One file's test-row scores (onnxruntime), its per-file threshold, and the agent's decisions
    and thresholds on its test rows; static decisions at any threshold scale derive from the scores."""

    file: SkabFile
    scores: np.ndarray  # test rows
    base_threshold: float  # calibrated on the file's training rows
    fit_seconds: float
    layout: Layout  # changepoint NAB windows over the test rows
    agent: np.ndarray  # the agent fires on the window ending on each test row
    agent_thresholds: np.ndarray

    def prediction(self, scale: float | None = None) -> np.ndarray:
        """The agent's decisions (``scale`` None), or the static threshold x ``scale``."""
        if scale is None:
            return self.agent.astype(np.int8)
        return (self.scores > self.base_threshold * scale).astype(np.int8)


@dataclass
class RunResult:
    """One family, one seed, all files."""

    family: str
    seed: int
    files: list[FileResult] = field(default_factory=list)
    n_train: int = N_TRAIN

    def counts(self, scale: float | None = None) -> Counts:
        return micro(confusion(r.file.anomaly[self.n_train:], r.prediction(scale)) for r in self.files)

    def metrics(self, scale: float | None = None) -> dict[str, float]:
        """Micro F1/FAR/MAR and counts, changepoint NAB scores per profile, median fit seconds; of
        the agent's decisions (``scale`` None) or of the static threshold x ``scale``."""
        out = self.counts(scale).as_dict()
        for name, profile in PROFILES.items():
            total = FileScore(0.0, 0.0, 0.0, 0, 0, 0)
            for r in self.files:
                total = total + score_file(r.layout, _edges(r.prediction(scale)), profile)
            out[f"nab_{name}"] = total.normalised
        out["fit_seconds_per_file"] = float(np.median([r.fit_seconds for r in self.files]))  # median: the first fit pays imports
        return out


def read_skab(path: Path | str, *, root: Path | None = None, labelled: bool = True) -> SkabFile:
    """Read one ``;``-separated SKAB file (mixed line endings are fine); raises ConfigError when a
    required column is missing or a value is not numeric. ``labelled=False`` (SKAB's anomaly-free
    file has no label columns) reads missing label columns as all zeros."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=";")
        header = [h.strip() for h in next(reader)]
        body = [row for row in reader if row and any(cell.strip() for cell in row)]
    missing = [c for c in (TIME_COLUMN, *LABEL_COLUMNS) if c not in header]
    if not labelled and TIME_COLUMN in header and set(missing) <= set(LABEL_COLUMNS):
        header, body, missing = header + missing, [row + ["0"] * len(missing) for row in body], []
    if missing:
        raise ConfigError(f"{path}: SKAB columns {missing} missing from header {header}")
    channels = tuple(h for h in header if h not in (TIME_COLUMN, *LABEL_COLUMNS))
    try:
        times = np.array([row[header.index(TIME_COLUMN)].strip() for row in body], dtype="datetime64[s]")
        values = np.array([[float(row[header.index(c)]) for c in (*channels, *LABEL_COLUMNS)] for row in body])
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"{path}: unreadable row: {exc}") from None
    subfolder = path.parent.relative_to(root).as_posix() if root is not None and path.parent != root else path.parent.name
    return SkabFile(path, subfolder, times, values[:, :len(channels)], channels,
                    values[:, -2].astype(np.int8), values[:, -1].astype(np.int8))


def discover(data_dir: Path | str, *, exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[SkabFile]:
    """Every ``*.csv`` under ``data_dir`` (recursively, natural order), skipping folders named in ``exclude``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: not a directory")
    paths = [p for p in root.rglob("*.csv") if not set(p.relative_to(root).parts[:-1]) & set(exclude)]
    if not paths:
        raise ConfigError(f"--data {root}: no SKAB csv files (excluded folders: {', '.join(exclude) or 'none'})")
    return [read_skab(p, root=root) for p in sorted(paths, key=_natural)]


def _natural(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def changepoint_layout(times: np.ndarray, changepoints: np.ndarray, window_s: float) -> Layout:
    """NAB windows ``[cp, cp + window_s]`` over ``times``, each cut before the next changepoint."""
    cps = np.flatnonzero(changepoints)
    spans: list[tuple[int, int]] = []
    for k, cp in enumerate(cps):
        end_time = times[cp] + np.timedelta64(int(round(window_s * 1000)), "ms")
        end = int(np.searchsorted(times, end_time, side="right")) - 1
        if k + 1 < len(cps):
            end = min(end, int(cps[k + 1]) - 1)
        spans.append((int(cp), max(end, int(cp))))
    return Layout.build(len(times), spans)


def evaluate_file(f: SkabFile, config: TrainConfig, agent: Config, *, n_train: int = N_TRAIN,
                  nab_window_s: float = 60.0) -> FileResult:
    """The protocol on one file (blocks while it trains)."""
    if len(f.rows) <= n_train:
        raise ConfigError(f"{f.path}: {len(f.rows)} rows, the protocol needs more than {n_train}")
    run = fit_and_score(f.rows, n_train, config, channels=f.channels)
    decisions = decide_run(run, f.times, f.rows, start=n_train, window_length=config.window_length, config=agent)
    layout = changepoint_layout(f.times[n_train:], f.changepoint[n_train:], nab_window_s)
    return FileResult(f, run.scores[n_train:], run.threshold, run.fit_seconds, layout, decisions.fire[n_train:],
                      decisions.thresholds[n_train:])


def _edges(prediction: np.ndarray) -> np.ndarray:
    detections = np.zeros(len(prediction), dtype=bool)
    detections[rising_edges(prediction)] = True
    return detections


def evaluate_run(files: Sequence[SkabFile], config: TrainConfig, agent: Config, *, n_train: int = N_TRAIN,
                 nab_window_s: float = 60.0, progress: bool = True) -> RunResult:
    """The protocol on every file for one family and seed (``config.family``, ``config.seed``)."""
    result = RunResult(config.family, config.seed, n_train=n_train)
    bar = tqdm(files, desc=f"skab {config.family} seed {config.seed}", unit="file", disable=not progress)
    for f in bar:
        r = evaluate_file(f, config, agent, n_train=n_train, nab_window_s=nab_window_s)
        result.files.append(r)
        total = result.counts()
        bar.set_postfix(f1=f"{total.f1:.3f}", far=f"{total.far:.3f}")
        log.debug("skab_file_evaluated file=%s threshold=%.4g fit_s=%.2f", f.key, r.base_threshold, r.fit_seconds)
    return result


def all_anomaly_baseline(files: Sequence[SkabFile], *, n_train: int = N_TRAIN, nab_window_s: float = 60.0) -> dict[str, float]:
    """Metrics of predicting "anomaly" on every test row (one changepoint, at the first test row)."""
    counts = micro(confusion(f.anomaly[n_train:], np.ones(len(f.rows) - n_train)) for f in files)
    out = counts.as_dict()
    for name, profile in PROFILES.items():
        total = FileScore(0.0, 0.0, 0.0, 0, 0, 0)
        for f in files:
            layout = changepoint_layout(f.times[n_train:], f.changepoint[n_train:], nab_window_s)
            d = np.zeros(len(f.rows) - n_train, dtype=bool)
            d[0] = True
            total = total + score_file(layout, d, profile)
        out[f"nab_{name}"] = total.normalised
    return out


def write_predictions(result: RunResult, out_dir: Path, *, scale: float | None = None) -> None:
    """``out_dir/<subfolder>/<file>.csv`` with ``datetime,score,anomaly`` for the test rows
    (``anomaly``: the agent's decision, or with ``scale`` the static threshold x ``scale``)."""
    n_train = result.n_train
    for r in result.files:
        target = out_dir / r.file.subfolder / f"{r.file.path.stem}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        times = np.datetime_as_string(r.file.times[n_train:], unit="s")
        with target.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["datetime", "score", "anomaly"])
            for t, s, p in zip(times, r.scores, r.prediction(scale), strict=True):
                writer.writerow([str(t).replace("T", " "), f"{s:.6g}", int(p)])

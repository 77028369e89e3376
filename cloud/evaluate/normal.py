"""Threshold scale from anomaly-free data: the one label-free knob tuned outside the protocol.

The threshold each file calibrates on its own 400 training rows is in-sample and sees only
minutes of a slowly drifting process, so on later normal rows it fires far more often than
its nominal rate. This module measures by how much: it cuts an anomaly-free recording into
pseudo-files as long as the benchmark's, runs the same protocol on each, and returns the factor
by which the per-file thresholds must be multiplied for the pooled false-alarm rate on those
normal test rows to equal a target. Applying one factor to every labelled file uses no label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cloud.evaluate.agent_path import decide_run
from cloud.evaluate.protocol import fit_and_score
from cloud.evaluate.skab import SkabFile, read_skab
from edge.config import Config
from edge.contract.errors import ConfigError
from models.config import TrainConfig

log = logging.getLogger(__name__)


def normal_chunks(path: Path | str, *, length: int, min_rows: int) -> list[SkabFile]:
    """An anomaly-free SKAB file (or every csv in a folder) cut into consecutive pieces of
    ``length`` rows (a shorter tail is dropped if under ``min_rows``). Raises ConfigError if a
    row is labelled anomalous."""
    source = Path(path)
    paths = sorted(source.glob("*.csv")) if source.is_dir() else [source]
    if not paths or not all(p.exists() for p in paths):
        raise ConfigError(f"--normal {source}: no csv file")
    chunks: list[SkabFile] = []
    for p in paths:
        f = read_skab(p, labelled=False)
        if f.anomaly.any():
            raise ConfigError(f"--normal {p}: {int(f.anomaly.sum())} rows are labelled anomalous")
        for k, start in enumerate(range(0, len(f.rows), length)):
            stop = min(start + length, len(f.rows))
            if stop - start < min_rows:
                break
            part = slice(start, stop)
            chunks.append(replace(f, path=p.with_name(f"{p.stem}#{k}.csv"), times=f.times[part], rows=f.rows[part],
                                  anomaly=f.anomaly[part], changepoint=f.changepoint[part]))
    if not chunks:
        raise ConfigError(f"--normal {source}: no piece of {min_rows} rows or more")
    return chunks


@dataclass(frozen=True)
class NormalRun:
    """Every test row of every anomaly-free piece: ``score / threshold`` (static path) and whether
    the agent fired (its false alarms; pieces decided as in the protocol, each one device)."""

    ratios: np.ndarray
    agent_fires: np.ndarray

    @property
    def agent_far(self) -> float:
        return float(np.mean(self.agent_fires))


def normal_ratios(chunks: Sequence[SkabFile], config: TrainConfig, agent: Config, *, n_train: int,
                  progress: bool = True) -> NormalRun:
    """Each piece fitted, calibrated and decided as in the protocol; see :class:`NormalRun`."""
    ratios, fires = [], []
    for f in tqdm(chunks, desc=f"normal {config.family} seed {config.seed}", unit="file", disable=not progress):
        run = fit_and_score(f.rows, n_train, config, channels=f.channels)
        ratios.append(run.scores[n_train:] / run.threshold)
        decisions = decide_run(run, f.times, f.rows, start=n_train, window_length=config.window_length, config=agent)
        fires.append(decisions.fire[n_train:])
    result = NormalRun(np.concatenate(ratios), np.concatenate(fires))
    log.info("normal_ratios_measured family=%s seed=%d rows=%d unscaled_far=%.3f agent_far=%.3f", config.family, config.seed,
             len(result.ratios), float(np.mean(result.ratios > 1.0)), result.agent_far)
    return result


def scale_for_far(ratios: np.ndarray, far_target: float) -> float:
    """The factor ``k`` such that ``score > k x threshold`` flags ``far_target`` of the normal rows."""
    if not 0.0 < far_target < 1.0:
        raise ConfigError(f"--far-target {far_target}: must be between 0 and 1")
    return float(np.quantile(ratios, 1.0 - far_target))

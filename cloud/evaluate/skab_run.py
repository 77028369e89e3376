"""``edgewatch evaluate skab``: families x seeds over SKAB files, outputs and summary.

Output layout: one family -> ``OUT/predictions/<subfolder>/<file>.csv`` and ``OUT/plot.png``;
several -> the same under ``OUT/<family>/``. ``OUT/metrics.json`` always holds every family:
its config, per-seed metrics and mean/sd, and the all-anomaly baseline. Predictions and the
plot come from the first seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cloud.evaluate.normal import threshold_scale
from cloud.evaluate.report import plot_scores, summarise, write_json
from cloud.evaluate.skab import N_TRAIN, SKAB_DEFAULTS, SkabFile, all_anomaly_baseline, evaluate_run, write_predictions
from models.config import TrainConfig, config_from_mapping

log = logging.getLogger(__name__)

# Per-family departures from SKAB_DEFAULTS (architecture needs, not tuning on test labels).
FAMILY_DEFAULTS: dict[str, dict[str, object]] = {
    "lstm_ae": {"hidden": 32},
    "lstm_forecast": {"hidden": 32},
    "tadgan": {"epochs": 60, "early_stopping": 0},
}


def family_config(family: str, seed: int, overrides: Mapping[str, object], *, origin: str = "evaluate skab") -> TrainConfig:
    """SKAB defaults < family defaults < ``overrides`` (TOML file and flags), for one family and seed."""
    data: dict[str, object] = {**SKAB_DEFAULTS, **FAMILY_DEFAULTS.get(family, {}), **overrides, "family": family, "seed": seed}
    return config_from_mapping(data, origin=origin)


def run_skab(files: Sequence[SkabFile], families: Sequence[str], seeds: Sequence[int], out: Path, *,
             overrides: Mapping[str, object] | None = None, n_train: int = N_TRAIN, nab_window_s: float = 60.0,
             normal: Sequence[SkabFile] = (), far_target: float = 0.1, progress: bool = True) -> dict[str, Any]:
    """Run the protocol, write predictions, plots and ``metrics.json``; returns the metrics
    payload. With ``normal`` pieces of anomaly-free data, each family and seed first finds the
    threshold scale that gives ``far_target`` on them (:mod:`cloud.evaluate.normal`).
    Uses one torch thread (restored afterwards). Blocks for minutes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "protocol": {"benchmark": "SKAB", "n_train": n_train, "nab_window_s": nab_window_s, "files": len(files),
                     "test_rows": int(sum(len(f.rows) - n_train for f in files)),
                     "point_score": "score of the window ending on the row (onnxruntime)",
                     "predicted_changepoints": "rising edges of the binary prediction",
                     "averaging": "micro (counts summed over files)", "seeds": list(seeds),
                     "threshold": (f"per-file calibration x scale for a {far_target:.0%} false-alarm rate on "
                                   f"{len(normal)} anomaly-free pieces") if normal else "per-file calibration"},
        "baseline_all_anomaly": all_anomaly_baseline(files, n_train=n_train, nab_window_s=nab_window_s),
        "families": {},
    }
    try:
        for family in families:
            base = out if len(families) == 1 else out / family
            per_seed: list[dict[str, float]] = []
            config = family_config(family, seeds[0], overrides or {})
            for i, seed in enumerate(seeds):
                config = family_config(family, seed, overrides or {})
                scale, normal_summary = 1.0, dict[str, float]()
                if normal:
                    scale, normal_summary = threshold_scale(normal, config, far_target=far_target, n_train=n_train,
                                                            progress=progress)
                result = evaluate_run(files, config, n_train=n_train, nab_window_s=nab_window_s, threshold_scale=scale,
                                      progress=progress)
                per_seed.append({**result.metrics(), **normal_summary})
                if i == 0:
                    write_predictions(result, base / "predictions", n_train=n_train)
                    first = result.files[0]
                    plot_scores(base / "plot.png", times=first.file.times[n_train:], scores=first.scores,
                                threshold=first.threshold, labels=first.file.anomaly[n_train:], prediction=first.prediction,
                                title=f"SKAB {first.file.key}: {family} seed {seed}")
            config_dict = asdict(config)
            config_dict.pop("seed")
            payload["families"][family] = {"config": config_dict, "per_seed": per_seed, **summarise(per_seed)}
            write_json(out / "metrics.json", {**payload, "wall_seconds": time.perf_counter() - started})
    finally:
        torch.set_num_threads(threads)
    payload["wall_seconds"] = time.perf_counter() - started
    write_json(out / "metrics.json", payload)
    log.info("skab_evaluated families=%s seeds=%d files=%d seconds=%.0f", ",".join(families), len(seeds), len(files),
             payload["wall_seconds"])
    return payload

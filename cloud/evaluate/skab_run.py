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

from cloud.evaluate.agent_path import agent_config
from cloud.evaluate.normal import normal_ratios, scale_for_far
from cloud.evaluate.report import plot_scores, summarise, write_json
from cloud.evaluate.skab import N_TRAIN, SKAB_DEFAULTS, SkabFile, all_anomaly_baseline, evaluate_run, write_predictions
from models.config import TrainConfig, config_from_mapping

log = logging.getLogger(__name__)

# Per-family departures from SKAB_DEFAULTS, chosen on anomaly-free data (docs/benchmarks.md):
# the VAE's KL term explodes on later normal rows, so it gets a small weight; the adversarial
# schedule has no meaningful validation loss to stop on, and 30 epochs bound its time.
FAMILY_DEFAULTS: dict[str, dict[str, object]] = {
    "vae": {"extra_score_weight": 0.1},
    "tadgan": {"epochs": 30, "early_stopping": 0},
}


def family_config(family: str, seed: int, overrides: Mapping[str, object], *, origin: str = "evaluate skab") -> TrainConfig:
    """SKAB defaults < family defaults < ``overrides`` (TOML file and flags), for one family and seed."""
    data: dict[str, object] = {**SKAB_DEFAULTS, **FAMILY_DEFAULTS.get(family, {}), **overrides, "family": family, "seed": seed}
    return config_from_mapping(data, origin=origin)


def run_skab(files: Sequence[SkabFile], families: Sequence[str], seeds: Sequence[int], out: Path, *,
             overrides: Mapping[str, object] | None = None, n_train: int = N_TRAIN, nab_window_s: float = 60.0,
             normal: Sequence[SkabFile] = (), far_targets: Sequence[float] = (0.1,), agent_toml: Path | str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the protocol, write predictions, plots and ``metrics.json``; returns the metrics
    payload. The main metrics are the agent's decisions (``agent_toml``, default: the agent's
    defaults); ``static_*`` are the per-file thresholds. With ``normal`` pieces of anomaly-free
    data, each family and seed also measures the agent's false-alarm rate on them
    (``normal_far_agent``) and finds the static threshold scale that gives each of ``far_targets``
    there (:mod:`cloud.evaluate.normal`): ``static_*`` then use the first, ``unscaled_*`` the
    per-file thresholds alone, and ``far<target>_*`` the others.
    Uses one torch thread (restored afterwards). Blocks for minutes."""
    import torch

    agent = agent_config(agent_toml)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "protocol": {"benchmark": "SKAB", "n_train": n_train, "nab_window_s": nab_window_s, "files": len(files),
                     "test_rows": int(sum(len(f.rows) - n_train for f in files)),
                     "point_score": "score of the window ending on the row (onnxruntime)",
                     "prediction": "the agent's decision on the window ending on the row (adaptive layer and debounce)",
                     "agent_config": str(agent_toml) if agent_toml else "the agent's defaults",
                     "adaptive": asdict(agent.adaptive), "decision": {"k": agent.decision.k, "n": agent.decision.n},
                     "predicted_changepoints": "rising edges of the binary prediction",
                     "averaging": "micro (counts summed over files)", "seeds": list(seeds),
                     "static_threshold": (f"per-file calibration x scale for a {far_targets[0]:.2%} false-alarm rate on "
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
                scales = {t: 1.0 for t in far_targets}
                if normal:
                    normal_run = normal_ratios(normal, config, agent, n_train=n_train, progress=progress)
                    scales = {t: scale_for_far(normal_run.ratios, t) for t in far_targets}
                result = evaluate_run(files, config, agent, n_train=n_train, nab_window_s=nab_window_s, progress=progress)
                scale = scales[far_targets[0]]
                row = result.metrics()
                row.update({f"static_{key}": value for key, value in result.metrics(scale).items() if key != "fit_seconds_per_file"})
                if normal:
                    row.update(threshold_scale=scale, normal_far_unscaled=float((normal_run.ratios > 1.0).mean()),
                               normal_far_agent=normal_run.agent_far)
                    extra = {"unscaled": 1.0, **{f"far{t:g}": scales[t] for t in far_targets[1:]}}
                    for prefix, k in extra.items():
                        m = result.metrics(k)
                        row.update({f"{prefix}_{key}": m[key] for key in ("f1", "far", "mar", "nab_standard")})
                per_seed.append(row)
                if i == 0:
                    write_predictions(result, base / "predictions")
                    first = result.files[0]
                    plot_scores(base / "plot.png", times=first.file.times[n_train:], scores=first.scores,
                                threshold=first.agent_thresholds, labels=first.file.anomaly[n_train:],
                                prediction=first.prediction(), title=f"SKAB {first.file.key}: {family} seed {seed}, agent's decisions")
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

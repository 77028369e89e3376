"""``edgewatch evaluate nab``: families x seeds over the NAB corpus, outputs and summary.

``OUT/metrics.json`` holds, per family, the full per-profile metrics of every seed (the agent's
decisions; ``every_window`` and ``static`` beside them) and the mean and sd of the standard-profile
scores per category; ``OUT/scores/[<family>/]<category>/<file>.csv`` are the first seed's agent
detections in NAB's results format (``anomaly_score``: the likelihood of each run-opening window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluate.agent_path import agent_config
from cloud.evaluate.nab import NAB_DEFAULTS, discover_nab, nab_metrics, score_files, write_scores
from cloud.evaluate.report import summarise, write_json
from edge.adaptive import likelihood
from models.config import config_from_mapping

log = logging.getLogger(__name__)


def run_nab(data_dir: Path | str, families: Sequence[str], seeds: Sequence[int], out: Path, *,
            overrides: Mapping[str, object] | None = None, holdoff: int = 64, agent_toml: Path | str | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run NAB's protocol for every family and seed; writes scores and ``metrics.json``. One torch
    thread. ``agent_toml``: the agent config whose decision path is scored (default: the agent's defaults)."""
    import torch

    files = discover_nab(data_dir)
    agent = agent_config(agent_toml)
    default = float(likelihood(agent.adaptive.surprise_limit)) if agent.adaptive.enabled else 0.5
    categories = sorted({f.category for f in files})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "protocol": {"benchmark": "NAB", "probation": "min(15 % of rows, 750)",
                     "decisions": "the agent's adaptive layer and debounce; a detection is a window opening an anomaly run, "
                                  "scored by its likelihood",
                     "agent_config": str(agent_toml) if agent_toml else "the agent's defaults", "adaptive": asdict(agent.adaptive),
                     "decision": {"k": agent.decision.k, "n": agent.decision.n},
                     "threshold": f"optimised per profile over the corpus (NAB), and the agent's default {default:.6g}",
                     "static": {"score": "s / (s + calibrated threshold)", "holdoff_rows": holdoff, "default_threshold": 0.5},
                     "seeds": list(seeds)},
        "files": len(files), "categories": categories, "families": {},
    }
    try:
        for family in families:
            per_seed: list[dict[str, Any]] = []
            summary_rows: list[dict[str, float]] = []
            config = None
            for i, seed in enumerate(seeds):
                config = config_from_mapping({**NAB_DEFAULTS, **(overrides or {}), "family": family, "seed": seed},
                                             origin="evaluate nab")
                runs = score_files(files, config, agent, holdoff=holdoff, progress=progress)
                metrics = nab_metrics(files, [r.openings for r in runs], default=default)
                metrics["every_window"] = nab_metrics(files, [r.every_window for r in runs], default=default)
                metrics["static"] = nab_metrics(files, [r.static for r in runs])
                per_seed.append(metrics)
                row = {f"{prefix}{g}_{kind}": m["standard"][g][kind]["score"]
                       for prefix, m in (("", metrics), ("every_window_", metrics["every_window"]), ("static_", metrics["static"]))
                       for g in [*categories, "corpus"] for kind in ("optimised", "calibrated")}
                row["fit_seconds_per_file"] = float(np.median([r.fit_seconds for r in runs]))  # median: the first fit pays imports
                summary_rows.append(row)
                if i == 0:
                    write_scores(files, [r.openings for r in runs], out / "scores" / (family if len(families) > 1 else ""))
            assert config is not None
            config_dict = asdict(config)
            config_dict.pop("seed")
            payload["families"][family] = {"config": config_dict, "per_seed": per_seed, **summarise(summary_rows)}
    finally:
        torch.set_num_threads(threads)
    payload["wall_seconds"] = time.perf_counter() - started
    write_json(out / "metrics.json", payload)
    log.info("nab_evaluated families=%s seeds=%d files=%d seconds=%.0f", ",".join(families), len(seeds), len(files),
             payload["wall_seconds"])
    return payload

"""``edgewatch evaluate nab``: families x seeds over the NAB corpus, outputs and summary.

``OUT/metrics.json`` holds, per family, the full per-profile metrics of every seed and the mean
and sd of the standard-profile scores per category; ``OUT/scores/[<family>/]<category>/<file>.csv``
are the first seed's scores in NAB's results format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluate.nab import NAB_DEFAULTS, discover_nab, nab_metrics, score_files, write_scores
from cloud.evaluate.report import summarise, write_json
from models.config import config_from_mapping

log = logging.getLogger(__name__)


def run_nab(data_dir: Path | str, families: Sequence[str], seeds: Sequence[int], out: Path, *,
            overrides: Mapping[str, object] | None = None, holdoff: int = 64, progress: bool = True) -> dict[str, Any]:
    """Run NAB's protocol for every family and seed; writes scores and ``metrics.json``. One torch thread."""
    import torch

    files = discover_nab(data_dir)
    categories = sorted({f.category for f in files})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "protocol": {"benchmark": "NAB", "probation": "min(15 % of rows, 750)", "score": "s / (s + calibrated threshold)",
                     "holdoff_rows": holdoff,
                     "threshold": "optimised per profile over the corpus (NAB), and calibrated 0.5", "seeds": list(seeds)},
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
                scores, seconds = score_files(files, config, holdoff=holdoff, progress=progress)
                metrics = nab_metrics(files, scores)
                per_seed.append(metrics)
                row = {f"{g}_{kind}": metrics["standard"][g][kind]["score"] for g in [*categories, "corpus"]
                       for kind in ("optimised", "calibrated")}
                row["fit_seconds_per_file"] = float(np.median(seconds))  # median: the first fit pays imports
                summary_rows.append(row)
                if i == 0:
                    write_scores(files, scores, out / "scores" / (family if len(families) > 1 else ""))
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

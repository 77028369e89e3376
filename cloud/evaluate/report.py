"""Aggregation over seeds, JSON output and plots (matplotlib, Agg backend) for evaluations."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summarise(per_seed: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{"mean": {...}, "sd": {...}}`` over seeds for every key (sample sd, 0 for one seed;
    NaN values are ignored, a key that is NaN for every seed stays NaN)."""
    keys = list(per_seed[0]) if per_seed else []
    mean: dict[str, float] = {}
    sd: dict[str, float] = {}
    for key in keys:
        values = np.array([m[key] for m in per_seed], dtype=np.float64)
        values = values[np.isfinite(values)]
        mean[key] = float(values.mean()) if len(values) else float("nan")
        sd[key] = float(values.std(ddof=1)) if len(values) > 1 else (0.0 if len(values) else float("nan"))
    return {"mean": mean, "sd": sd}


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN portably: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(dict(payload)), indent=2, sort_keys=False) + "\n", encoding="utf-8")


def plot_scores(path: Path, *, times: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray, labels: np.ndarray,
                prediction: np.ndarray, title: str) -> None:
    """Score (log scale) over time with the threshold (one value, or one per row as the adaptive
    layer moves it), the true anomaly span shaded and the prediction below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    x = np.arange(len(scores)) if times is None else times.astype("datetime64[s]").astype(object)
    top.plot(x, np.maximum(scores, 1e-6), lw=0.9, label="score (onnxruntime)")
    if np.ndim(threshold) == 0:
        top.axhline(float(threshold), color="tab:red", ls="--", lw=1, label=f"threshold {float(threshold):.3g}")
    else:
        top.plot(x, threshold, color="tab:red", ls="--", lw=1, label="threshold (per row)")
    top.fill_between(x, 0, 1, where=np.asarray(labels) > 0, color="tab:orange", alpha=0.2,
                     transform=top.get_xaxis_transform(), label="labelled anomaly")
    top.set_yscale("log")
    top.set_ylabel("score")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title)
    bottom.step(x, labels, where="post", label="label", color="tab:orange")
    bottom.step(x, np.asarray(prediction) * 0.9, where="post", label="prediction", color="tab:blue")
    bottom.set_yticks([0, 1])
    bottom.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_pm(mean: float, sd: float, *, percent: bool = False, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "n/a"
    scale = 100.0 if percent else 1.0
    d = 1 if percent else digits
    return f"{mean * scale:.{d}f} ± {sd * scale:.{d}f}"

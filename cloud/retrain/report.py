"""The retraining report: ``report.json`` (data counts, training, both models' measures, the gates,
the decision) and ``report.png`` (production vs candidate score distributions with thresholds),
through matplotlib's Agg backend. Written into the run folder and copied into the registry
version folder when the candidate is registered."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud.retrain.evaluate import ModelScores

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def write_report(out_dir: Path, report: Mapping[str, Any], production: ModelScores, candidate: ModelScores,
                 labels: Mapping[str, str]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.png`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    png_path = out_dir / "report.png"
    plot_scores(png_path, production, candidate, labels, title=f"{report.get('model', '')}: {report.get('decision', '')}")
    return json_path, png_path


def plot_scores(path: Path, production: ModelScores, candidate: ModelScores, labels: Mapping[str, str], *, title: str) -> None:
    """Three panels: each model's scores (holdout, true- and false-positive incident windows) with its
    threshold, and both models' holdout scores relative to their own threshold (1 = alarm line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, scores, name in ((axes[0], production, "production"), (axes[1], candidate, "candidate")):
        groups = [("holdout", scores.holdout, "tab:blue")]
        for label, colour in (("true_positive", "tab:red"), ("false_positive", "tab:orange")):
            chosen = [s for k, s in scores.incidents.items() if labels.get(k) == label]
            if chosen:
                groups.append((label.replace("_", "-") + " incidents", np.concatenate(chosen), colour))
        finite = np.concatenate([g[1][np.isfinite(g[1])] for g in groups] + [np.array([scores.threshold])])
        bins = _bins(finite, ax)
        for label, values, colour in groups:
            values = values[np.isfinite(values)]
            if len(values):
                ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.55, color=colour, label=f"{label} ({len(values)})")
        ax.axvline(scores.threshold, color="black", linestyle="--", label=f"threshold {scores.threshold:.3g}")
        ax.set(title=f"{name} {scores.version}", xlabel="score", ylabel="windows", yscale="log")
        ax.legend(fontsize=8)
    ax = axes[2]
    ratio_bins = _bins(np.concatenate([_ratio(production), _ratio(candidate), [1.0]]), ax)
    for scores, name, colour in ((production, "production", "tab:gray"), (candidate, "candidate", "tab:green")):
        ratio = _ratio(scores)
        if len(ratio):
            ax.hist(ratio, bins=ratio_bins, histtype="stepfilled", alpha=0.55, color=colour, label=f"{name} {scores.version}")
    ax.axvline(1.0, color="black", linestyle="--", label="threshold")
    ax.set(title="holdout: score / own threshold", xlabel="score / threshold", ylabel="windows", yscale="log")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ratio(scores: ModelScores) -> np.ndarray:
    ratio = scores.holdout / scores.threshold if scores.threshold > 0 else scores.holdout
    return ratio[np.isfinite(ratio)]


def _bins(values: np.ndarray, ax: Axes) -> np.ndarray:
    """60 bins over ``values``; logarithmic (and a log x axis) when they are positive and span over two decades."""
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi / lo > 100:
        ax.set_xscale("log")
        return np.geomspace(lo, hi * 1.0001, 60)
    return np.linspace(lo, hi + 1e-9, 60)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)

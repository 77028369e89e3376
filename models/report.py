"""The training report: ``report.json`` (config, history with the validation monitor's name and any
pretraining curves, calibration, figures) and
``report.png`` (loss curves; training-score distribution with the threshold), via matplotlib's
Agg backend. Written beside the artifact in ``training/``, never part of what the edge loads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from models.fit import FittedModel


def write_report(fitted: FittedModel, out_dir: Path | str, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.json`` and ``report.png`` into ``out_dir``; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h = fitted.history
    report = {
        "config": asdict(fitted.config), "channels": [asdict(c) for c in fitted.channels],
        "threshold": fitted.threshold, "calibration": {"method": fitted.calibration.method, "params": dict(fitted.calibration.params)},
        "history": {"train_loss": h.train_loss, "val_loss": h.val_loss, "monitor": h.monitor, "lr": h.lr,
                    "best_epoch": h.best_epoch, "stopped_early": h.stopped_early, "seconds": h.seconds,
                    "pretrain_loss": h.pretrain_loss},
        "training_data_fingerprint": fitted.fingerprint, "n_train_windows": len(fitted.train_scores),
        **dict(extra or {}),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(h.train_loss) + 1)
    ax_loss.plot(epochs, h.train_loss, label="train")
    if h.val_loss:
        ax_loss.plot(epochs, h.val_loss, label="validation" if h.monitor == "loss" else f"validation {h.monitor}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{fitted.config.family}: loss", yscale="log")
    ax_loss.legend()
    scores = fitted.train_scores
    ax_score.hist(scores, bins=100, color="tab:blue", alpha=0.8)
    ax_score.axvline(fitted.threshold, color="tab:red", label=f"threshold {fitted.threshold:.3g} ({fitted.calibration.method})")
    ax_score.set(xlabel="score", ylabel="windows", title="training scores", yscale="log")
    ax_score.legend()
    fig.tight_layout()
    png = out / "report.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png

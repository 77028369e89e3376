"""The backtest's outputs: a terminal table, ``backtest.json`` and ``alerts_per_day.png``.

One or two replays of the same archive range: the model asked for, and production beside it.
The plot needs matplotlib (the cloud install has it; without it the plot is skipped and said so).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloud.backtest.result import BacktestResult, Summary

_HEAD = ("group", "version", "devices", "device-days", "alerts", "alerts/device-day p05 p50 p95", "incidents",
         "window rate p50", "TP caught", "FP raised", "skipped")


def table(results: Sequence[BacktestResult]) -> str:
    """Per group, then overall, each replay side by side (one row per version)."""
    groups = sorted({g for r in results for g in r.groups()})
    rows: list[tuple[str, ...]] = []
    for name in [*groups, "overall"]:
        for r in results:
            s = r.overall() if name == "overall" else r.groups().get(name)
            if s is not None:
                rows.append(_row(name, r.version, s))
    widths = [max(len(x) for x in col) for col in zip(_HEAD, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (_HEAD, *rows)]
    period = f"{_day(results[0].since)} .. {_day(results[0].until)}" if results else ""
    return "\n".join([f"backtest {results[0].model} {period}" if results else "backtest", *lines])


def _row(group: str, version: str, s: Summary) -> tuple[str, ...]:
    q = s.alerts_per_device_day
    return (group, version, str(s.devices), f"{s.device_days:.1f}", str(s.alerts), f"{q['p05']:.3g} {q['p50']:.3g} {q['p95']:.3g}",
            str(s.incidents), f"{s.window_rate['p50']:.4f}", f"{s.caught}/{s.true_positive}" if s.true_positive else "-",
            f"{s.raised}/{s.false_positive}" if s.false_positive else "-", str(s.skipped))


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="minutes")


def write_json(path: Path, results: Sequence[BacktestResult], extra: dict[str, Any] | None = None) -> Path:
    doc = {"replays": [r.to_dict() for r in results], **(extra or {})}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def write_plot(path: Path, results: Sequence[BacktestResult]) -> Path | None:
    """Alerts per day per group, one line per group and version; None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    styles = ("-", "--", ":")  # per version; a group keeps its colour across versions
    groups = sorted({g for r in results for g in r.daily_by_group()})
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(results):
        for group, days in sorted(r.daily_by_group().items()):
            xs = sorted(days)
            ax.plot(np.array(xs, dtype="datetime64[D]"), [days[x] for x in xs], styles[i % len(styles)], marker=".",
                    color=colours(groups.index(group) % 10), label=f"{group} {r.version}")
    ax.set_ylabel("alerts per day")
    ax.set_title(f"backtest {results[0].model}: alerts per day per group" if results else "backtest")
    ax.legend(fontsize="small", ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

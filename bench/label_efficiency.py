"""Label efficiency of the ``ladder`` family on a simulated fleet (issue 18 item 5).

A fleet of synthetic pumps (:mod:`edge.synth`) gives the unlabelled archive (a few unlabelled
faults included, as in a real archive). A pool of labelled incidents comes from other pumps:
a true-positive incident is the windows inside one injected fault (label 1), a false-positive
one the windows of a fault-free stretch of the same length (label 0), two true for one false.
``ladder`` is trained on the archive plus the first 0, 10, 50 and 200 incidents of the pool;
the unsupervised families (``--baselines``) on the archive alone. Each is scored on fresh pumps
with faults: recall of fault windows at the threshold that gives ``--far`` false alarms on their
fault-free windows. Every figure is the mean over ``--repeats`` (fleet, pool and training seed
change together). Prints the table and writes a PNG plot.

    .venv/bin/python -m bench.label_efficiency [--repeats 2] [--out docs/label_efficiency.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edge.synth import random_faults, simulate
from models.config import TrainConfig
from models.data import make_windows

WINDOW, STRIDE = 32, 8
LABELS = (0, 10, 50, 200)


def _faulty(n_steps: int, seed: int, count: int, magnitude: float) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    faults = [replace(f, magnitude=f.magnitude * magnitude) for f in random_faults(n_steps, seed=seed, count=count)]
    rows, inside = simulate(n_steps, seed=seed, faults=faults)
    return rows, inside, [(f.start, f.start + f.duration) for f in faults]


def archive(seed: int, devices: int = 6, steps: int = 3_000) -> list[np.ndarray]:
    """Unlabelled rows per device: mostly normal, three faults each nobody labelled."""
    return [_faulty(steps, 1_000 * seed + d, 3, 0.5)[0] for d in range(devices)]


def incident_pool(seed: int, size: int = 200, magnitude: float = 0.5) -> list[tuple[np.ndarray, int]]:
    """``size`` labelled incidents (windows, label) in a seeded random order, two true for one false."""
    pool: list[tuple[np.ndarray, int]] = []
    device = 0
    while sum(label for _, label in pool) < (2 * size) // 3 + 1:
        rows, _, spans = _faulty(4_000, 50_000 + 1_000 * seed + device, 10, magnitude)
        device += 1
        for start, end in spans:
            if end - start >= WINDOW:
                pool.append((make_windows(rows[start:end], WINDOW, STRIDE), 1))
            if len(pool) % 3 == 2 and start - 150 - (end - start) >= 0:  # a fault-free stretch before the fault
                pool.append((make_windows(rows[start - 150 - (end - start):start - 150], WINDOW, STRIDE), 0))
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order][:size]


def test_set(seed: int, devices: int = 4, magnitude: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Windows of fresh pumps and whether each lies wholly inside a fault (1), wholly outside (0);
    windows that straddle a fault's edge are left out."""
    xs, ys = [], []
    for d in range(devices):
        rows, inside, _ = _faulty(4_000, 90_000 + 1_000 * seed + d, 10, magnitude)
        windows = make_windows(rows, WINDOW, STRIDE)
        flags = make_windows(inside[:, None].astype(np.float32), WINDOW, STRIDE)
        full, none = flags.min(axis=(1, 2)) > 0, flags.max(axis=(1, 2)) == 0
        xs.append(windows[full | none])
        ys.append(full[full | none].astype(int))
    return np.concatenate(xs), np.concatenate(ys)


def recall_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> float:
    threshold = np.quantile(scores[labels == 0], 1.0 - far)
    return float(np.mean(scores[labels == 1] > threshold))


def run(repeats: int, far: float, baselines: Sequence[str], epochs: int,
        weights: Sequence[float] = (1.0,)) -> dict[str, list[list[float]]]:
    """``{"ladder w=W": [[recall per label count] per repeat], family: [[recall] per repeat]}``; each
    ladder is scored with every ``extra_score_weight`` W in ``weights`` (the classifier's weight in
    the score: it changes no training, so one fit serves them all)."""
    from models.fit import fit
    from models.train import LabelledWindows

    base = TrainConfig(window_length=WINDOW, stride=STRIDE, epochs=epochs)
    out: dict[str, list[list[float]]] = {f"ladder w={w:g}": [] for w in weights}
    for seed in range(repeats):
        rows, pool = archive(seed), incident_pool(seed)
        x_test, y_test = test_set(seed)
        curves: dict[str, list[float]] = {f"ladder w={w:g}": [] for w in weights}
        for n in LABELS:
            chosen = pool[:n]
            labelled = (LabelledWindows(np.concatenate([w for w, _ in chosen]),
                                        np.concatenate([np.full(len(w), lab) for w, lab in chosen])) if chosen else None)
            fitted = fit(rows, base.with_(family="ladder", seed=seed, lr=3e-3), labelled=labelled)
            for w in weights:
                fitted.detector.extra_weight = w
                curves[f"ladder w={w:g}"].append(recall_at_far(fitted.score(x_test)[0], y_test, far))
            print(f"  seed {seed} ladder {n:>3} incidents ({0 if labelled is None else int(labelled.labels.sum())} anomalous "
                  f"windows): recall {', '.join(f'{k} {v[-1]:.3f}' for k, v in curves.items())}", file=sys.stderr, flush=True)
        for key, curve in curves.items():
            out[key].append(curve)
        for family in baselines:
            fitted = fit(rows, base.with_(family=family, seed=seed))
            out.setdefault(family, []).append([recall_at_far(fitted.score(x_test)[0], y_test, far)])
            print(f"  seed {seed} {family}: recall {out[family][-1][0]:.3f}", file=sys.stderr, flush=True)
    return out


def table(results: dict[str, list[list[float]]], far: float) -> str:
    ladders = [k for k in results if k.startswith("ladder")]
    best = max((f for f in results if f not in ladders), key=lambda f: float(np.mean(results[f])), default=None)
    lines = ["| labelled incidents | " + " | ".join(f"{k} recall at FAR {far:.0%}" for k in ladders)
             + f" | best unsupervised ({best}) |", "|---" * (len(ladders) + 2) + "|"]
    for i, n in enumerate(LABELS):
        base = f"{np.mean(results[best]):.3f} ± {np.std(results[best]):.3f}" if best else "-"
        cells = [f"{np.asarray(results[k])[:, i].mean():.3f} ± {np.asarray(results[k])[:, i].std():.3f}" for k in ladders]
        lines.append(f"| {n} | {' | '.join(cells)} | {base} |")
    others = ", ".join(f"{f} {np.mean(v):.3f}" for f, v in results.items() if f not in ladders)
    return "\n".join(lines) + f"\n\nunsupervised families: {others}"


def plot(results: dict[str, list[list[float]]], far: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, values in results.items():
        if key.startswith("ladder"):
            ladder = np.asarray(values)
            ax.errorbar(LABELS, ladder.mean(axis=0), yerr=ladder.std(axis=0), marker="o", capsize=3, label=key)
    baselines = [f for f in results if not f.startswith("ladder")]
    for i, family in enumerate(baselines):
        ax.axhline(float(np.mean(results[family])), linestyle="--", linewidth=1, color=f"C{i + 2}", label=f"{family} (no labels)")
    ax.set_xscale("symlog", linthresh=10, linscale=0.5)
    ax.set_xlim(-1, 260)
    ax.set_xticks(LABELS, [str(n) for n in LABELS])
    ax.set_xlabel("labelled incidents")
    ax.set_ylabel(f"recall at {far:.0%} false alarms")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=2, help="fleets (each its own seeds)")
    p.add_argument("--far", type=float, default=0.01, help="false-alarm rate on fault-free test windows")
    p.add_argument("--baselines", default="dense_ae,conv_ae,rbm", help="unsupervised families to compare with")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--weights", default="1,10", help="ladder extra_score_weight values to score with (comma-separated)")
    p.add_argument("--out", default="label_efficiency.png", help="PNG plot")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    results = run(args.repeats, args.far, [f for f in args.baselines.split(",") if f], args.epochs,
                  [float(w) for w in args.weights.split(",")])
    print(table(results, args.far))
    print(f"\n{args.repeats} repeats, {time.perf_counter() - started:.0f} s")
    plot(results, args.far, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

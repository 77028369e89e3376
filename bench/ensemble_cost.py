"""What an ensemble (``train.members``) costs the agent against one model of the same family, side
by side in one run: onnxruntime windows/s at batch 1 and 64 (``score`` against ``score_members``),
and the adaptive layer's CPU per window (:class:`edge.adaptive.AdaptiveLayer` on one model's
scores against :class:`edge.adaptive.EnsembleLayer` on the members'; without the seasonal channel,
and with it on a 5-minute stream with a daily pattern), with its state row size.
Interleaved rounds, medians; the figures are ratios, not absolute rates.

Models are trained for a few epochs on synthetic pump data (edge.synth) inside the script.

    .venv/bin/python -m bench.ensemble_cost [--family tadgan] [--members 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.inference import rate


def layer_seconds_per_window(layer: object, scores: np.ndarray, ends: np.ndarray, batch: int,
                             values: np.ndarray | None = None) -> float:
    """CPU seconds per window of ``layer.decide_many`` fed ``batch`` windows a call, one device
    (``values``: each window's last row, for the seasonal channel)."""
    started = time.process_time()
    for i in range(0, len(scores), batch):
        layer.decide_many("dev", scores[i:i + batch], ends[i:i + batch],  # type: ignore[attr-defined]
                          None if values is None else values[i:i + batch])
    return (time.process_time() - started) / len(scores)


def daily_stream(n: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """End times every 5 minutes and rows with a daily sine: the seasonal channel turns on."""
    rng = np.random.default_rng(5)
    rows = 20.0 + rng.normal(0.0, 0.3, (n, channels)) + 5.0 * np.sin(2 * np.pi * np.arange(n) / 288)[:, None]
    return 300.0 * np.arange(n, dtype=np.float64), rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="tadgan", help="model family (default: tadgan)")
    parser.add_argument("--members", type=int, default=3, help="members of the ensemble (odd, >= 3; default: 3)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default: 5)")
    parser.add_argument("--seconds", type=float, default=0.25, help="seconds per rate measurement (default: 0.25)")
    args = parser.parse_args(argv)

    import torch

    from edge.adaptive import AdaptiveSettings, layer_for
    from edge.detector import OnnxDetector
    from edge.synth import CHANNEL_NAMES, random_faults, simulate
    from models.config import TrainConfig
    from models.data import make_windows
    from models.export import write_artifact
    from models.fit import fit

    torch.set_num_threads(1)
    rows, _ = simulate(4000, seed=11)
    base = TrainConfig(family=args.family, window_length=32, stride=8, train_stride=4, epochs=5, seed=0)
    faulty, _ = simulate(24_000, seed=12, faults=random_faults(24_000, seed=13, count=6))
    windows = make_windows(faulty, 32, 8)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        detectors = {}
        for name, cfg in (("single", base), ("ensemble", base.with_(members=args.members))):
            write_artifact(fit(rows, cfg, channels=list(CHANNEL_NAMES)), Path(tmp) / name, name=f"bench-{name}",
                           created_at="2026-01-01T00:00:00Z")
            detectors[name] = OnnxDetector.load(Path(tmp) / name, threads=1)
        single, ensemble = detectors["single"], detectors["ensemble"]
        for batch_size in (1, 64):
            batch = windows[:batch_size]
            one, many = [], []
            for _ in range(args.rounds):
                one.append(rate(single.score, batch, args.seconds))
                many.append(rate(ensemble.score_members, batch, args.seconds))
            out[f"single_windows_per_s_b{batch_size}"] = statistics.median(one)
            out[f"ensemble_windows_per_s_b{batch_size}"] = statistics.median(many)
            out[f"rate_ratio_b{batch_size}"] = statistics.median(many) / statistics.median(one)
        settings = AdaptiveSettings(seasonal=False)
        single_scores = single.score(windows)[0].astype(np.float64)
        member_scores = ensemble.score_members(windows)[2].astype(np.float64)
        ends = 8.0 * np.arange(len(windows), dtype=np.float64)
        daily_ends, daily_rows = daily_stream(len(windows), len(CHANNEL_NAMES))
        # without the daily-profile channel, and with it (the agent's default, on where it can help)
        runs: list[tuple[str, AdaptiveSettings, np.ndarray, np.ndarray | None]] = [
            ("", settings, ends, None), ("_seasonal", AdaptiveSettings(), daily_ends, daily_rows)]
        for suffix, layer_settings, layer_ends, last_rows in runs:
            one, many = [], []
            for _ in range(args.rounds):
                one.append(layer_seconds_per_window(layer_for(layer_settings, single.manifest), single_scores, layer_ends, 64, last_rows))
                many.append(layer_seconds_per_window(layer_for(layer_settings, ensemble.manifest), member_scores, layer_ends, 64,
                                                     last_rows))
            out[f"single_layer_us_per_window{suffix}"] = 1e6 * statistics.median(one)
            out[f"ensemble_layer_us_per_window{suffix}"] = 1e6 * statistics.median(many)
            out[f"layer_cpu_ratio{suffix}"] = statistics.median(many) / statistics.median(one)
        rows_single = layer_for(settings, single.manifest)
        rows_single.decide_many("dev", single_scores, ends)
        rows_ens = layer_for(settings, ensemble.manifest)
        rows_ens.decide_many("dev", member_scores, ends)
        out["single_row_bytes"] = len(json.dumps(rows_single.take_changes()[0]["dev"]))
        out["ensemble_row_bytes"] = len(json.dumps(rows_ens.take_changes()[0]["dev"]))
    print(f"{args.family}, {args.members} members against one model ({len(windows)} windows, {args.rounds} rounds, medians)")
    for key, value in out.items():
        print(f"  {key:34s} {value:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

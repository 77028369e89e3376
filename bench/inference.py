"""Inference speed of every model family on one thread: onnxruntime vs torch eager at batch 1 and
64 (ratio taken in the same run, interleaved rounds, medians), and INT8 dynamic quantization vs
fp32 (speed ratio at batch 64, largest score difference in absolute terms and as a share of the
threshold, decisions flipped at the threshold, over 4,000 windows of a faulty synthetic run).

Models are trained for a few epochs on synthetic pump data (edge.synth) inside the script; the
figures are speeds and agreement, not detection quality. Absolute rates depend on the machine
and on whatever else runs on it: compare the ratios.

    .venv/bin/python -m bench.inference [--families all] [--rounds 7] [--seconds 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def rate(fn: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Windows per second of ``fn(batch)`` called repeatedly for about ``seconds``."""
    fn(batch)  # warm-up
    calls, started = 0, time.perf_counter()
    while True:
        fn(batch)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls * len(batch) / elapsed


def measure(family: str, *, window: int, rounds: int, seconds: float, epochs: int) -> dict[str, float]:
    import torch

    from edge.detector import OnnxDetector
    from edge.synth import CHANNEL_NAMES, random_faults, simulate
    from models.config import TrainConfig
    from models.data import make_windows
    from models.export import write_artifact
    from models.fit import fit
    from models.quantize import quantize_artifact

    rows, _ = simulate(4000, seed=11)
    config = TrainConfig(family=family, window_length=window, stride=8, train_stride=4, hidden=64, latent=8,
                         epochs=epochs, batch_size=64, seed=0)
    started = time.perf_counter()
    fitted = fit(rows, config, channels=list(CHANNEL_NAMES))
    train_s = time.perf_counter() - started
    faulty, _ = simulate(6000, seed=12, faults=random_faults(6000, seed=13, count=6))
    eval_windows = make_windows(faulty, window, 1)[:4000]
    out: dict[str, float] = {"train_s": train_s}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir = Path(tmp) / "fp32"
        write_artifact(fitted, fp32_dir, name=f"bench-{family}", version="1.0.0", created_at="2026-01-01T00:00:00Z")
        ort_detector = OnnxDetector.load(fp32_dir, threads=1)
        for batch_size in (1, 64):
            batch = eval_windows[:batch_size]
            ort_rates, torch_rates = [], []
            with torch.inference_mode():
                for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
                    ort_rates.append(rate(ort_detector.score, batch, seconds))
                    torch_rates.append(rate(fitted.score, batch, seconds))
            out[f"ort_b{batch_size}"] = statistics.median(ort_rates)
            out[f"torch_b{batch_size}"] = statistics.median(torch_rates)
            out[f"ratio_b{batch_size}"] = out[f"ort_b{batch_size}"] / out[f"torch_b{batch_size}"]
        report = quantize_artifact(fp32_dir, Path(tmp) / "int8", eval_windows, rounds=rounds, batch=64)
    out.update(int8_speedup=report["speedup"], int8_max_abs_diff=report["max_abs_diff"],
               int8_max_rel_diff=report["max_rel_diff"], int8_flips=report["decisions_changed"],
               int8_windows=report["windows"], threshold=fitted.threshold,
               int8_size_ratio=report["int8_size_bytes"] / report["fp32_size_bytes"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="all", help="'all' or a comma-separated list")
    parser.add_argument("--window", type=int, default=32, help="window length (samples); 6 synthetic channels")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median reported)")
    parser.add_argument("--seconds", type=float, default=0.25, help="seconds per timing round")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (speed does not depend on them)")
    args = parser.parse_args(argv)

    import torch

    from models.registry import family_names

    torch.set_num_threads(1)
    families = list(family_names()) if args.families == "all" else [f.strip() for f in args.families.split(",")]
    print(f"one thread, window {args.window} x 6 channels, {args.rounds} interleaved rounds of {args.seconds} s, medians; "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    header = (f"{'family':<14} {'ort b1 w/s':>11} {'torch b1':>9} {'ratio':>6} {'ort b64 w/s':>12} {'torch b64':>10} {'ratio':>6}"
              f" | {'int8/fp32 b64':>13} {'max|diff|':>10} {'/thresh':>8} {'flips':>9}")
    print(header)
    print("-" * len(header))
    for family in families:
        r = measure(family, window=args.window, rounds=args.rounds, seconds=args.seconds, epochs=args.epochs)
        print(f"{family:<14} {r['ort_b1']:>11,.0f} {r['torch_b1']:>9,.0f} {r['ratio_b1']:>5.1f}x {r['ort_b64']:>12,.0f} "
              f"{r['torch_b64']:>10,.0f} {r['ratio_b64']:>5.1f}x | {r['int8_speedup']:>12.2f}x {r['int8_max_abs_diff']:>10.3g} "
              f"{r['int8_max_abs_diff'] / r['threshold']:>8.2%} {int(r['int8_flips']):>4}/{int(r['int8_windows'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

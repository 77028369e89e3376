"""Score a fixed set of windows with one model and time it; run natively and under qemu-aarch64.

Usage: python score_windows.py MODEL_DIR WINDOWS.npy OUT.npz [--batch 64] [--repeat 3]

Writes ``score`` and ``channel_scores`` for every window (the first pass) and prints one JSON
line: windows scored, best windows per second over the repeats, and this process's peak RSS.
Only numpy, onnxruntime and ``edge`` are imported, so it runs with only the ``edge`` extra.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import onnxruntime as ort

from edge.detector import OnnxDetector


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("windows")
    p.add_argument("out")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    windows = np.load(args.windows)
    detector = OnnxDetector.load(args.model_dir, threads=1)
    detector.warm_up()
    scores, channel_scores = [], []
    best = float("inf")
    for rep in range(args.repeat):
        started = time.perf_counter()
        for i in range(0, len(windows), args.batch):
            s, c = detector.score(windows[i: i + args.batch])
            if rep == 0:
                scores.append(s)
                channel_scores.append(c)
        best = min(best, time.perf_counter() - started)
    np.savez(args.out, score=np.concatenate(scores), channel_scores=np.concatenate(channel_scores))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"machine": platform.machine(), "onnxruntime": ort.__version__, "numpy": np.__version__,
                      "windows": int(len(windows)), "batch": args.batch, "windows_per_s": len(windows) / best,
                      "peak_rss_mib": peak_kib / 1024}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

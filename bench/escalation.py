"""Escalation of borderline windows (issue 16 item 5): how much the cloud verdict cuts false alerts.

A small edge model (``dense_ae``, 16 units) and a heavier cloud model (an ensemble of a wide
``conv_ae`` and a two-layer ``dense_ae``, :class:`cloud.processor.cloudscore.CloudScorer`, run by
onnxruntime) are trained with the existing training code on fault-free pumps (:mod:`edge.synth`).
The cloud's ``confirm_ratio`` is the 99th percentile of its mean normalised score on other
fault-free pumps: chosen on normal data, never on the faults scored.

A fleet of pumps with borderline faults (:func:`edge.synth.random_faults`, magnitudes scaled by
``--magnitude``) is scored by the edge model on the agent's windows. Escalated: the windows with
score / threshold within ``[band_low, band_high]``. A window is a fault window when any of its
readings lies inside a fault. Among escalated windows:

- edge alone alerts on score > threshold;
- with the cloud, an edge alert stands only when the cloud confirms it (a dismissed one does not alert);
- equal recall: the edge alone with its threshold raised until its recall falls to the gated recall.

Bandwidth: escalations per device and hour, and their bytes (the contract's encoding), before the
agent's cap, and what ``--cap`` windows per device-hour keeps (the agent's token bucket).

    .venv/bin/python -m bench.escalation [--devices 20] [--hours 3] [--magnitude 0.35]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cloud.processor.cloudscore import CloudScorer
from edge.contract.escalation import Escalation, encode_escalation
from edge.detector import OnnxDetector
from edge.synth import CHANNEL_NAMES, random_faults, simulate
from models.config import TrainConfig
from models.data import make_windows

WINDOW, STRIDE = 32, 8
SHA = "0" * 64


def normal_rows(seed: int, devices: int, steps: int) -> list[np.ndarray]:
    return [simulate(steps, seed=seed + d)[0] for d in range(devices)]


def train(out: Path, seed: int, epochs: int) -> tuple[OnnxDetector, CloudScorer]:
    """The edge model and the cloud ensemble, trained on fault-free pumps and exported to ONNX under ``out``."""
    from models.export import write_artifact
    from models.fit import fit

    rows = normal_rows(10_000 + 100 * seed, 8, 4_000)
    base = TrainConfig(window_length=WINDOW, stride=STRIDE, epochs=epochs, seed=seed)
    specs = {"edge": base.with_(family="dense_ae", hidden=16, latent=4),
             "cloud-conv": base.with_(family="conv_ae", hidden=64, latent=16, epochs=2 * epochs),
             "cloud-dense": base.with_(family="dense_ae", hidden=128, latent=16, layers=2, epochs=2 * epochs)}
    detectors = {}
    for name, cfg in specs.items():
        started = time.perf_counter()
        write_artifact(fit(rows, cfg), out / name, name=name)
        detectors[name] = OnnxDetector.load(out / name)
        print(f"  trained {name} ({cfg.family}, hidden {cfg.hidden}) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    return detectors["edge"], CloudScorer.of([detectors["cloud-conv"], detectors["cloud-dense"]])


def fleet(seed: int, devices: int, steps: int, magnitude: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(windows, fault flag per window) per device, faults scaled by ``magnitude``."""
    out = []
    for d in range(devices):
        s = 50_000 + 1_000 * seed + d
        faults = [replace(f, magnitude=f.magnitude * magnitude) for f in random_faults(steps, seed=s, count=steps // 1_500)]
        rows, inside = simulate(steps, seed=s, faults=faults)
        flags = make_windows(inside[:, None].astype(np.float32), WINDOW, STRIDE).max(axis=(1, 2)) > 0
        out.append((make_windows(rows, WINDOW, STRIDE), flags))
    return out


def escalation_bytes(window: np.ndarray, score: float, threshold: float) -> int:
    e = Escalation(device_id="pump-0001", agent_id="gw-01", model_name="edge", model_version="1.0.0", model_sha256=SHA,
                   window_start=1.7e9, window_end=1.7e9 + WINDOW - 1, channels=CHANNEL_NAMES,
                   ts=tuple(1.7e9 + i for i in range(WINDOW)), values=tuple(tuple(map(float, r)) for r in window),
                   score=score, threshold=threshold)
    return len(encode_escalation(e)) + len(b"pump-0001")


def capped(times_s: np.ndarray, per_hour: float, burst: int) -> int:
    """How many of the escalations at ``times_s`` the agent's token bucket lets through."""
    tokens, at, kept, rate = float(burst), 0.0, 0, per_hour / 3600.0
    for t in times_s.tolist():
        tokens = min(float(burst), tokens + (t - at) * rate)
        at = t
        if tokens >= 1.0:
            tokens -= 1.0
            kept += 1
    return kept


def measure(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        edge, cloud = train(Path(tmp), args.seed, args.epochs)
        valid = np.concatenate([make_windows(r, WINDOW, STRIDE) for r in normal_rows(20_000 + 100 * args.seed, 6, 4_000)])
        cloud.confirm_ratio = float(np.quantile(cloud.ratios(valid), args.normal_quantile))
        steps = int(args.hours * 3600)
        esc_edge, esc_cloud, esc_fault, per_device, per_device_bytes, kept = [], [], [], [], [], 0
        for windows, flags in fleet(args.seed, args.devices, steps, args.magnitude):
            ratio = np.asarray(edge.score(windows)[0], dtype=np.float64) / edge.manifest.threshold
            band = (ratio >= args.band_low) & (ratio <= args.band_high)
            esc_edge.append(ratio[band])
            esc_cloud.append(cloud.ratios(windows[band]))
            esc_fault.append(flags[band])
            idx = np.flatnonzero(band)
            per_device.append(len(idx) / args.hours)
            per_device_bytes.append(sum(escalation_bytes(windows[i], ratio[i], 1.0) for i in idx) / args.hours)
            kept += capped((idx * STRIDE + WINDOW - 1).astype(np.float64), args.cap, args.burst)
    e, c, fault = np.concatenate(esc_edge), np.concatenate(esc_cloud), np.concatenate(esc_fault)
    edge_alert = e > 1.0
    gated = edge_alert & (c >= cloud.confirm_ratio)
    positives = max(int(fault.sum()), 1)
    recall_gated = float((gated & fault).sum() / positives)
    # the edge alone at equal recall: its threshold raised within the band until its recall is the gated one
    fp_equal = int((edge_alert & ~fault).sum())
    for t in np.sort(np.unique(e[edge_alert])):
        if float(((e >= t) & fault).sum() / positives) < recall_gated:
            break
        fp_equal = int(((e >= t) & ~fault).sum())
    return {
        "escalated": float(len(e)), "fault_windows": float(fault.sum()), "confirm_ratio": cloud.confirm_ratio,
        "edge_fp": float((edge_alert & ~fault).sum()), "edge_recall": float((edge_alert & fault).sum() / positives),
        "gated_fp": float((gated & ~fault).sum()), "gated_recall": recall_gated, "edge_fp_equal_recall": float(fp_equal),
        "windows_per_device_hour": float(np.mean(per_device)), "windows_per_device_hour_max": float(np.max(per_device)),
        "bytes_per_device_hour": float(np.mean(per_device_bytes)), "bytes_per_device_hour_max": float(np.max(per_device_bytes)),
        "kept_share_under_cap": kept / max(len(e), 1),
    }


def report(r: dict[str, float], args: argparse.Namespace) -> str:
    cut = 1.0 - r["gated_fp"] / r["edge_fp_equal_recall"] if r["edge_fp_equal_recall"] else float("nan")
    raw = 1.0 - r["gated_fp"] / r["edge_fp"] if r["edge_fp"] else float("nan")
    return "\n".join([
        f"{args.devices} devices x {args.hours:g} h, faults x{args.magnitude:g}; band {args.band_low:g}-{args.band_high:g}; "
        f"cloud confirm_ratio {r['confirm_ratio']:.3f} (p{100 * args.normal_quantile:g} on normal windows)",
        f"escalated windows: {r['escalated']:.0f}, of which fault windows {r['fault_windows']:.0f}",
        "| among escalated windows | false alerts | recall |",
        "|---|---|---|",
        f"| edge alone | {r['edge_fp']:.0f} | {r['edge_recall']:.3f} |",
        f"| edge alone at the gated recall | {r['edge_fp_equal_recall']:.0f} | {r['gated_recall']:.3f} |",
        f"| edge + cloud verdict | {r['gated_fp']:.0f} | {r['gated_recall']:.3f} |",
        f"false alerts cut at equal recall: {cut:.1%} (target >= 50%: {'met' if cut >= 0.5 else 'MISSED'}); "
        f"against the edge at its own recall: {raw:.1%}",
        f"bandwidth per device: {r['windows_per_device_hour']:.1f} windows/h (max {r['windows_per_device_hour_max']:.1f}), "
        f"{r['bytes_per_device_hour'] / 1024:.1f} KiB/h (max {r['bytes_per_device_hour_max'] / 1024:.1f}); "
        f"a cap of {args.cap:g}/h (burst {args.burst}) keeps {r['kept_share_under_cap']:.1%}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--hours", type=float, default=3.0)
    p.add_argument("--magnitude", type=float, default=0.35, help="fault magnitudes scaled by this (borderline faults)")
    p.add_argument("--band-low", type=float, default=0.8)
    p.add_argument("--band-high", type=float, default=1.25)
    p.add_argument("--normal-quantile", type=float, default=0.99, help="cloud confirm_ratio: this quantile on normal windows")
    p.add_argument("--cap", type=float, default=60.0, help="escalation.max_per_device_per_hour")
    p.add_argument("--burst", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    print(report(measure(args), args))
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

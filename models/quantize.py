"""Optional INT8 dynamic quantization of an artifact (onnxruntime.quantization), with a report
of the speed-up (same process, interleaved rounds, one thread) and the agreement with fp32:
largest score difference and how many decisions flip at the manifest's threshold."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.detector import OnnxDetector, file_sha256, load_manifest
from models.export import write_manifest


def _seconds_per_window(detector: OnnxDetector, windows: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(windows), batch):
        detector.score(windows[i:i + batch])
    return (time.perf_counter() - started) / len(windows)


def quantize_artifact(src_dir: Path | str, dst_dir: Path | str, windows: np.ndarray, *,
                      rounds: int = 5, batch: int = 64) -> dict[str, float]:
    """Write an INT8 copy of ``src_dir`` to ``dst_dir`` (same threshold, new sha256) and compare
    both on ``windows``. Blocks for a few seconds."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # quantize_dynamic writes helper files beside its output
        out = Path(tmp) / "model.onnx"
        quantize_dynamic(src / "model.onnx", out, weight_type=QuantType.QInt8)
        (dst / "model.onnx").write_bytes(out.read_bytes())
    manifest = load_manifest(src)
    write_manifest(replace(manifest, sha256=file_sha256(dst / "model.onnx"), version=manifest.version + "-int8"), dst)
    fp32, int8 = OnnxDetector.load(src), OnnxDetector.load(dst)
    s32, s8 = fp32.score(windows)[0], int8.score(windows)[0]
    times32, times8 = [], []
    for _ in range(rounds):
        times32.append(_seconds_per_window(fp32, windows, batch))
        times8.append(_seconds_per_window(int8, windows, batch))
    t = manifest.threshold
    return {
        "windows": float(len(windows)),
        "batch": float(batch),
        "fp32_windows_per_s": 1.0 / statistics.median(times32),
        "int8_windows_per_s": 1.0 / statistics.median(times8),
        "speedup": statistics.median(times32) / statistics.median(times8),
        "max_abs_diff": float(np.max(np.abs(s32 - s8))),
        "max_rel_diff": float(np.max(np.abs(s32 - s8) / np.maximum(np.abs(s32), 1e-12))),
        "decisions_changed": float(np.sum((s32 > t) != (s8 > t))),
        "fp32_size_bytes": float((src / "model.onnx").stat().st_size),
        "int8_size_bytes": float((dst / "model.onnx").stat().st_size),
    }

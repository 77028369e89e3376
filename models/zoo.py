"""The default model zoo: ``models/zoo/default`` rebuilt deterministically from synthetic data.

``edgewatch zoo build-default`` (or :func:`build_default`) trains a small dense autoencoder on
fault-free runs of :func:`edge.synth.simulate`, exports it, scores fresh seeds through
:class:`edge.detector.OnnxDetector` and writes the figures into the manifest. Seeds, one
thread, deterministic kernels and a fixed ``created_at`` make the rebuild byte-identical on the
same platform (torch and onnxruntime versions included)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge.contract import Channel, ModelManifest
from edge.detector import OnnxDetector
from edge.synth import CHANNELS, SAMPLE_PERIOD_S, simulate
from models.config import TrainConfig
from models.export import write_artifact, write_manifest
from models.fit import fit
from models.synth_eval import evaluate_synthetic

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).resolve().parent / "zoo" / "default"
DEFAULT_CONFIG = TrainConfig(family="dense_ae", window_length=32, stride=8, train_stride=2, hidden=64, latent=8,
                             epochs=40, batch_size=128, lr=1e-3, validation_split=0.1, early_stopping=6, seed=7,
                             quantile=0.999, margin=1.1)


@dataclass(frozen=True)
class ZooSpec:
    """What decides the default model besides the training config."""

    name: str = "pump-default"
    version: str = "1.0.0"
    created_at: str = "2026-01-01T00:00:00Z"  # fixed: part of the byte-identical rebuild
    devices: int = 8
    steps_per_device: int = 20_000
    data_seed: int = 100
    eval_seeds: tuple[int, ...] = (50_001, 50_002, 50_003, 50_004)
    eval_steps: int = 12_000


QUICK = ZooSpec(devices=2, steps_per_device=3_000, eval_seeds=(50_001,), eval_steps=6_000)


def training_rows(spec: ZooSpec) -> list[np.ndarray]:
    """One fault-free run per simulated device (seeds ``data_seed + i``)."""
    return [simulate(spec.steps_per_device, seed=spec.data_seed + i)[0] for i in range(spec.devices)]


def build_default(out_dir: Path | str = DEFAULT_DIR, *, spec: ZooSpec = ZooSpec(), config: TrainConfig = DEFAULT_CONFIG,
                  evaluate: bool = True, progress: bool = False) -> ModelManifest:
    """Train, export and (optionally) evaluate the default model into ``out_dir``. Blocks for
    about a minute with the default spec on one core; uses one torch thread throughout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = fit(training_rows(spec), config, channels=[Channel(n, u) for n, u in CHANNELS],
                     sample_period_s=SAMPLE_PERIOD_S, progress=progress)
    finally:
        torch.set_num_threads(threads)
    manifest = write_artifact(fitted, out_dir, name=spec.name, version=spec.version, created_at=spec.created_at)
    if evaluate:
        detector = OnnxDetector.load(out_dir, threads=1)
        metrics = evaluate_synthetic(detector.score, threshold=manifest.threshold, window_length=config.window_length,
                                     stride=config.stride, seeds=spec.eval_seeds, n_steps=spec.eval_steps)
        metrics = {k: round(v, 6) for k, v in metrics.items()}
        metrics["epochs_run"] = float(len(fitted.history.train_loss))
        metrics["final_val_loss"] = round(fitted.history.val_loss[-1], 8) if fitted.history.val_loss else 0.0
        manifest = ModelManifest(**{**manifest.__dict__, "metrics": metrics})
        write_manifest(manifest, Path(out_dir))
    log.info("zoo_default_built out=%s sha256=%s", out_dir, manifest.sha256)
    return manifest

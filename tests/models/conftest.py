"""Fixtures for the training side: tiny synthetic data, tiny configs, one fitted and exported
model per family per session (so the contract suite trains each family once)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.contract import Channel
from edge.detector import OnnxDetector
from edge.synth import CHANNELS, simulate
from models.config import TrainConfig
from models.export import write_artifact
from models.fit import FittedModel, fit

WINDOW = 16


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(family: str = "dense_ae", **changes: object) -> TrainConfig:
    """A model small and short enough to train in well under a second."""
    base = TrainConfig(family=family, window_length=WINDOW, stride=8, train_stride=4, hidden=16, latent=4, epochs=3,
                       batch_size=64, validation_split=0.1, bidirectional=family == "lstm_ae",
                       lr={"rbm": 3e-3, "dbn_ae": 3e-3, "ladder": 1e-2}.get(family, 1e-3))  # CD, sigmoid units, the
    # ladder's combinators (starting at 0): 4 epochs at 1e-3 are short
    return base.with_(**changes)


@pytest.fixture(scope="session")
def train_rows() -> list[np.ndarray]:
    return [simulate(1_200, seed=s)[0] for s in range(11, 17)]


@pytest.fixture(scope="session")
def small_rows() -> np.ndarray:
    return simulate(600, seed=21)[0]


@pytest.fixture(scope="session")
def channels() -> list[Channel]:
    return [Channel(n, u) for n, u in CHANNELS]


@dataclass
class Trained:
    fitted: FittedModel
    model_dir: Path
    onnx: OnnxDetector


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, train_rows: list[np.ndarray], channels: list[Channel]) -> dict[str, Trained]:
    """Lazily fitted and exported models, keyed by family (fit on first use)."""

    class _Lazy(dict[str, Trained]):
        def __missing__(self, family: str) -> Trained:
            cfg = tiny_config(family, epochs=4, hidden=24, latent=6)
            fitted = fit(train_rows, cfg, channels=channels)
            out = tmp_path_factory.mktemp(family)
            write_artifact(fitted, out, name=f"test-{family}", created_at="2026-01-01T00:00:00Z")
            self[family] = Trained(fitted, out, OnnxDetector.load(out))
            return self[family]

    return _Lazy()

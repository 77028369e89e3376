"""The committed default model (models/zoo/default) and its deterministic rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.detector import OnnxDetector
from edge.synth import CHANNEL_NAMES, FAULT_KINDS
from models.data import fingerprint
from models.synth_eval import evaluate_synthetic
from models.zoo import DEFAULT_CONFIG, DEFAULT_DIR, QUICK, ZooSpec, build_default, training_rows


@pytest.fixture(scope="module")
def default() -> OnnxDetector:
    return OnnxDetector.load(DEFAULT_DIR)


def test_committed_default_is_a_valid_edge_artifact(default: OnnxDetector) -> None:
    m = default.manifest
    assert m.window_length in (32, 64) and 8 <= m.stride <= 16 and m.channel_names == CHANNEL_NAMES
    assert m.family == DEFAULT_CONFIG.family and m.signature is None
    assert {f"recall_{k}" for k in FAULT_KINDS} | {"false_alarms_per_hour"} <= set(m.metrics)


def test_committed_default_was_trained_on_what_the_build_command_generates(default: OnnxDetector) -> None:
    assert default.manifest.training_data_fingerprint == fingerprint(training_rows(ZooSpec()))
    assert default.manifest.window_length == DEFAULT_CONFIG.window_length and default.manifest.stride == DEFAULT_CONFIG.stride


def test_committed_default_detects_faults_on_a_fresh_seed(default: OnnxDetector) -> None:
    m = default.manifest
    figures = evaluate_synthetic(default.score, threshold=m.threshold, window_length=m.window_length, stride=m.stride,
                                 seeds=(4242,), n_steps=8_000, faults_per_run=6)
    for kind in ("spike", "drift", "noise", "decorrelate"):
        assert figures[f"recall_{kind}"] >= 0.8, kind
    assert figures["recall_stuck"] >= 0.3
    assert figures["false_alarms_per_hour"] <= 2.0


def test_two_quick_builds_are_byte_identical(tmp_path: Path) -> None:
    config = DEFAULT_CONFIG.with_(epochs=2)
    for name in ("a", "b"):
        build_default(tmp_path / name, spec=QUICK, config=config)
    for file in ("model.onnx", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert OnnxDetector.load(tmp_path / "a").manifest.metrics["epochs_run"] == 2

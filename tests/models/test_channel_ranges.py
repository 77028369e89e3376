"""Channel ranges learned at export (issue 16 item 1): the training range widened by its span on
each side, written into the manifest the edge verifies, and read back by the agent's range check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.contract import Channel, decode_manifest
from edge.detector import OnnxDetector
from edge.synth import CHANNEL_NAMES
from models.calibrate import RANGE_MARGIN, channel_ranges
from models.export import write_artifact
from models.fit import fit
from tests.models.conftest import tiny_config


def test_ranges_are_the_training_range_widened_by_its_span() -> None:
    a = np.array([[0.0, 5.0], [10.0, 5.0]])
    b = np.array([[4.0, 5.0]])
    assert channel_ranges([a, b], ["x", "flat"], margin=0.5) == {"x": (-5.0, 15.0), "flat": (4.5, 5.5)}  # flat: span 1
    assert channel_ranges([a], ["x", "flat"])["x"] == (-10.0 * RANGE_MARGIN, 10.0 + 10.0 * RANGE_MARGIN)


def test_export_writes_the_learned_ranges_into_the_manifest(small_rows: np.ndarray, channels: list[Channel], tmp_path: Path) -> None:
    fitted = fit(small_rows, tiny_config(epochs=1), channels=channels)
    manifest = write_artifact(fitted, tmp_path, name="ranged")
    ranges = decode_manifest((tmp_path / "manifest.json").read_bytes()).channel_ranges
    assert ranges is not None and ranges == manifest.channel_ranges and set(ranges) == set(CHANNEL_NAMES)
    span = small_rows.max(axis=0) - small_rows.min(axis=0)
    for j, name in enumerate(CHANNEL_NAMES):
        assert ranges[name] == pytest.approx((small_rows[:, j].min() - span[j], small_rows[:, j].max() + span[j]))
    assert OnnxDetector.load(tmp_path).manifest.channel_ranges == ranges

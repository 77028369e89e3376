"""The artifact: model.onnx + manifest.json per the contract, loadable by the edge; quantization."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.contract import decode_manifest
from edge.detector import OnnxDetector, load_manifest
from edge.synth import CHANNEL_NAMES, simulate
from models.data import fingerprint, make_windows
from models.export import onnx_bytes, write_artifact
from models.quantize import quantize_artifact
from tests.models.conftest import WINDOW, Trained


def test_manifest_follows_the_contract(trained: dict[str, Trained], train_rows: list[np.ndarray]) -> None:
    t = trained["dense_ae"]
    raw = (t.model_dir / "manifest.json").read_bytes()
    m = decode_manifest(raw)
    assert m.sha256 == hashlib.sha256((t.model_dir / "model.onnx").read_bytes()).hexdigest()
    assert m.channel_names == CHANNEL_NAMES and m.channels[1].unit == "A"
    assert (m.window_length, m.stride, m.sample_period_s) == (WINDOW, 8, 1.0)
    assert m.threshold == pytest.approx(t.fitted.threshold) and m.calibration.method == "quantile"
    assert {"expected_anomaly_rate", "train_p50", "train_p90", "train_p99"} <= set(m.calibration.params)
    assert m.opset >= 17 and m.min_onnxruntime == "1.17" and m.signature is None
    assert m.training_data_fingerprint == fingerprint(train_rows)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", m.training_data_fingerprint)
    assert m.created_at == "2026-01-01T00:00:00Z" and m.family == "dense_ae"


def test_graph_has_the_edge_signature(trained: dict[str, Trained]) -> None:
    model = onnx.load(trained["conv_ae"].model_dir / "model.onnx")
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "windows" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [WINDOW, 6]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in model.graph.output] == ["score", "channel_scores"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_export_is_byte_identical_for_the_same_weights(trained: dict[str, Trained], tmp_path: Path) -> None:
    t = trained["lstm_ae"]
    first = onnx_bytes(t.fitted.detector, window_length=WINDOW, channels=6)
    assert first == onnx_bytes(t.fitted.detector, window_length=WINDOW, channels=6)
    write_artifact(t.fitted, tmp_path, name="again", created_at="2026-01-01T00:00:00Z")
    assert (tmp_path / "model.onnx").read_bytes() == (t.model_dir / "model.onnx").read_bytes()


def test_fingerprint_depends_on_values_and_shape() -> None:
    a = np.arange(12.0).reshape(6, 2)
    assert fingerprint([a]) == fingerprint([a.copy()])
    assert fingerprint([a]) != fingerprint([a.reshape(4, 3)])
    b = a.copy()
    b[0, 0] = 0.5
    assert fingerprint([a]) != fingerprint([b])


def test_int8_quantization_report(trained: dict[str, Trained], tmp_path: Path) -> None:
    t = trained["dense_ae"]
    windows = make_windows(simulate(1_500, seed=41)[0], WINDOW, 4)
    report = quantize_artifact(t.model_dir, tmp_path / "int8", windows, rounds=2)
    int8 = OnnxDetector.load(tmp_path / "int8")
    assert load_manifest(tmp_path / "int8").threshold == t.onnx.manifest.threshold
    assert report["windows"] == len(windows) and report["speedup"] > 0
    diff = np.abs(int8.score(windows)[0] - t.onnx.score(windows)[0])
    assert report["max_abs_diff"] == pytest.approx(float(diff.max()), rel=1e-6)
    assert 0 <= report["decisions_changed"] <= len(windows) * 0.05
    assert report["int8_size_bytes"] < report["fp32_size_bytes"]

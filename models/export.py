"""Export a fitted model as the edge artifact: ``model.onnx`` + ``manifest.json``.

The graph holds preprocessing, the network and the scoring head; input ``windows``
``(batch, window, channels)`` float32 raw readings with a dynamic batch, outputs ``score`` and
``channel_scores`` (an ensemble's also ``member_scores``, see :class:`models.base.Ensemble`). It is
exported with torch's TorchScript-based exporter: the dynamo exporter also works but takes 10-15 s
per LSTM model against 0.1 s, which matters for tests and per-file benchmark protocols. The same
weights give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch

from edge.contract import ModelManifest, encode_manifest
from edge.detector import INPUT_NAME, MEMBER_OUTPUT, OUTPUT_NAMES, file_sha256
from models.base import Detector, Ensemble
from models.fit import FittedModel

OPSET = 17
MIN_ONNXRUNTIME = "1.17"


def onnx_bytes(detector: Detector | Ensemble, *, window_length: int, channels: int, opset: int = OPSET) -> bytes:
    """Serialise ``detector`` (eval mode) to ONNX bytes."""
    detector.eval()
    example = torch.zeros(2, window_length, channels)
    outputs = [*OUTPUT_NAMES, MEMBER_OUTPUT] if isinstance(detector, Ensemble) else list(OUTPUT_NAMES)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(detector, (example,), buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes any binary file; its annotation names paths only
                          input_names=[INPUT_NAME], output_names=outputs,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    model.producer_name = "edgewatch"
    model.doc_string = "edgewatch detector: raw windows -> score, channel_scores"
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def created_at_now() -> str:
    """UTC creation time; ``SOURCE_DATE_EPOCH`` (reproducible builds) fixes it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(fitted: FittedModel, sha256: str, *, name: str, version: str, created_at: str,
                   metrics: Mapping[str, float] | None = None, opset: int = OPSET) -> ModelManifest:
    cfg = fitted.config
    return ModelManifest(
        name=name, family=cfg.family, version=version, sha256=sha256, channels=fitted.channels,
        window_length=cfg.window_length, stride=cfg.stride, sample_period_s=fitted.sample_period_s,
        threshold=float(fitted.threshold), calibration=fitted.calibration, opset=opset,
        min_onnxruntime=MIN_ONNXRUNTIME, training_data_fingerprint=fitted.fingerprint,
        metrics=dict(metrics or {}), created_at=created_at, channel_ranges=fitted.channel_ranges, members=fitted.members, signature=None,
    )


def write_artifact(fitted: FittedModel, out_dir: Path | str, *, name: str, version: str = "1.0.0",
                   created_at: str | None = None, metrics: Mapping[str, float] | None = None) -> ModelManifest:
    """Write ``out_dir/model.onnx`` and ``out_dir/manifest.json`` (unsigned); returns the manifest.
    Load the result with :meth:`edge.detector.OnnxDetector.load`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = onnx_bytes(fitted.detector, window_length=fitted.config.window_length, channels=len(fitted.channels))
    (out / "model.onnx").write_bytes(data)
    manifest = build_manifest(fitted, file_sha256(out / "model.onnx"), name=name, version=version,
                              created_at=created_at or created_at_now(), metrics=metrics)
    write_manifest(manifest, out)
    return manifest


def write_manifest(manifest: ModelManifest, out_dir: Path) -> None:
    (Path(out_dir) / "manifest.json").write_bytes(encode_manifest(manifest) + b"\n")

"""A PyTorch twin of an exported model, for footprint comparisons: the ``models`` detector
rebuilt with the ONNX file's own weights, checked against onnxruntime, saved as a pickled module.

The exported graph keeps the torch parameter and buffer names as initializer names (a buffer the
exporter de-duplicated appears as an ``Identity`` node from its twin), so the state dict is read
straight out of ``model.onnx``. Only for ``bench/``: needs torch, onnx and ``models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def twin_from_onnx(model_dir: Path, config: Any) -> Any:
    """The torch ``Detector`` of ``config`` (a ``TrainConfig``) with the weights of ``model_dir/model.onnx``."""
    import onnx
    import torch
    from onnx import numpy_helper

    from edge.detector import load_manifest
    from models.fit import build_detector
    from models.preprocess import Preprocessor

    manifest = load_manifest(model_dir)
    if manifest.family != config.family or manifest.window_length != config.window_length:
        raise ValueError(f"{model_dir}: a {manifest.family} model of window {manifest.window_length}, config is {config.family}")
    graph = onnx.load(str(Path(model_dir) / "model.onnx")).graph
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in state:
            state[node.output[0]] = state[node.input[0]]
    channels = len(manifest.channels)
    components = int(state["pre.proj"].shape[1]) if "pre.proj" in state else channels
    detector = build_detector(Preprocessor(channels, components), config, channels)
    wanted = detector.state_dict()
    missing = set(wanted) - set(state)
    if missing - {"extra_mu", "extra_sd"}:  # the extra term's statistics are folded away when unused
        raise ValueError(f"{model_dir}: the graph lacks {sorted(missing)}")
    detector.load_state_dict({k: state.get(k, v) for k, v in wanted.items()})
    return detector.eval()


def max_relative_difference(detector: Any, model_dir: Path, windows: np.ndarray) -> float:
    """Largest ``|torch - onnxruntime| / max(1, |onnxruntime|)`` over scores and channel scores."""
    import torch

    from edge.detector import OnnxDetector

    ort_score, ort_channels = OnnxDetector.load(model_dir, threads=1).score(windows)
    with torch.inference_mode():
        score, channels = (t.numpy() for t in detector(torch.from_numpy(windows)))
    return float(max(np.max(np.abs(score - ort_score) / np.maximum(1.0, np.abs(ort_score))),
                     np.max(np.abs(channels - ort_channels) / np.maximum(1.0, np.abs(ort_channels)))))


def save_twin(detector: Any, path: Path) -> None:
    import torch

    torch.save(detector, path)


def load_twin(model_dir: Path, path: Path) -> tuple[Any, Any]:
    """(manifest, module) in a fresh process: imports torch and the ``models`` classes, not onnxruntime."""
    import torch

    from edge.contract import decode_manifest

    manifest = decode_manifest((Path(model_dir) / "manifest.json").read_bytes())
    return manifest, torch.load(path, weights_only=False).eval()

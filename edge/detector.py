"""A model artifact (``model.onnx`` + ``manifest.json``) loaded into one onnxruntime session.

Loading checks, before any session exists: the manifest against the contract, the ONNX
file's sha256 against the manifest, the installed onnxruntime against the manifest's minimum,
and the graph's input and outputs against the manifest's channels. One session per model
version; :meth:`OnnxDetector.score` is the only call on the hot path.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from edge.contract import ContractError, ManifestError, ModelLoadError, ModelManifest, decode_manifest

if TYPE_CHECKING:  # edge.signing loads cryptography (~6 MiB): only when a signature is checked
    from edge.signing import TrustedKeys

log = logging.getLogger(__name__)

INPUT_NAME = "windows"
OUTPUT_NAMES = ("score", "channel_scores")
MEMBER_OUTPUT = "member_scores"
"""An ensemble's third output, ``(batch, members)``: each member's own score (manifest ``members``)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(model_dir: Path) -> ModelManifest:
    """Read and validate ``manifest.json``; raises :class:`ManifestError` naming the file and field."""
    path = Path(model_dir) / "manifest.json"
    try:
        return decode_manifest(path.read_bytes())
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror})") from None
    except ContractError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def _fits(dim: object, expected: int) -> bool:
    """A symbolic (dynamic) dimension fits anything; a fixed one must match."""
    return not isinstance(dim, int) or dim == expected


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


@dataclass
class OnnxDetector:
    """Scores batches of raw windows; higher means more anomalous. Deciding is not its job."""

    manifest: ModelManifest
    session: ort.InferenceSession
    model_dir: Path

    @classmethod
    def load(cls, model_dir: Path | str, *, threads: int = 1, trusted_keys: TrustedKeys | None = None) -> OnnxDetector:
        """Verify and load an artifact; raises :class:`ManifestError` or :class:`ModelLoadError`.

        With ``trusted_keys`` the manifest must carry a valid signature by one of them (checked
        before anything else is read); without, only the contract and the file hash are checked.

        May block for the session's creation (tens of milliseconds); call it off the intake path.
        """
        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir)
        if trusted_keys is not None:
            from edge.signing import verify_manifest

            verify_manifest(manifest, trusted_keys)
        onnx_path = model_dir / "model.onnx"
        if not onnx_path.exists():
            raise ManifestError(f"{onnx_path}: model file is missing")
        actual = file_sha256(onnx_path)
        if actual != manifest.sha256:
            raise ManifestError(f"{onnx_path}: sha256 {actual} does not match the manifest's {manifest.sha256}")
        if _version_tuple(ort.__version__) < _version_tuple(manifest.min_onnxruntime):
            raise ManifestError(f"{model_dir}: needs onnxruntime >= {manifest.min_onnxruntime}, installed {ort.__version__}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad graph
            raise ModelLoadError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from exc
        detector = cls(manifest, session, model_dir)
        detector._check_signature_of_graph()
        return detector

    def _check_signature_of_graph(self) -> None:
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        m = self.manifest
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise ModelLoadError(f"{self.model_dir}: graph must have one input named {INPUT_NAME!r}, has {[i.name for i in inputs]}")
        shape = inputs[0].shape
        if len(shape) != 3 or not _fits(shape[1], m.window_length) or not _fits(shape[2], len(m.channels)):
            raise ModelLoadError(f"{self.model_dir}: input shape {shape} does not fit window {m.window_length} "
                                 f"x {len(m.channels)} channels")
        expected = OUTPUT_NAMES if m.members is None else (*OUTPUT_NAMES, MEMBER_OUTPUT)
        if tuple(outputs) != expected:
            raise ModelLoadError(f"{self.model_dir}: outputs must be {expected}, are {outputs}")
        if m.members is not None and not _fits(self.session.get_outputs()[2].shape[1], len(m.members)):
            raise ModelLoadError(f"{self.model_dir}: {MEMBER_OUTPUT} does not have the manifest's {len(m.members)} members")

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score ``(batch, window, channels)`` raw readings; returns ``score (batch,)`` and
        ``channel_scores (batch, channels)``. Blocks for the inference; thread-safe per onnxruntime."""
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        score, channel_scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return score, channel_scores

    def score_members(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An ensemble's :meth:`score` and its members' own scores ``(batch, members)``, in one run."""
        if self.manifest.members is None:
            raise ModelLoadError(f"{self.model_dir}: not an ensemble (the manifest has no members)")
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        score, channel_scores, members = self.session.run([*OUTPUT_NAMES, MEMBER_OUTPUT], {INPUT_NAME: batch})
        return score, channel_scores, members

    def warm_up(self) -> None:
        """Run one batch through the session so the first real call is not the slow one."""
        m = self.manifest
        self.score(np.zeros((1, m.window_length, len(m.channels)), dtype=np.float32))

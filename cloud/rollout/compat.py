"""Whether an agent can load a bundle, from what it reports (:class:`edge.contract.update.AgentInfo`).

The same checks the agent makes when the bundle arrives, made before it is sent: onnxruntime at
least the manifest's ``min_onnxruntime``, an opset the runtime runs, room in memory for the
session, and room on disk for the chunks plus the assembled ``model.onnx`` (as
:meth:`edge.updates.ModelDownloader._room` counts). Pure functions; no I/O.
"""

from __future__ import annotations

from typing import Protocol

from edge.contract import ModelManifest
from edge.detector import _version_tuple as version_tuple  # the agent's own comparison, at load
from edge.sysinfo import SESSION_MEMORY_FACTOR, SESSION_OVERHEAD_BYTES  # measured by bench/session_memory.py


class AgentFacts(Protocol):
    """What :func:`refusal` reads of an agent's report (the fields of ``AgentInfo``)."""

    @property
    def onnxruntime(self) -> str: ...
    @property
    def max_opset(self) -> int: ...
    @property
    def mem_available_bytes(self) -> int: ...
    @property
    def disk_free_bytes(self) -> int: ...


def memory_needed(model_bytes: int) -> int:
    """Estimated memory a session of a ``model_bytes`` model takes on top of what the agent holds."""
    return int(model_bytes * SESSION_MEMORY_FACTOR) + SESSION_OVERHEAD_BYTES


def refusal(manifest: ModelManifest, model_bytes: int, info: AgentFacts) -> str | None:
    """Why an agent reporting ``info`` cannot load this bundle (every reason, joined by "; "), or None."""
    reasons = []
    if version_tuple(info.onnxruntime) < version_tuple(manifest.min_onnxruntime):
        reasons.append(f"onnxruntime {info.onnxruntime} is older than the manifest's minimum {manifest.min_onnxruntime}")
    if info.max_opset < manifest.opset:
        reasons.append(f"onnxruntime runs opset up to {info.max_opset}, the model needs {manifest.opset}")
    need = memory_needed(model_bytes)
    if info.mem_available_bytes < need:
        reasons.append(f"memory: {need} bytes needed (model x{SESSION_MEMORY_FACTOR:g} + session overhead), "
                       f"{info.mem_available_bytes} available")
    disk = 2 * model_bytes  # the chunks and the assembled model.onnx
    if info.disk_free_bytes < disk:
        reasons.append(f"disk: {disk} bytes needed (chunks and the assembled model.onnx), {info.disk_free_bytes} free")
    return "; ".join(reasons) or None

"""What an agent says about the machine it runs on, in its periodic ``report`` (:class:`AgentInfo`).

A rollout reads it to skip the agents that cannot load a bundle (onnxruntime version, opset,
architecture, memory, disk). Everything here is cheap: two small file reads and a ``statvfs``,
no new dependency. Called on the agent's worker thread once per ``updates.report_interval_s``.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edge.contract.update import AgentInfo

# The highest ai.onnx opset each onnxruntime release implements, from onnxruntime's compatibility
# page (onnxruntime.ai/docs/reference/compatibility.html, "ONNX opset support"). onnxruntime has
# no API for it. A release newer than the table is taken to run the last known opset: an
# estimate that can be low, never high, so a rollout may skip an agent that could have run a
# bundle but never sends one it cannot.
ORT_MAX_OPSET: Mapping[tuple[int, int], int] = {
    (1, 14): 18, (1, 15): 19, (1, 16): 19, (1, 17): 20, (1, 18): 21, (1, 19): 21, (1, 20): 21,
}
MIN_OPSET = 7  # every onnxruntime release runs opset 7 and up (the same page)

# What an onnxruntime session costs in resident memory, for a rollout's estimate of the memory a
# bundle needs: SESSION_MEMORY_FACTOR x model.onnx bytes + SESSION_OVERHEAD_BYTES. Measured with
# bench/session_memory.py (x86_64, onnxruntime 1.32, one intra-op thread as the agent runs it):
# peak RSS (VmHWM) after creating an InferenceSession and scoring a warm-up window and a batch,
# minus RSS before, in fresh processes, 3 runs each (they agree within 0.2 MiB), for
# models/zoo/default (106 KiB) and dense models of 5.5, 19 and 70 MiB. While it loads,
# onnxruntime holds the file's bytes and its own copy of the weights: the 70 MiB model peaks at
# 146 MiB, 2 x its size + 6 MiB, hence the factor 2. The default model peaks 31.1 MiB over its
# file after a full round of 4,096 windows (agent.max_batch_windows), 18.1 MiB after 256. A wide
# model's activations in a full round are not covered (docs/rollouts.md, "Agent reports").
SESSION_MEMORY_FACTOR = 2.0
SESSION_OVERHEAD_BYTES = 32 * 1024 * 1024

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)")


def agent_version() -> str:
    """edgewatch's installed version, or ``"unknown"`` when it runs from a source tree."""
    try:
        return version("edgewatch")
    except PackageNotFoundError:
        return "unknown"


def max_opset(ort_version: str) -> int:
    """The highest ai.onnx opset onnxruntime ``ort_version`` runs (:data:`ORT_MAX_OPSET`)."""
    match = _VERSION_RE.match(ort_version)
    if match is None:
        return MIN_OPSET
    release = (int(match[1]), int(match[2]))
    known = [opset for r, opset in sorted(ORT_MAX_OPSET.items()) if r <= release]
    return known[-1] if known else MIN_OPSET


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(total, available) bytes of memory: ``MemTotal`` and ``MemAvailable`` of /proc/meminfo,
    else (no such file, or a kernel without ``MemAvailable``) physical and free pages from
    ``os.sysconf``. Available is what can be allocated without swapping, caches included."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        return _kib(fields["MemTotal"]), _kib(fields["MemAvailable"])
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page


def _kib(value: str) -> int:
    number, _, unit = value.strip().partition(" ")
    return int(number) * (1024 if unit == "kB" else 1)


def agent_info(state_dir: Path, devices: int, group: str, last_seen: Mapping[str, float] | None = None) -> AgentInfo:
    """This machine now: runtime, opset, architecture, memory and the free disk of ``state_dir``'s
    file system (its nearest existing parent), with the ``devices`` served, the update ``group`` and
    each device's ``last_seen`` (:meth:`edge.pipeline.Pipeline.last_seen`)."""
    import onnxruntime as ort  # loaded by the agent's model already; here so that importing this module stays light

    from edge.updates import free_disk_bytes  # (with the update machinery: only agents with updates on report)

    total, available = memory_bytes()
    return AgentInfo(agent_version=agent_version(), onnxruntime=ort.__version__, max_opset=max_opset(ort.__version__),
                     arch=platform.machine() or "unknown", mem_total_bytes=total, mem_available_bytes=min(available, total),
                     disk_free_bytes=free_disk_bytes(Path(state_dir)), devices=devices, group=group,
                     last_seen=dict(last_seen or {}))

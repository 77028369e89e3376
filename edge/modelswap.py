"""Model updates on the device: verified artifacts in, shadow trial, then promote or reject.

Threads: the downloader (its own MQTT client) hands a verified folder to :meth:`on_ready`; a
loader thread creates and warms the onnxruntime session off the hot path; everything else runs
on the agent's worker thread between ticks (:meth:`poll`) and inside the pipeline's scoring
(:meth:`shadow_score`), so a promotion swaps the scorer between two batches: no reading is
dropped and no window is left unscored. The live model keeps scoring through every refusal.

A version that was live before and whose folder is still on disk is a rollback: it is swapped
in at once, without a trial (``edgewatch rollout abort`` announces it to the agent; ``edgewatch
registry rollback`` then ``publish`` to its group).
The live version announced to the agent is an abort before the candidate went live: the
candidate on trial, and any still loading, is withdrawn (status ``rejected``, never promoted).
The folder of a version refused at load or rejected in shadow is deleted.
"""

from __future__ import annotations

import itertools
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract import EdgewatchError, ModelManifest
from edge.contract.update import ModelAnnounce, ModelStatus, StatusAction
from edge.detector import OnnxDetector
from edge.pipeline import Scorer
from edge.shadow import RejectReason, ShadowPolicy, ShadowTrial
from edge.signing import TrustedKeys

log = logging.getLogger(__name__)


def incompatibility(live: ModelManifest, candidate: ModelManifest) -> str | None:
    """Why ``candidate`` cannot replace ``live`` in place, or None. Windows are kept across a
    swap, so channels, window, stride and sample period must not change."""
    if candidate.name != live.name:
        return f"model name {candidate.name!r} is not the live model's {live.name!r}"
    if candidate.channel_names != live.channel_names:
        return f"channels {list(candidate.channel_names)} differ from the live {list(live.channel_names)}"
    for attr in ("window_length", "stride", "sample_period_s"):
        if getattr(candidate, attr) != getattr(live, attr):
            return f"{attr} {getattr(candidate, attr)} differs from the live {getattr(live, attr)}"
    return None


@dataclass
class _Candidate:
    detector: OnnxDetector
    trial: ShadowTrial
    number: int  # its place among arrivals (ModelUpdates._arrivals)


class ModelUpdates:
    """Owns the candidate and the previous model; the pipeline owns the live one."""

    def __init__(self, *, live: Scorer, swap: Callable[[Scorer], None], report: Callable[[ModelStatus], None],
                 trusted_keys: TrustedKeys, agent_id: str, threads: int = 1, policy: ShadowPolicy | None = None,
                 clock: Callable[[], float] = time.time, on_action: Callable[[StatusAction], None] = lambda a: None,
                 on_rejected: Callable[[RejectReason], None] = lambda r: None) -> None:
        self.live = live
        self.previous: Scorer | None = None
        self._swap = swap
        self._report = report
        self._trusted = trusted_keys
        self._agent_id = agent_id
        self._threads = threads
        self.policy = policy or ShadowPolicy()
        self._clock = clock
        self._on_action = on_action
        self._on_rejected = on_rejected  # the short reason of each candidate rejected (metrics)
        self._to_load: queue.Queue[tuple[int, Path] | None] = queue.Queue()
        self._loaded: queue.Queue[tuple[int, OnnxDetector | tuple[Path, str]]] = queue.Queue()
        self._arrivals = itertools.count()  # numbers downloaded folders and withdrawals, in the order they came
        self._withdrawn_before = -1  # folders numbered below this were withdrawn (their announce was taken back)
        self.candidate: _Candidate | None = None
        self._loader = threading.Thread(target=self._load_loop, name="edgewatch-model-loader", daemon=True)
        self._loader.start()

    @property
    def live_manifest(self) -> ModelManifest:
        return self.live.manifest

    # -- downloader side (its network thread) --------------------------------------------------
    def compatible(self, announce: ModelAnnounce) -> str | None:
        return incompatibility(self.live_manifest, announce.manifest)

    def on_ready(self, folder: Path, announce: ModelAnnounce) -> None:
        self._status("downloaded", announce.manifest, "signature, hash and compatibility verified")
        self._to_load.put((next(self._arrivals), folder))

    def on_live_announced(self, manifest: ModelManifest) -> None:
        """The live version was announced to this agent again: withdraw every candidate so far."""
        self._withdrawn_before = next(self._arrivals)

    def on_refused(self, name: str, version: str, reason: str) -> None:
        self._emit("refused", name, version, reason)

    # -- loader thread ---------------------------------------------------------------------------
    def _load_loop(self) -> None:
        while (job := self._to_load.get()) is not None:
            number, folder = job
            try:
                detector = OnnxDetector.load(folder, threads=self._threads, trusted_keys=self._trusted)
                detector.warm_up()
                self._loaded.put((number, detector))
            except EdgewatchError as exc:
                self._loaded.put((number, (folder, str(exc))))
            except Exception as exc:  # onnxruntime failures must not kill the loader
                self._loaded.put((number, (folder, f"{exc.__class__.__name__}: {exc}")))

    def close(self) -> None:
        self._to_load.put(None)

    # -- worker thread ---------------------------------------------------------------------------
    def poll(self) -> None:
        """Take a freshly loaded candidate (start its trial, or swap at once for a rollback), and
        end the trial of a candidate withdrawn since."""
        withdrawn = self._withdrawn_before
        cand = self.candidate
        if cand is not None and cand.number < withdrawn:
            self.candidate = None
            self._withdraw(cand.detector.model_dir, cand.detector.manifest)
        while not self._loaded.empty():
            number, item = self._loaded.get_nowait()
            if number < withdrawn and not isinstance(item, tuple):
                self._withdraw(item.model_dir, item.manifest)
                continue
            if isinstance(item, tuple):
                folder, reason = item
                self._discard(folder)
                self._emit("refused", folder.parent.name, folder.name, f"cannot load: {reason}")
                continue
            m = item.manifest
            prev = self.previous
            if prev is not None and prev.manifest.version == m.version and prev.manifest.sha256 == m.sha256:
                self._promote(item, "rolled_back", "the previous live version was announced again")
                continue
            if self.candidate is not None:
                self._discard(self.candidate.detector.model_dir)
                self._on_rejected("superseded")
                self._status("rejected", self.candidate.detector.manifest, f"superseded by {m.version}")
            trial = ShadowTrial.of(m, self.policy, clock=self._clock)
            self.candidate = _Candidate(item, trial, number)
            signed = "" if m.expected_alerts is None else ", against its signed prediction"
            self._status("shadow_started", m, f"scoring beside {self.live_manifest.version} for at least "
                         f"{self.policy.min_windows} windows and {self.policy.min_seconds:g} s{signed}")

    def shadow_score(self, windows: np.ndarray, live_scores: np.ndarray, live_threshold: float, live_s: float) -> None:
        """Score the live model's batch with the candidate; promote or reject when the trial ends."""
        cand = self.candidate
        if cand is None:
            return
        started = time.perf_counter()
        try:
            scores, _ = cand.detector.score(windows)
        except Exception as exc:  # a candidate that crashes onnxruntime is rejected, not fatal
            cand.trial.reject("inference_failed", f"inference failed: {exc}")
            scores = None
        verdict = cand.trial.verdict if scores is None else cand.trial.observe(
            live_scores, live_threshold, live_s, scores, time.perf_counter() - started)
        if verdict == "healthy":
            self.candidate = None
            self._promote(cand.detector, "promoted", cand.trial.reason)
        elif verdict == "rejected":
            self.candidate = None
            self._discard(cand.detector.model_dir)
            self._on_rejected(cand.trial.label or "rate")
            self._status("rejected", cand.detector.manifest, cand.trial.reason)

    def _withdraw(self, folder: Path, m: ModelManifest) -> None:
        self._discard(folder)
        self._on_rejected("superseded")
        self._status("rejected", m, f"withdrawn: the live version {self.live_manifest.version} was announced again "
                                    "(the rollout was aborted)")

    def _promote(self, detector: OnnxDetector, action: StatusAction, reason: str) -> None:
        old = self.live
        self._swap(detector)
        self.previous, self.live = old, detector
        self._status(action, detector.manifest, reason, live_version=detector.manifest.version)

    def _discard(self, folder: Path) -> None:
        """Delete the downloaded folder of a version refused at load or rejected in shadow, so
        versions that never went live do not pile up under the models folder. The live and
        previous folders are kept."""
        kept = {getattr(s, "model_dir", None) for s in (self.live, self.previous)}
        if folder not in kept:
            shutil.rmtree(folder, ignore_errors=True)

    def _status(self, action: StatusAction, m: ModelManifest, reason: str, live_version: str | None = None) -> None:
        self._emit(action, m.name, m.version, reason, live_version)

    def _emit(self, action: StatusAction, name: str, version: str, reason: str, live_version: str | None = None) -> None:
        log.log(logging.WARNING if action in ("refused", "rejected") else logging.INFO,
                "model_update action=%s name=%s version=%s reason=%s", action, name, version, reason)
        self._on_action(action)
        self._report(ModelStatus(agent_id=self._agent_id, action=action, model_name=name, model_version=version,
                                 reason=reason[:1000], at=self._clock(),
                                 live_version=live_version or self.live_manifest.version))

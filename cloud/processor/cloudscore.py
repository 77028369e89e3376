"""The cloud's heavier model for escalated windows: one registered model, or several averaged.

Each member scores the raw windows with onnxruntime (:class:`~edge.detector.OnnxDetector`, the
artifact checks included); its score is normalised by its own calibrated threshold (the
manifest's, chosen on normal data when it was trained), and the normalised scores of the members
are averaged. A window whose mean is at least ``confirm_ratio`` is ``confirmed``, else
``dismissed``. The benchmark (``bench/escalation.py``) runs this same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.contract import ConfigError
from edge.detector import OnnxDetector

Verdict = str  # "confirmed" | "dismissed"


def parse_models(spec: str, where: str = "escalation.model") -> list[tuple[str, str]]:
    """``"name[:version][,name2[:version]]"`` as (name, version) pairs; no version (or ``production``): the
    registry's production version. Raises :class:`ConfigError` naming ``where``."""
    out = []
    for item in (p.strip() for p in spec.split(",")):
        name, _, version = item.partition(":")
        if not name:
            raise ConfigError(f"{where} = {spec!r}: expected name[:version][,name[:version]...]")
        out.append((name, version or "production"))
    if not out:
        raise ConfigError(f"{where} is empty: name a registered model")
    return out


@dataclass
class CloudScorer:
    """The members, with one window length and channel list among them."""

    members: Sequence[OnnxDetector]
    confirm_ratio: float = 1.0

    @classmethod
    def from_registry(cls, root: Path, spec: str, *, confirm_ratio: float = 1.0, threads: int = 1) -> CloudScorer:
        """Load every model ``spec`` names (:func:`parse_models`) from the registry at ``root``; raises
        :class:`ConfigError` (unknown model or version, members that disagree on the window) or the
        detector's :class:`~edge.contract.ManifestError` / :class:`~edge.contract.ModelLoadError`."""
        from cloud.registry import Registry

        registry = Registry(root)
        members = []
        for name, version in parse_models(spec):
            path = registry.production_dir(name) if version == "production" else registry.version_dir(name, version)
            detector = OnnxDetector.load(path, threads=threads)
            detector.warm_up()
            members.append(detector)
        return cls.of(members, confirm_ratio)

    @classmethod
    def of(cls, members: Sequence[OnnxDetector], confirm_ratio: float = 1.0) -> CloudScorer:
        first = members[0].manifest
        for d in members[1:]:
            m = d.manifest
            if m.channel_names != first.channel_names or m.window_length != first.window_length:
                raise ConfigError(f"escalation.model: {m.name} {m.version} has window {m.window_length} x {list(m.channel_names)}, "
                                  f"{first.name} {first.version} {first.window_length} x {list(first.channel_names)}")
        return cls(members, confirm_ratio)

    @property
    def name(self) -> str:
        return ",".join(f"{d.manifest.name}:{d.manifest.version}" for d in self.members)

    @property
    def channels(self) -> tuple[str, ...]:
        return self.members[0].manifest.channel_names

    @property
    def window_length(self) -> int:
        return self.members[0].manifest.window_length

    def ratios(self, windows: np.ndarray) -> np.ndarray:
        """The mean normalised score (score / threshold) of ``(batch, window, channels)`` windows."""
        total = np.zeros(len(windows), dtype=np.float64)
        for d in self.members:
            total += np.asarray(d.score(windows)[0], dtype=np.float64) / d.manifest.threshold
        return total / len(self.members)

    def verdicts(self, ratios: np.ndarray) -> list[Verdict]:
        return ["confirmed" if r >= self.confirm_ratio else "dismissed" for r in ratios.tolist()]

"""The model registry: a folder per model name and version, with stages.

Layout::

    <root>/<name>/<version>/model.onnx       the artifact the edge runs
    <root>/<name>/<version>/manifest.json    signed by `edgewatch registry publish` or `keys sign`,
                                             with the artifact's size and chunk list (``transfer``)
    <root>/<name>/<version>/weights.pt       torch weights, for fine-tuning (optional)
    <root>/<name>/<version>/model_card.json  data, metrics, lineage
    <root>/<name>/stages.json                production version, candidates, archived, history

A version is registered as a candidate; ``promote`` makes it production (the previous one is
archived); ``rollback`` goes back to the production version before the current one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.contract import ConfigError, ModelManifest
from edge.contract.update import transfer_of
from edge.detector import file_sha256, load_manifest


@dataclass
class Stages:
    production: str | None = None
    candidates: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class Registry:
    """Files on a disk (or a mounted bucket). Not safe for concurrent writers to one model name."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def version_dir(self, name: str, version: str) -> Path:
        path = self.root / name / version
        if not (path / "manifest.json").exists():
            raise ConfigError(f"registry {self.root}: no model {name} version {version}")
        return path

    def stages(self, name: str) -> Stages:
        path = self.root / name / "stages.json"
        return Stages(**json.loads(path.read_text())) if path.exists() else Stages()

    def _save(self, name: str, stages: Stages, action: str, version: str | None, note: str = "") -> None:
        stages.history.append({"at": time.time(), "action": action, "version": version, "note": note})
        path = self.root / name / "stages.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(stages), indent=2) + "\n")
        tmp.replace(path)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.exists() else []

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        return sorted((p.name for p in base.iterdir() if (p / "manifest.json").exists()), key=_version_key) if base.exists() else []

    def register(self, model_dir: Path, *, weights: Path | None = None, card: dict[str, Any] | None = None) -> ModelManifest:
        """Copy a model folder in as a candidate; refuses a version that exists, a broken hash, or a
        signed ``transfer`` that does not describe ``model.onnx`` (it could never be published)."""
        manifest = load_manifest(model_dir)
        if file_sha256(Path(model_dir) / "model.onnx") != manifest.sha256:
            raise ConfigError(f"{model_dir}: model.onnx does not match the manifest's sha256")
        t = manifest.transfer
        if t is not None and transfer_of((Path(model_dir) / "model.onnx").read_bytes(), t.chunk_size) != t:
            raise ConfigError(f"{model_dir}: model.onnx does not match the manifest's transfer (size and chunk list)")
        target = self.root / manifest.name / manifest.version
        if target.exists():
            raise ConfigError(f"registry {self.root}: {manifest.name} {manifest.version} already exists")
        target.mkdir(parents=True)
        for item in ("model.onnx", "manifest.json"):
            shutil.copy2(Path(model_dir) / item, target / item)
        for extra in ("weights.pt", "report.json", "report.png"):
            if (Path(model_dir) / extra).exists():
                shutil.copy2(Path(model_dir) / extra, target / extra)
        if weights is not None:
            shutil.copy2(weights, target / "weights.pt")
        model_card = {"name": manifest.name, "version": manifest.version, "family": manifest.family,
                      "training_data_fingerprint": manifest.training_data_fingerprint, "metrics": dict(manifest.metrics),
                      "threshold": manifest.threshold, "calibration": manifest.calibration.method, **(card or {})}
        (target / "model_card.json").write_text(json.dumps(model_card, indent=2, default=str) + "\n")
        stages = self.stages(manifest.name)
        stages.candidates.append(manifest.version)
        self._save(manifest.name, stages, "register", manifest.version)
        return manifest

    def promote(self, name: str, version: str, note: str = "") -> Stages:
        self.version_dir(name, version)
        stages = self.stages(name)
        if stages.production and stages.production != version:
            stages.archived.append(stages.production)
        stages.production = version
        stages.candidates = [v for v in stages.candidates if v != version]
        stages.archived = [v for v in stages.archived if v != version]
        self._save(name, stages, "promote", version, note)
        return stages

    def rollback(self, name: str) -> Stages:
        """Make the previous production version production again."""
        stages = self.stages(name)
        promoted = [h["version"] for h in stages.history if h["action"] in ("promote", "rollback")]
        previous = next((v for v in reversed(promoted) if v != stages.production), None)
        if previous is None:
            raise ConfigError(f"registry {self.root}: {name} has no earlier production version to roll back to")
        current = stages.production
        stages.production = previous
        stages.archived = [v for v in stages.archived if v != previous] + ([current] if current else [])
        self._save(name, stages, "rollback", previous, f"from {current}")
        return stages

    def production_dir(self, name: str) -> Path:
        stages = self.stages(name)
        if stages.production is None:
            raise ConfigError(f"registry {self.root}: {name} has no production version")
        return self.version_dir(name, stages.production)


def _version_key(version: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in version.replace("-", ".").split("."))

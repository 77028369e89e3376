"""Registry stages: register as candidate, promote, rollback; broken artifacts refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cloud.cli import main
from cloud.registry import Registry
from edge.contract import Calibration, Channel, ConfigError, ModelManifest, encode_manifest


def _model(tmp: Path, version: str) -> Path:
    d = tmp / f"m{version}"
    d.mkdir()
    (d / "model.onnx").write_bytes(version.encode())
    m = ModelManifest("pump", "conv_ae", version, hashlib.sha256(version.encode()).hexdigest(), (Channel("a"),), 8, 4, 1.0,
                      0.5, Calibration("quantile"), 17, "1.17", "fp", {"f1": 0.8}, "2026-11-27T00:00:00Z")
    (d / "manifest.json").write_bytes(encode_manifest(m))
    return d


def test_register_promote_rollback(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        reg.register(_model(tmp_path, v))
    assert reg.stages("pump").candidates == ["1.0.0", "1.1.0", "1.2.0"]
    reg.promote("pump", "1.0.0")
    reg.promote("pump", "1.1.0")
    st = reg.promote("pump", "1.2.0")
    assert (st.production, st.candidates, st.archived) == ("1.2.0", [], ["1.0.0", "1.1.0"])
    st = reg.rollback("pump")
    assert st.production == "1.1.0" and "1.2.0" in st.archived
    assert reg.production_dir("pump") == tmp_path / "reg" / "pump" / "1.1.0"
    card = json.loads((tmp_path / "reg" / "pump" / "1.2.0" / "model_card.json").read_text())
    assert card["metrics"] == {"f1": 0.8} and card["family"] == "conv_ae"


def test_refuses_duplicates_broken_hash_and_unknown_versions(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.register(_model(tmp_path, "1.0.0"))
    with pytest.raises(ConfigError, match="already exists"):
        reg.register(tmp_path / "m1.0.0")
    broken = _model(tmp_path, "2.0.0")
    (broken / "model.onnx").write_bytes(b"changed")
    with pytest.raises(ConfigError, match="sha256"):
        reg.register(broken)
    with pytest.raises(ConfigError, match="no model pump version 9"):
        reg.promote("pump", "9")
    with pytest.raises(ConfigError, match="no earlier production"):
        reg.rollback("pump")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "reg")
    assert main(["registry", "register", str(_model(tmp_path, "1.0.0")), "--root", root]) == 0
    assert main(["registry", "promote", "pump", "1.0.0", "--root", root]) == 0
    assert main(["registry", "list", "--root", root]) == 0
    assert "pump: production=1.0.0" in capsys.readouterr().out
    assert main(["registry", "promote", "pump", "--root", root]) == 2
    assert "needs NAME VERSION" in capsys.readouterr().err

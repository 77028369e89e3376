"""Signed manifests: a valid signature loads; tampering, unknown keys and unsigned models are refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import pytest

from cloud.keys import generate_keypair, load_private_key, sign_manifest, sign_model_dir
from edge.contract import Calibration, Channel, ManifestError, ModelManifest, encode_manifest
from edge.detector import OnnxDetector, load_manifest
from edge.signing import load_trusted_keys, verify_manifest


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    onnx = b"not really onnx, but hashed all the same"
    (model / "model.onnx").write_bytes(onnx)
    manifest = ModelManifest("m", "dense_ae", "1.0.0", hashlib.sha256(onnx).hexdigest(), (Channel("a"),), 8, 4, 1.0, 0.5,
                             Calibration("quantile"), 17, "1.17", "fp", {}, "2026-11-27T00:00:00Z")
    (model / "manifest.json").write_bytes(encode_manifest(manifest))
    return model


def test_sign_and_verify(tmp_path: Path, artifact: Path) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signed = sign_model_dir(artifact, load_private_key(private))
    trusted = load_trusted_keys(tmp_path / "keys")
    assert signed.signature is not None and set(trusted) == {signed.signature.key_id}
    verify_manifest(load_manifest(artifact), trusted)
    with pytest.raises(Exception, match="already exists"):
        generate_keypair(tmp_path / "keys")


def test_tampered_manifest_refused(tmp_path: Path, artifact: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    sign_model_dir(artifact, load_private_key(private))
    doc = json.loads((artifact / "manifest.json").read_text())
    doc["threshold"] = 99.0
    (artifact / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="does not match the manifest"):
        verify_manifest(load_manifest(artifact), load_trusted_keys(tmp_path / "keys"))


def test_tampered_model_file_refused_before_loading(tmp_path: Path, artifact: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    sign_model_dir(artifact, load_private_key(private))
    (artifact / "model.onnx").write_bytes(b"evil")
    with pytest.raises(ManifestError, match="does not match the manifest's"):
        OnnxDetector.load(artifact, trusted_keys=load_trusted_keys(tmp_path / "keys"))


def test_unknown_key_and_unsigned_refused(tmp_path: Path, artifact: Path) -> None:
    mine, _ = generate_keypair(tmp_path / "mine")
    generate_keypair(tmp_path / "theirs")
    manifest = load_manifest(artifact)
    with pytest.raises(ManifestError, match="not signed"):
        verify_manifest(manifest, load_trusted_keys(tmp_path / "theirs"))
    signed = sign_manifest(manifest, load_private_key(mine))
    with pytest.raises(ManifestError, match="unknown key"):
        verify_manifest(signed, load_trusted_keys(tmp_path / "theirs"))
    assert signed.signature is not None
    forged = dataclasses.replace(signed, signature=dataclasses.replace(signed.signature, value="AAAA"))
    with pytest.raises(ManifestError, match="does not match"):
        verify_manifest(forged, load_trusted_keys(tmp_path / "mine"))

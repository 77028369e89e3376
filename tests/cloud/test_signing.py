"""Signed manifests: a valid signature loads; tampering, unknown keys and unsigned models are refused;
the signature covers how the artifact travels (size, chunk size, chunk list)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import pytest

from cloud.keys import generate_keypair, load_private_key, sign_manifest, sign_model_dir
from edge.contract import Calibration, Channel, ConfigError, ManifestError, ModelManifest, canonical_bytes, encode_manifest
from edge.contract.manifest import Transfer
from edge.contract.update import ModelAnnounce, chunk_hashes, chunk_list_sha256
from edge.detector import OnnxDetector, load_manifest
from edge.signing import load_trusted_keys, verify_announce, verify_manifest


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


def test_signing_a_folder_signs_the_transfer(tmp_path: Path, artifact: Path) -> None:
    private, _ = generate_keypair(tmp_path / "keys")
    trusted = load_trusted_keys(tmp_path / "keys")
    signed = sign_model_dir(artifact, load_private_key(private), chunk_size=16)
    onnx = (artifact / "model.onnx").read_bytes()
    assert signed.transfer == Transfer(len(onnx), 16, chunk_list_sha256(chunk_hashes(onnx, 16)))
    assert load_manifest(artifact) == signed
    announce = ModelAnnounce(signed, len(onnx), 16, chunk_hashes(onnx, 16))
    verify_announce(announce, trusted)
    assert signed.transfer is not None
    bigger = dataclasses.replace(signed, transfer=dataclasses.replace(signed.transfer, size=1 << 32))
    with pytest.raises(ManifestError, match="does not match the manifest"):  # the transfer is under the signature
        verify_manifest(bigger, trusted)
    with pytest.raises(ManifestError, match="size 41 differs from the signed size 40"):
        verify_announce(dataclasses.replace(announce, size=41), trusted)
    with pytest.raises(ManifestError, match="chunk_size 8 differs"):
        verify_announce(dataclasses.replace(announce, chunk_size=8, chunk_sha256=chunk_hashes(onnx, 8)), trusted)
    with pytest.raises(ManifestError, match="chunk list"):
        verify_announce(dataclasses.replace(announce, chunk_sha256=announce.chunk_sha256[::-1]), trusted)
    (artifact / "model.onnx").write_bytes(b"other bytes")
    with pytest.raises(ConfigError, match="refusing to sign"):
        sign_model_dir(artifact, load_private_key(private))


def test_manifest_signed_without_transfer_loads_but_is_not_announced(tmp_path: Path, artifact: Path) -> None:
    """Old signatures stay valid for a model on disk (the canonical bytes have no transfer key);
    over MQTT such a manifest is refused, since its announce could declare any size."""
    private, _ = generate_keypair(tmp_path / "keys")
    trusted = load_trusted_keys(tmp_path / "keys")
    old = sign_manifest(load_manifest(artifact), load_private_key(private))
    assert b"transfer" not in canonical_bytes(old)
    verify_manifest(old, trusted)
    onnx = (artifact / "model.onnx").read_bytes()
    with pytest.raises(ManifestError, match="does not cover the artifact's size and chunk list"):
        verify_announce(ModelAnnounce(old, len(onnx), 16, chunk_hashes(onnx, 16)), trusted)

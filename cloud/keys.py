"""Signing keys and manifest signatures on the cloud side (``edgewatch keys generate``).

The private key never leaves the machine that signs; devices get the ``.pub`` file.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.contract import ConfigError, ModelManifest, Signature, canonical_bytes, encode_manifest
from edge.contract.update import MAX_CHUNK_BYTES, transfer_of
from edge.detector import load_manifest
from edge.signing import key_id


def generate_keypair(folder: Path, name: str = "signing") -> tuple[Path, Path]:
    """Write ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub``; refuses to overwrite."""
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    if private_path.exists():
        raise ConfigError(f"{private_path} already exists; remove it or choose another --name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: key type {type(key).__name__} is not Ed25519")
    return key


def sign_manifest(manifest: ModelManifest, private_key: Ed25519PrivateKey) -> ModelManifest:
    """The manifest with an Ed25519 signature over its canonical bytes."""
    unsigned = manifest.unsigned()
    value = base64.b64encode(private_key.sign(canonical_bytes(unsigned))).decode()
    return dataclasses.replace(unsigned, signature=Signature(key_id(private_key.public_key()), value))


def sign_model_dir(model_dir: Path, private_key: Ed25519PrivateKey, *, chunk_size: int = MAX_CHUNK_BYTES) -> ModelManifest:
    """Sign ``model_dir/manifest.json`` in place, with ``transfer`` (size and chunk list of
    ``model.onnx`` in ``chunk_size`` chunks) filled in so devices can check an announce against
    it. Raises :class:`ConfigError` if ``model.onnx`` does not match the manifest's sha256."""
    manifest = load_manifest(model_dir)
    try:
        data = (Path(model_dir) / "model.onnx").read_bytes()
    except OSError as exc:
        raise ConfigError(f"{model_dir}: cannot read model.onnx ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise ConfigError(f"{model_dir}: model.onnx does not match the manifest's sha256; refusing to sign")
    signed = sign_manifest(dataclasses.replace(manifest, transfer=transfer_of(data, chunk_size)), private_key)
    (Path(model_dir) / "manifest.json").write_bytes(encode_manifest(signed))
    return signed

"""Signing keys and manifest signatures on the cloud side (``edgewatch keys generate``).

The private key never leaves the machine that signs; devices get the ``.pub`` file.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.contract import ConfigError, ModelManifest, Signature, canonical_bytes, encode_manifest
from edge.detector import load_manifest
from edge.signing import key_id  # re-exported for the CLI


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


def sign_model_dir(model_dir: Path, private_key: Ed25519PrivateKey) -> ModelManifest:
    """Sign ``model_dir/manifest.json`` in place (the file hash inside it must already be right)."""
    signed = sign_manifest(load_manifest(model_dir), private_key)
    (Path(model_dir) / "manifest.json").write_bytes(encode_manifest(signed))
    return signed

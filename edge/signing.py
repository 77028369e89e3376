"""Verifying signed model manifests on the device (Ed25519, the ``cryptography`` package).

A manifest's signature covers :func:`edge.contract.canonical_bytes`, which includes the
sha256 of ``model.onnx``; so checking the signature here and the file hash at load time
binds both files to a key the device trusts. Devices hold public keys only: one PEM file
per key in a folder; the key id is derived from the key itself, never from a file name.
:func:`verify_announce` also binds an MQTT announce's size and chunk list to the signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.contract import ManifestError, ModelManifest, canonical_bytes
from edge.contract.update import ModelAnnounce, chunk_list_sha256

TrustedKeys = Mapping[str, Ed25519PublicKey]


def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read one PEM public key; raises :class:`ManifestError` naming the file if it is not Ed25519."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestError(f"{path}: key type {type(key).__name__} is not Ed25519")
    return key


def load_trusted_keys(folder: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``*.pub`` / ``*.pem`` public key in ``folder``, by key id."""
    keys = {}
    for path in sorted(Path(folder).glob("*")):
        if path.suffix in (".pub", ".pem") and path.is_file():
            key = load_public_key(path)
            keys[key_id(key)] = key
    return keys


def verify_manifest(manifest: ModelManifest, trusted: TrustedKeys) -> None:
    """Raise :class:`ManifestError` unless the manifest is signed by a trusted key and the
    signature covers exactly these contents."""
    sig = manifest.signature
    if sig is None:
        raise ManifestError(f"model {manifest.name} {manifest.version} is not signed")
    key = trusted.get(sig.key_id)
    if key is None:
        raise ManifestError(f"model {manifest.name} {manifest.version} is signed by unknown key {sig.key_id}")
    try:
        key.verify(base64.b64decode(sig.value, validate=True), canonical_bytes(manifest))
    except (InvalidSignature, binascii.Error, ValueError):
        raise ManifestError(f"model {manifest.name} {manifest.version}: signature by key {sig.key_id} "
                            "does not match the manifest (tampered or re-signed)") from None


def verify_announce(announce: ModelAnnounce, trusted: TrustedKeys) -> None:
    """Raise :class:`ManifestError` unless the announce's manifest passes :func:`verify_manifest`
    and the announce's size, chunk size and chunk hashes are the ones its signed ``transfer``
    holds. A manifest without ``transfer`` (signed by an edgewatch before it signed transfers)
    is refused: its announce could declare any size. Reads nothing from disk; cheap enough for
    paho's network thread."""
    m = announce.manifest
    verify_manifest(m, trusted)
    t = m.transfer
    what = f"model {m.name} {m.version}"
    if t is None:
        raise ManifestError(f"{what}: the signed manifest does not cover the artifact's size and chunk list "
                            "(signed by an older edgewatch); sign it again (edgewatch keys sign, or registry publish --key)")
    if announce.size != t.size:
        raise ManifestError(f"{what}: the announce's size {announce.size} differs from the signed size {t.size}")
    if announce.chunk_size != t.chunk_size:
        raise ManifestError(f"{what}: the announce's chunk_size {announce.chunk_size} differs from the signed {t.chunk_size}")
    if chunk_list_sha256(announce.chunk_sha256) != t.chunk_list_sha256:
        raise ManifestError(f"{what}: the announce's chunk list ({len(announce.chunk_sha256)} chunks) differs from "
                            "the signed chunk list")

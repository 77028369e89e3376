"""The model manifest: ``manifest.json`` beside ``model.onnx``, the only other file training
hands the edge.

The signature covers :func:`canonical_bytes` (the manifest without its ``signature`` field),
and the manifest carries the sha256 of ``model.onnx``; so one Ed25519 signature binds both
files. ``transfer`` (written when a model folder is signed) also binds how ``model.onnx``
travels to devices: its size and its chunks (:mod:`edge.contract.update`). Verification lives
with the code that loads models; this module only defines and validates the document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edge.contract import _fields as f
from edge.contract.errors import ContractError

MANIFEST_SCHEMA = 1
_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?$")


@dataclass(frozen=True)
class Channel:
    """One model input channel, in the order of the input tensor's last axis."""

    name: str
    unit: str = ""


@dataclass(frozen=True)
class Calibration:
    """How the threshold was chosen: a method name and its parameters."""

    method: str
    params: Mapping[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Signature:
    """Ed25519 signature over :func:`canonical_bytes`, base64; ``key_id`` names the public key."""

    key_id: str
    value: str


@dataclass(frozen=True)
class Transfer:
    """How ``model.onnx`` is sent to devices, under the signature: its size in bytes, the chunk
    size, and :func:`edge.contract.update.chunk_list_sha256` of its chunks. An announce must
    repeat these exactly, so its size and chunk list cannot be forged."""

    size: int
    chunk_size: int
    chunk_list_sha256: str


@dataclass(frozen=True)
class ModelManifest:
    name: str
    family: str
    version: str
    sha256: str
    channels: tuple[Channel, ...]
    window_length: int
    stride: int
    sample_period_s: float
    threshold: float
    calibration: Calibration
    opset: int
    min_onnxruntime: str
    training_data_fingerprint: str
    metrics: Mapping[str, float]
    created_at: str
    transfer: Transfer | None = None  # None: never signed, or signed before transfers were; refused over MQTT
    signature: Signature | None = None
    schema: int = MANIFEST_SCHEMA

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def unsigned(self) -> ModelManifest:
        return replace(self, signature=None)


def manifest_to_dict(manifest: ModelManifest) -> dict[str, Any]:
    data = asdict(manifest)
    data["channels"] = [asdict(c) for c in manifest.channels]
    data["calibration"] = {"method": manifest.calibration.method, "params": dict(manifest.calibration.params)}
    data["metrics"] = dict(manifest.metrics)
    for optional in ("transfer", "signature"):  # absent, not null: older signatures stay valid
        if data[optional] is None:
            del data[optional]
    return data


def encode_manifest(manifest: ModelManifest) -> bytes:
    """The manifest as compact, key-sorted JSON (what ``manifest.json`` holds)."""
    return f.dump_json(manifest_to_dict(manifest))


def canonical_bytes(manifest: ModelManifest) -> bytes:
    """The bytes a signature covers: the manifest without its signature, canonical JSON."""
    return f.dump_json(manifest_to_dict(manifest.unsigned()))


def decode_manifest(payload: bytes | str) -> ModelManifest:
    """Parse and validate a manifest; raises :class:`ContractError` naming the field."""
    data = f.parse_json(payload)
    f.schema(data, MANIFEST_SCHEMA)
    f.no_extra(data, _FIELDS, "")
    channels = _channels(f.req(data, "channels", ""))
    window = f.integer(f.req(data, "window_length", ""), "window_length", min_value=1)
    stride = f.integer(f.req(data, "stride", ""), "stride", min_value=1)
    if stride > window:
        raise ContractError("stride", stride, f"must not exceed window_length {window}")
    period = f.number(f.req(data, "sample_period_s", ""), "sample_period_s")
    if period <= 0:
        raise ContractError("sample_period_s", period, "must be > 0")
    ort = f.req(data, "min_onnxruntime", "")
    if not isinstance(ort, str) or not _VERSION_RE.match(ort):
        raise ContractError("min_onnxruntime", ort, "must be a version like 1.17 or 1.17.0")
    metrics = f.req(data, "metrics", "")
    return ModelManifest(
        name=f.name(f.req(data, "name", ""), "name"),
        family=f.name(f.req(data, "family", ""), "family"),
        version=f.name(f.req(data, "version", ""), "version"),
        sha256=f.sha256(f.req(data, "sha256", ""), "sha256"),
        channels=channels,
        window_length=window,
        stride=stride,
        sample_period_s=period,
        threshold=f.number(f.req(data, "threshold", ""), "threshold"),
        calibration=_calibration(f.req(data, "calibration", "")),
        opset=f.integer(f.req(data, "opset", ""), "opset", min_value=7),
        min_onnxruntime=ort,
        training_data_fingerprint=f.text(f.req(data, "training_data_fingerprint", ""), "training_data_fingerprint"),
        metrics=f.number_map(metrics, "metrics", allow_empty=True),
        created_at=f.text(f.req(data, "created_at", ""), "created_at", max_len=64),
        transfer=_transfer(data.get("transfer")),
        signature=_signature(data.get("signature")),
    )


def _channels(value: Any) -> tuple[Channel, ...]:
    if not isinstance(value, list) or not value:
        raise ContractError("channels", value, "must be a non-empty list of {name, unit}")
    out: list[Channel] = []
    for i, item in enumerate(value):
        path = f"channels[{i}]"
        if not isinstance(item, Mapping):
            raise ContractError(path, item, "must be an object with name and unit")
        f.no_extra(item, {"name", "unit"}, path)
        out.append(Channel(f.name(f.req(item, "name", path), f"{path}.name"),
                           f.text(item.get("unit", ""), f"{path}.unit", max_len=32, empty=True)))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ContractError("channels", names, "channel names must be unique")
    return tuple(out)


def _calibration(value: Any) -> Calibration:
    if not isinstance(value, Mapping):
        raise ContractError("calibration", value, "must be an object with method and params")
    f.no_extra(value, {"method", "params"}, "calibration")
    params = value.get("params", {})
    if not isinstance(params, Mapping):
        raise ContractError("calibration.params", params, "must be an object")
    checked: dict[str, float | str] = {}
    for k, v in params.items():
        key = f.name(k, f"calibration.params.{k}")
        checked[key] = v if isinstance(v, str) else f.number(v, f"calibration.params.{k}")
    return Calibration(method=f.name(f.req(value, "method", "calibration"), "calibration.method"), params=checked)


def _transfer(value: Any) -> Transfer | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ContractError("transfer", value, "must be an object with size, chunk_size and chunk_list_sha256")
    f.no_extra(value, {"size", "chunk_size", "chunk_list_sha256"}, "transfer")
    return Transfer(size=f.integer(f.req(value, "size", "transfer"), "transfer.size", min_value=1),
                    chunk_size=f.integer(f.req(value, "chunk_size", "transfer"), "transfer.chunk_size", min_value=1),
                    chunk_list_sha256=f.sha256(f.req(value, "chunk_list_sha256", "transfer"), "transfer.chunk_list_sha256"))


def _signature(value: Any) -> Signature | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ContractError("signature", value, "must be an object with key_id and value")
    f.no_extra(value, {"key_id", "value"}, "signature")
    return Signature(key_id=f.name(f.req(value, "key_id", "signature"), "signature.key_id"),
                     value=f.text(f.req(value, "value", "signature"), "signature.value", max_len=200))


_FIELDS = {
    "schema", "name", "family", "version", "sha256", "channels", "window_length", "stride",
    "sample_period_s", "threshold", "calibration", "opset", "min_onnxruntime",
    "training_data_fingerprint", "metrics", "created_at", "transfer", "signature",
}

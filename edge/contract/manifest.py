"""The model manifest: ``manifest.json`` beside ``model.onnx``, the only other file training
hands the edge.

The signature covers :func:`canonical_bytes` (the manifest without its ``signature`` field),
and the manifest carries the sha256 of ``model.onnx``; so one Ed25519 signature binds both
files. ``transfer`` (written when a model folder is signed) also binds how ``model.onnx``
travels to devices: its size and its chunks (:mod:`edge.contract.update`). ``expected_alerts``
(written by the backtest at registration) is the signed prediction of the alert rate that the
agent's shadow trial checks the candidate against (:mod:`edge.shadow`). ``channel_ranges``
(written at export from the training data) bounds each channel for the agent's range check
(:mod:`edge.sensorhealth`). ``members`` (an ensemble's, written at export) gives the threshold and
calibration of each member model whose score the graph also outputs (``member_scores``): the agent
decides each member with its own adaptive threshold and fires on their majority. Verification lives
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
class Member:
    """One member model of an ensemble artifact: its own threshold and calibration record."""

    threshold: float
    calibration: Calibration


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
class ExpectedAlerts:
    """The backtest's prediction of how often this model alerts, under the signature.

    Quantiles (keys exactly ``p05``, ``p50``, ``p95``) are over the devices replayed from
    ``since`` to ``until`` (unix seconds). ``window_rate`` is the share of windows scored above
    the manifest's threshold (raw, before k-of-n): what the agent's shadow trial measures live.
    ``baseline_window_rate`` is production's median window rate on the same replay (None: no
    production version); the candidate's rate may be at most ``max_ratio`` times it."""

    since: float
    until: float
    devices: int
    device_days: float
    alerts_per_device_day: Mapping[str, float]
    window_rate: Mapping[str, float]
    baseline_window_rate: float | None
    max_ratio: float


QUANTILE_KEYS = ("p05", "p50", "p95")


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
    expected_alerts: ExpectedAlerts | None = None  # None: registered without a backtest; absent from the JSON
    transfer: Transfer | None = None  # None: never signed, or signed before transfers were; refused over MQTT
    channel_ranges: Mapping[str, tuple[float, float]] | None = None  # channel -> (min, max); None: absent from the JSON
    members: tuple[Member, ...] | None = None  # an ensemble's members (an odd number, at least 3); None: one model
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
    if manifest.expected_alerts is not None:
        data["expected_alerts"] = _expected_to_dict(manifest.expected_alerts)
    if manifest.channel_ranges is not None:
        data["channel_ranges"] = {c: [lo, hi] for c, (lo, hi) in manifest.channel_ranges.items()}
    if manifest.members is not None:
        data["members"] = [{"threshold": m.threshold,
                            "calibration": {"method": m.calibration.method, "params": dict(m.calibration.params)}}
                           for m in manifest.members]
    # absent, not null: older signatures stay valid
    for optional in ("expected_alerts", "transfer", "channel_ranges", "members", "signature"):
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
        expected_alerts=_expected_alerts(data.get("expected_alerts")),
        transfer=_transfer(data.get("transfer")),
        channel_ranges=_channel_ranges(data.get("channel_ranges"), channels),
        members=_members(data.get("members")),
        signature=_signature(data.get("signature")),
    )


def _channel_ranges(value: Any, channels: tuple[Channel, ...]) -> dict[str, tuple[float, float]] | None:
    """``{channel: [min, max]}`` over known channels (not necessarily all), finite, ``min < max``."""
    if value is None:
        return None
    path = "channel_ranges"
    if not isinstance(value, Mapping):
        raise ContractError(path, value, "must be an object of channel name to [min, max]", "wrong_type")
    known = {c.name for c in channels}
    out: dict[str, tuple[float, float]] = {}
    for name, pair in value.items():
        where = f"{path}.{name}"
        if name not in known:
            raise ContractError(where, name, f"must be one of the manifest's channels ({', '.join(sorted(known))})")
        if not isinstance(pair, list) or len(pair) != 2:
            raise ContractError(where, pair, "must be [min, max]", f.type_kind(pair, list))
        lo, hi = f.number(pair[0], f"{where}[0]"), f.number(pair[1], f"{where}[1]")
        if not lo < hi:
            raise ContractError(where, pair, "min must be below max")
        out[name] = (lo, hi)
    return out


def _members(value: Any) -> tuple[Member, ...] | None:
    """An odd number (at least 3) of ``{threshold, calibration}``, each threshold finite and >= 0."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < 3 or len(value) % 2 == 0:
        raise ContractError("members", value, "must be a list of an odd number (at least 3) of {threshold, calibration}",
                            f.type_kind(value, list))
    out: list[Member] = []
    for i, item in enumerate(value):
        path = f"members[{i}]"
        if not isinstance(item, Mapping):
            raise ContractError(path, item, "must be an object with threshold and calibration", "wrong_type")
        f.no_extra(item, {"threshold", "calibration"}, path)
        threshold = f.number(f.req(item, "threshold", path), f"{path}.threshold")
        if not threshold >= 0:
            raise ContractError(f"{path}.threshold", threshold, "must be >= 0")
        out.append(Member(threshold, _calibration(f.req(item, "calibration", path))))
    return tuple(out)


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


def _expected_to_dict(e: ExpectedAlerts) -> dict[str, Any]:
    return {"since": e.since, "until": e.until, "devices": e.devices, "device_days": e.device_days,
            "alerts_per_device_day": dict(e.alerts_per_device_day), "window_rate": dict(e.window_rate),
            "baseline_window_rate": e.baseline_window_rate, "max_ratio": e.max_ratio}


def _expected_alerts(value: Any) -> ExpectedAlerts | None:
    if value is None:
        return None
    path = "expected_alerts"
    if not isinstance(value, Mapping):
        raise ContractError(path, value, "must be an object with since, until, devices, device_days, "
                            "alerts_per_device_day, window_rate, baseline_window_rate and max_ratio", "wrong_type")
    f.no_extra(value, {"since", "until", "devices", "device_days", "alerts_per_device_day", "window_rate",
                       "baseline_window_rate", "max_ratio"}, path)
    since = f.number(f.req(value, "since", path), f"{path}.since", min_value=0)
    until = f.number(f.req(value, "until", path), f"{path}.until", min_value=0)
    if until <= since:
        raise ContractError(f"{path}.until", until, f"must be after since {since}")
    device_days = f.number(f.req(value, "device_days", path), f"{path}.device_days", min_value=0)
    if device_days <= 0:
        raise ContractError(f"{path}.device_days", device_days, "must be > 0")
    max_ratio = f.number(f.req(value, "max_ratio", path), f"{path}.max_ratio")
    if max_ratio <= 0:
        raise ContractError(f"{path}.max_ratio", max_ratio, "must be > 0")
    baseline = value.get("baseline_window_rate")
    return ExpectedAlerts(
        since=since, until=until,
        devices=f.integer(f.req(value, "devices", path), f"{path}.devices", min_value=1),
        device_days=device_days,
        alerts_per_device_day=_quantiles(f.req(value, "alerts_per_device_day", path), f"{path}.alerts_per_device_day", rates=False),
        window_rate=_quantiles(f.req(value, "window_rate", path), f"{path}.window_rate", rates=True),
        baseline_window_rate=None if baseline is None else _rate(baseline, f"{path}.baseline_window_rate"),
        max_ratio=max_ratio,
    )


def _quantiles(value: Any, field: str, *, rates: bool) -> dict[str, float]:
    """``{"p05", "p50", "p95"}`` to non-negative finite numbers (shares in [0, 1] if ``rates``), in order."""
    if not isinstance(value, Mapping) or set(value) != set(QUANTILE_KEYS):
        raise ContractError(field, value, f"must be an object with exactly the keys {', '.join(QUANTILE_KEYS)}",
                            f.type_kind(value, Mapping))
    check = _rate if rates else _count
    out = {k: check(value[k], f"{field}.{k}") for k in QUANTILE_KEYS}
    if not out["p05"] <= out["p50"] <= out["p95"]:
        raise ContractError(field, out, "quantiles must satisfy p05 <= p50 <= p95")
    return out


def _count(value: Any, field: str) -> float:
    return f.number(value, field, min_value=0)


def _rate(value: Any, field: str) -> float:
    out = f.number(value, field, min_value=0)
    if out > 1:
        raise ContractError(field, value, "must be a share of windows in [0, 1]")
    return out


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
    "training_data_fingerprint", "metrics", "created_at", "expected_alerts", "transfer", "channel_ranges", "members", "signature",
}

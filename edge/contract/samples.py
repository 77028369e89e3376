"""What an agent sends besides anomaly events: telemetry windows and dead letters.

``edgewatch.telemetry`` (key: device id) carries sampled raw windows for retraining: every Nth
window, and the windows around each anomaly. ``edgewatch.deadletter`` (key: device id when the
topic named one, else none) carries input the agent refused, with the reason and the payload,
truncated.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edge.contract import _fields as f
from edge.contract.errors import ContractError

TELEMETRY_SCHEMA = 1
DEADLETTER_SCHEMA = 1
SampleReason = Literal["sampled", "anomaly_context"]
SAMPLE_REASONS: tuple[SampleReason, ...] = ("sampled", "anomaly_context")
PayloadEncoding = Literal["text", "base64"]


@dataclass(frozen=True)
class TelemetryWindow:
    """One window of raw readings: ``values[i][j]`` is channel ``channels[j]`` at ``ts[i]``."""

    device_id: str
    agent_id: str
    reason: SampleReason
    channels: tuple[str, ...]
    ts: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]
    score: float
    threshold: float
    anomalous: bool
    model_sha256: str
    schema: int = TELEMETRY_SCHEMA


def encode_telemetry(window: TelemetryWindow) -> bytes:
    return f.dump_json_numbers({
        "schema": window.schema, "device_id": window.device_id, "agent_id": window.agent_id, "reason": window.reason,
        "channels": list(window.channels), "ts": list(window.ts), "values": [list(row) for row in window.values],
        "score": window.score, "threshold": window.threshold, "anomalous": window.anomalous,
        "model_sha256": window.model_sha256,
    })


def decode_telemetry(payload: bytes | str) -> TelemetryWindow:
    """Parse and validate a telemetry window; raises :class:`ContractError` naming the field."""
    data = f.parse_json(payload, max_bytes=16 << 20)
    f.schema(data, TELEMETRY_SCHEMA)
    f.no_extra(data, _TELEMETRY_FIELDS, "")
    reason = f.req(data, "reason", "")
    if reason not in SAMPLE_REASONS:
        raise ContractError("reason", reason, f"must be one of {', '.join(SAMPLE_REASONS)}")
    channels = f.req(data, "channels", "")
    if not isinstance(channels, list) or not channels:
        raise ContractError("channels", channels, "must be a non-empty list of channel names")
    names = tuple(f.name(c, f"channels[{i}]") for i, c in enumerate(channels))
    ts = _numbers(f.req(data, "ts", ""), "ts")
    rows = f.req(data, "values", "")
    if not isinstance(rows, list) or len(rows) != len(ts):
        raise ContractError("values", rows, f"must be a list of {len(ts)} rows, one per ts")
    values = tuple(_numbers(row, f"values[{i}]", length=len(names)) for i, row in enumerate(rows))
    anomalous = f.req(data, "anomalous", "")
    if not isinstance(anomalous, bool):
        raise ContractError("anomalous", anomalous, "must be true or false")
    return TelemetryWindow(
        device_id=f.name(f.req(data, "device_id", ""), "device_id"), agent_id=f.name(f.req(data, "agent_id", ""), "agent_id"),
        reason=reason, channels=names, ts=ts, values=values,
        score=f.number(f.req(data, "score", ""), "score"), threshold=f.number(f.req(data, "threshold", ""), "threshold"),
        anomalous=anomalous, model_sha256=f.sha256(f.req(data, "model_sha256", ""), "model_sha256"),
    )


def _numbers(value: Any, field: str, *, length: int | None = None) -> tuple[float, ...]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ContractError(field, value, "must be a list of numbers" + (f" of length {length}" if length is not None else ""))
    return tuple(f.number(v, f"{field}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class DeadLetter:
    """A payload the agent refused: why, from where, and its first bytes.

    ``reason`` is a short label from a bounded set (``not_json``, ``too_large``, ...);
    ``detail`` the validation message. ``payload`` holds at most the agent's configured number
    of bytes, as UTF-8 text when the bytes decode, else base64; ``payload_bytes`` is the
    original size.
    """

    agent_id: str
    source: str
    reason: str
    detail: str
    received_at: float
    payload: str
    payload_encoding: PayloadEncoding
    payload_bytes: int
    truncated: bool
    device_id: str | None = None
    schema: int = DEADLETTER_SCHEMA

    def payload_data(self) -> bytes:
        """The (possibly truncated) original bytes."""
        return base64.b64decode(self.payload) if self.payload_encoding == "base64" else self.payload.encode()


def make_deadletter(*, agent_id: str, source: str, reason: str, detail: str, received_at: float, payload: bytes,
                    max_bytes: int, device_id: str | None = None) -> DeadLetter:
    """Build a dead letter, keeping at most ``max_bytes`` of ``payload``."""
    kept = payload[:max_bytes]
    encoding: Literal["text", "base64"]
    try:
        text, encoding = kept.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return DeadLetter(agent_id=agent_id, source=source[:256], reason=reason, detail=detail[:512], received_at=received_at,
                      payload=text, payload_encoding=encoding,
                      payload_bytes=len(payload), truncated=len(kept) < len(payload), device_id=device_id)


def encode_deadletter(letter: DeadLetter) -> bytes:
    data: Mapping[str, Any] = {
        "schema": letter.schema, "agent_id": letter.agent_id, "source": letter.source, "reason": letter.reason,
        "detail": letter.detail, "received_at": letter.received_at, "payload": letter.payload,
        "payload_encoding": letter.payload_encoding, "payload_bytes": letter.payload_bytes, "truncated": letter.truncated,
        "device_id": letter.device_id,
    }
    return f.dump_json(data)


def decode_deadletter(payload: bytes | str) -> DeadLetter:
    """Parse and validate a dead letter; raises :class:`ContractError` naming the field."""
    data = f.parse_json(payload, max_bytes=16 << 20)
    f.schema(data, DEADLETTER_SCHEMA)
    f.no_extra(data, _DEADLETTER_FIELDS, "")
    encoding = f.req(data, "payload_encoding", "")
    if encoding not in ("text", "base64"):
        raise ContractError("payload_encoding", encoding, "must be text or base64")
    truncated = f.req(data, "truncated", "")
    if not isinstance(truncated, bool):
        raise ContractError("truncated", truncated, "must be true or false")
    device = data.get("device_id")
    return DeadLetter(
        agent_id=f.name(f.req(data, "agent_id", ""), "agent_id"), source=f.text(f.req(data, "source", ""), "source"),
        reason=f.name(f.req(data, "reason", ""), "reason"), detail=f.text(f.req(data, "detail", ""), "detail", max_len=512, empty=True),
        received_at=f.number(f.req(data, "received_at", ""), "received_at", min_value=0.0),
        payload=f.text(f.req(data, "payload", ""), "payload", max_len=16 << 20, empty=True), payload_encoding=encoding,
        payload_bytes=f.integer(f.req(data, "payload_bytes", ""), "payload_bytes"), truncated=truncated,
        device_id=None if device is None else f.name(device, "device_id"),
    )


def telemetry_from_window(*, device_id: str, agent_id: str, reason: SampleReason, channels: Sequence[str],
                          ts: Sequence[float], values: Sequence[Sequence[float]], score: float, threshold: float,
                          anomalous: bool, model_sha256: str) -> TelemetryWindow:
    """A :class:`TelemetryWindow` from plain sequences (numpy arrays' ``tolist()`` included)."""
    return TelemetryWindow(device_id=device_id, agent_id=agent_id, reason=reason, channels=tuple(channels),
                           ts=tuple(map(float, ts)), values=tuple(tuple(map(float, row)) for row in values),
                           score=float(score), threshold=float(threshold), anomalous=anomalous, model_sha256=model_sha256)


_TELEMETRY_FIELDS = {"schema", "device_id", "agent_id", "reason", "channels", "ts", "values", "score", "threshold",
                     "anomalous", "model_sha256"}
_DEADLETTER_FIELDS = {"schema", "agent_id", "source", "reason", "detail", "received_at", "payload", "payload_encoding",
                      "payload_bytes", "truncated", "device_id"}

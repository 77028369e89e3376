"""Anomaly events: what an agent produces to ``edgewatch.anomalies`` (key: device id).

The ``event_id`` is derived, not drawn: the same device, window end and model hash always give
the same id, so a redelivered or re-scored window de-duplicates downstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.contract import _fields as f
from edge.contract.errors import ContractError

EVENT_SCHEMA = 1


def make_event_id(device_id: str, window_end: float, model_sha256: str) -> str:
    """Deterministic event id: 32 hex digits of sha256 over device, window end and model hash."""
    key = f"{device_id}\x1f{float(window_end)!r}\x1f{model_sha256}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


@dataclass(frozen=True)
class AnomalyEvent:
    """One window judged anomalous by one model on one device."""

    device_id: str
    agent_id: str
    window_start: float
    window_end: float
    score: float
    threshold: float
    channel_scores: Mapping[str, float]
    model_name: str
    model_version: str
    model_sha256: str
    detected_at: float
    event_id: str = field(default="")
    schema: int = EVENT_SCHEMA

    def __post_init__(self) -> None:
        if not self.event_id:
            object.__setattr__(self, "event_id", make_event_id(self.device_id, self.window_end, self.model_sha256))


def encode_event(event: AnomalyEvent) -> bytes:
    """Serialise an event as compact JSON."""
    data = asdict(event)
    data["channel_scores"] = dict(event.channel_scores)
    return f.dump_json(data)


def decode_event(payload: bytes | str) -> AnomalyEvent:
    """Parse and validate an event; raises :class:`ContractError` naming the field."""
    data = f.parse_json(payload)
    return event_from_dict(data)


def event_from_dict(data: Mapping[str, Any]) -> AnomalyEvent:
    f.schema(data, EVENT_SCHEMA)
    f.no_extra(data, _FIELDS, "")
    device = f.name(f.req(data, "device_id", ""), "device_id")
    start = f.number(f.req(data, "window_start", ""), "window_start", min_value=0.0)
    end = f.number(f.req(data, "window_end", ""), "window_end", min_value=0.0)
    if end < start:
        raise ContractError("window_end", end, f"must not be before window_start {start}")
    sha = f.sha256(f.req(data, "model_sha256", ""), "model_sha256")
    event_id = f.req(data, "event_id", "")
    expected = make_event_id(device, end, sha)
    if event_id != expected:
        raise ContractError("event_id", event_id, "must equal the id derived from device_id, window_end and model_sha256")
    return AnomalyEvent(
        device_id=device,
        agent_id=f.name(f.req(data, "agent_id", ""), "agent_id"),
        window_start=start,
        window_end=end,
        score=f.number(f.req(data, "score", ""), "score"),
        threshold=f.number(f.req(data, "threshold", ""), "threshold"),
        channel_scores=f.number_map(f.req(data, "channel_scores", ""), "channel_scores"),
        model_name=f.name(f.req(data, "model_name", ""), "model_name"),
        model_version=f.name(f.req(data, "model_version", ""), "model_version"),
        model_sha256=sha,
        detected_at=f.number(f.req(data, "detected_at", ""), "detected_at", min_value=0.0),
        event_id=event_id,
    )


_FIELDS = {
    "schema", "event_id", "device_id", "agent_id", "window_start", "window_end", "score", "threshold",
    "channel_scores", "model_name", "model_version", "model_sha256", "detected_at",
}

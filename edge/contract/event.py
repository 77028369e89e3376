"""Anomaly events: what an agent produces to ``edgewatch.anomalies`` (key: device id).

The ``event_id`` is derived, not drawn: the same device, window end and model hash always give
the same id, so a redelivered or re-scored window de-duplicates downstream.

An event has a ``kind``: ``process`` (the model judged the window anomalous) or ``sensor_fault``
(a sensor health check of :mod:`edge.sensorhealth` failed; ``fault`` says which check and which
channels). Both fields are absent from the JSON at their defaults, so a process event's bytes
are those of an event from before kinds existed, and such an event decodes as ``process``. An
agent sends at most one event per device and window, so the derived id stays unique.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edge.contract import _fields as f
from edge.contract.errors import ContractError

EVENT_SCHEMA = 1
EventKind = Literal["process", "sensor_fault"]
EVENT_KINDS: tuple[EventKind, ...] = ("process", "sensor_fault")
FaultCheck = Literal["stuck", "range", "dropout", "clock", "rate"]
FAULT_CHECKS: tuple[FaultCheck, ...] = ("stuck", "range", "dropout", "clock", "rate")
MAX_FAULT_DETAIL = 256


def make_event_id(device_id: str, window_end: float, model_sha256: str) -> str:
    """Deterministic event id: 32 hex digits of sha256 over device, window end and model hash."""
    key = f"{device_id}\x1f{float(window_end)!r}\x1f{model_sha256}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


@dataclass(frozen=True)
class SensorFault:
    """Which sensor health check failed on which channels (in the manifest's order), and the
    measured value in words (``detail``, at most 256 characters, for people)."""

    check: FaultCheck
    channels: tuple[str, ...]
    detail: str


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
    kind: EventKind = "process"
    fault: SensorFault | None = None  # set exactly when kind is sensor_fault

    def __post_init__(self) -> None:
        if (self.kind == "sensor_fault") != (self.fault is not None):
            raise ContractError("fault", self.fault, f"must be set exactly when kind is sensor_fault (kind {self.kind!r})")
        if not self.event_id:
            object.__setattr__(self, "event_id", make_event_id(self.device_id, self.window_end, self.model_sha256))


def encode_event(event: AnomalyEvent) -> bytes:
    """Serialise an event as compact JSON."""
    data = asdict(event)
    data["channel_scores"] = dict(event.channel_scores)
    if event.kind == "process":  # absent at the default: a process event's bytes are as before kinds
        del data["kind"]
    if event.fault is None:
        del data["fault"]
    else:
        data["fault"]["channels"] = list(event.fault.channels)
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
    channel_scores = f.number_map(f.req(data, "channel_scores", ""), "channel_scores")
    kind = _kind(data.get("kind", "process"))
    fault = None if data.get("fault") is None else _fault(data["fault"], channel_scores)
    if (kind == "sensor_fault") != (fault is not None):
        raise ContractError("fault", data.get("fault"), f"must be set exactly when kind is sensor_fault (kind {kind!r})")
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
        channel_scores=channel_scores,
        model_name=f.name(f.req(data, "model_name", ""), "model_name"),
        model_version=f.name(f.req(data, "model_version", ""), "model_version"),
        model_sha256=sha,
        detected_at=f.number(f.req(data, "detected_at", ""), "detected_at", min_value=0.0),
        event_id=event_id,
        kind=kind,
        fault=fault,
    )


def _kind(value: Any) -> EventKind:
    for kind in EVENT_KINDS:
        if value == kind:
            return kind
    raise ContractError("kind", value, f"must be one of {', '.join(EVENT_KINDS)}", f.type_kind(value, str))


def _fault(value: Any, channels: Mapping[str, float]) -> SensorFault:
    """Decode ``fault``; its channels must be among the event's ``channel_scores``."""
    if not isinstance(value, Mapping):
        raise ContractError("fault", value, "must be an object with check, channels and detail", "wrong_type")
    f.no_extra(value, {"check", "channels", "detail"}, "fault")
    check = f.req(value, "check", "fault")
    if check not in FAULT_CHECKS:
        raise ContractError("fault.check", check, f"must be one of {', '.join(FAULT_CHECKS)}", f.type_kind(check, str))
    names = f.req(value, "channels", "fault")
    if not isinstance(names, list) or not names:
        raise ContractError("fault.channels", names, "must be a non-empty list of channel names", f.type_kind(names, list))
    out = tuple(f.name(c, f"fault.channels[{i}]") for i, c in enumerate(names))
    for i, c in enumerate(out):
        if c not in channels:
            raise ContractError(f"fault.channels[{i}]", c, "must be a channel of channel_scores")
    if len(set(out)) != len(out):
        raise ContractError("fault.channels", names, "channel names must be unique")
    return SensorFault(check=check, channels=out,
                       detail=f.text(f.req(value, "detail", "fault"), "fault.detail", max_len=MAX_FAULT_DETAIL, empty=True))


_FIELDS = {
    "schema", "event_id", "device_id", "agent_id", "window_start", "window_end", "score", "threshold",
    "channel_scores", "model_name", "model_version", "model_sha256", "detected_at", "kind", "fault",
}

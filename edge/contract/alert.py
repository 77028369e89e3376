"""Alerts: what the cloud processor produces to ``edgewatch.alerts`` (key: incident id).

One message per incident opened or closed (a device incident, or a fleet incident over the
devices of one site), per drift signal, and per rollout the processor paused (``rollout_paused``:
site is the update group, device_ids the wave's agents, detail the reason). ``alert_id`` is derived from the incident id and the
action, so a re-published alert (at-least-once delivery of the alert outbox) de-duplicates at
the consumer. Times are event time (seconds since the Unix epoch), not arrival time.

Payload (UTF-8 JSON object, schema 1)::

    {"schema": 1, "alert_id": "...", "kind": "incident", "action": "open",
     "incident_id": "...", "site": "plant-a", "device_ids": ["pump-01"],
     "opened_at": 1764230400.0, "closed_at": null, "event_count": 3, "max_score": 4.2,
     "model_name": "pump", "model_version": "1.0", "statistic": "", "observed": null,
     "expected": null, "detail": "3 anomalies in 60 s"}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from edge.contract import _fields as f
from edge.contract.errors import ContractError

ALERT_SCHEMA = 1
AlertKind = Literal["incident", "fleet_incident", "drift", "rollout_paused", "sensor_fault", "peer_outlier", "device_silent"]
AlertAction = Literal["open", "close"]
ALERT_KINDS: tuple[AlertKind, ...] = ("incident", "fleet_incident", "drift", "rollout_paused", "sensor_fault", "peer_outlier",
                                      "device_silent")
INCIDENT_KINDS: tuple[AlertKind, ...] = tuple(k for k in ALERT_KINDS if k != "rollout_paused")  # what an incident can be
MAX_LABELS = 32
ALERT_ACTIONS: tuple[AlertAction, ...] = ("open", "close")
MAX_DEVICES = 10_000
_HEX32 = frozenset("0123456789abcdef")


def make_incident_id(kind: str, subject: str, opened_at: float) -> str:
    """Deterministic incident id: 32 hex digits of sha256 over kind, subject (device or site) and open time."""
    key = f"{kind}\x1f{subject}\x1f{float(opened_at)!r}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


def make_alert_id(incident_id: str, action: str) -> str:
    """Deterministic alert id: 32 hex digits of sha256 over the incident id and the action."""
    return hashlib.sha256(f"{incident_id}\x1f{action}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Alert:
    """One incident opened or closed, or one drift signal; ``closed_at`` is set on close only."""

    kind: AlertKind
    action: AlertAction
    incident_id: str
    site: str
    device_ids: tuple[str, ...]
    opened_at: float
    closed_at: float | None = None
    event_count: int = 0
    max_score: float = 0.0
    model_name: str = ""
    model_version: str = ""
    statistic: str = ""
    observed: float | None = None
    expected: float | None = None
    detail: str = ""
    alert_id: str = field(default="")
    labels: Mapping[str, str] = field(default_factory=dict)  # from the processor's [alerts] routes; omitted when empty
    schema: int = ALERT_SCHEMA

    def __post_init__(self) -> None:
        if not self.alert_id:
            object.__setattr__(self, "alert_id", make_alert_id(self.incident_id, self.action))


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    return {
        "schema": alert.schema, "alert_id": alert.alert_id, "kind": alert.kind, "action": alert.action,
        "incident_id": alert.incident_id, "site": alert.site, "device_ids": list(alert.device_ids),
        "opened_at": alert.opened_at, "closed_at": alert.closed_at, "event_count": alert.event_count,
        "max_score": alert.max_score, "model_name": alert.model_name, "model_version": alert.model_version,
        "statistic": alert.statistic, "observed": alert.observed, "expected": alert.expected, "detail": alert.detail,
        **({"labels": dict(alert.labels)} if alert.labels else {}),
    }


def encode_alert(alert: Alert) -> bytes:
    """Serialise an alert as compact, key-sorted JSON."""
    return f.dump_json(alert_to_dict(alert))


def decode_alert(payload: bytes | str) -> Alert:
    """Parse and validate an alert; raises :class:`ContractError` naming the field."""
    return alert_from_dict(f.parse_json(payload))


def alert_from_dict(data: Mapping[str, Any]) -> Alert:
    """Validate a parsed alert document; raises :class:`ContractError` naming the field."""
    f.schema(data, ALERT_SCHEMA)
    f.no_extra(data, _FIELDS, "")
    kind = _choice(f.req(data, "kind", ""), "kind", ALERT_KINDS)
    action = _choice(f.req(data, "action", ""), "action", ALERT_ACTIONS)
    incident_id = _hex32(f.req(data, "incident_id", ""), "incident_id")
    alert_id = _hex32(f.req(data, "alert_id", ""), "alert_id")
    if alert_id != make_alert_id(incident_id, action):
        raise ContractError("alert_id", alert_id, "must equal the id derived from incident_id and action")
    opened = f.number(f.req(data, "opened_at", ""), "opened_at", min_value=0.0)
    closed = _optional_number(data.get("closed_at"), "closed_at")
    if action == "close" and closed is None:
        raise ContractError("closed_at", None, "is required when action is close")
    if closed is not None and closed < opened:
        raise ContractError("closed_at", closed, f"must not be before opened_at {opened}")
    site = f.req(data, "site", "")
    return Alert(
        kind=kind, action=action, incident_id=incident_id,
        site="" if site == "" else f.name(site, "site"),
        device_ids=_devices(f.req(data, "device_ids", ""), "device_ids"),
        opened_at=opened, closed_at=closed,
        event_count=f.integer(data.get("event_count", 0), "event_count"),
        max_score=f.number(data.get("max_score", 0.0), "max_score"),
        model_name=_optional_name(data.get("model_name", ""), "model_name"),
        model_version=_optional_name(data.get("model_version", ""), "model_version"),
        statistic=f.text(data.get("statistic", ""), "statistic", max_len=64, empty=True),
        observed=_optional_number(data.get("observed"), "observed"),
        expected=_optional_number(data.get("expected"), "expected"),
        detail=f.text(data.get("detail", ""), "detail", max_len=1024, empty=True),
        alert_id=alert_id,
        labels=_labels(data.get("labels", {}), "labels"),
    )


def _labels(value: Any, field_name: str) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise ContractError(field_name, value, f"must be an object of at most {MAX_LABELS} name -> text labels")
    return {f.name(k, f"{field_name}.key"): f.text(v, f"{field_name}.{k}", max_len=256, empty=True) for k, v in value.items()}


def _choice(value: Any, field_name: str, allowed: Sequence[str]) -> Any:
    if not isinstance(value, str) or value not in allowed:
        raise ContractError(field_name, value, f"must be one of {', '.join(allowed)}")
    return cast(Any, value)


def _hex32(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or len(value) != 32 or not set(value) <= _HEX32:
        raise ContractError(field_name, value, "must be 32 lowercase hex digits")
    return value


def _optional_number(value: Any, field_name: str) -> float | None:
    return None if value is None else f.number(value, field_name)


def _optional_name(value: Any, field_name: str) -> str:
    return "" if value == "" else f.name(value, field_name)


def _devices(value: Any, field_name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_DEVICES:
        raise ContractError(field_name, value, f"must be a non-empty list of at most {MAX_DEVICES} device ids")
    out = tuple(f.name(v, f"{field_name}[{i}]") for i, v in enumerate(value))
    if len(set(out)) != len(out):
        raise ContractError(field_name, value, "device ids must be unique")
    return out


_FIELDS = {
    "schema", "alert_id", "kind", "action", "incident_id", "site", "device_ids", "opened_at", "closed_at",
    "event_count", "max_score", "model_name", "model_version", "statistic", "observed", "expected", "detail", "labels",
}

"""Sensor readings on MQTT: the topic layout and the payload, one reading or a batch.

Topic: ``<prefix>/<device_id>/readings`` (default prefix ``edgewatch``), so the agent
subscribes to ``edgewatch/+/readings`` and takes the device id from the topic.

Payload (UTF-8 JSON object, schema 1), either one reading::

    {"schema": 1, "device_id": "pump-01", "ts": 1764230400.0,
     "values": {"vibration": 0.12, "pressure": 4.1}}

or a batch for one device::

    {"schema": 1, "device_id": "pump-01",
     "readings": [{"ts": 1764230400.0, "values": {...}}, ...]}

``ts`` is event time in seconds since the Unix epoch. ``device_id`` may be left out of the
payload when the topic names the device; if both are given they must agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.contract import _fields as f
from edge.contract.errors import ContractError

READING_SCHEMA = 1
MAX_BATCH = 10_000
DEFAULT_TOPIC_PREFIX = "edgewatch"


@dataclass(frozen=True)
class Reading:
    """One timestamped set of channel values from one device."""

    device_id: str
    ts: float
    values: Mapping[str, float]


def readings_topic(device_id: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The MQTT topic a device publishes its readings on."""
    return f"{prefix}/{f.name(device_id, 'device_id')}/readings"


def readings_subscription(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The MQTT filter that matches every device's readings topic."""
    return f"{prefix}/+/readings"


def device_from_topic(topic: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The device id in a readings topic; raises :class:`ContractError` for any other topic."""
    parts = topic.split("/")
    head = prefix.split("/")
    if len(parts) != len(head) + 2 or parts[: len(head)] != head or parts[-1] != "readings":
        raise ContractError("topic", topic, f"must look like {prefix}/<device_id>/readings")
    return f.name(parts[-2], "topic.device_id")


def encode_readings(readings: Sequence[Reading]) -> bytes:
    """Encode one reading, or a batch of readings of one device, as a payload."""
    if not readings:
        raise ContractError("readings", [], "must hold at least one reading")
    device = readings[0].device_id
    for i, r in enumerate(readings):
        if r.device_id != device:
            raise ContractError(f"readings[{i}].device_id", r.device_id, f"a batch is for one device ({device})")
    if len(readings) == 1:
        r = readings[0]
        return f.dump_json({"schema": READING_SCHEMA, "device_id": device, "ts": r.ts, "values": dict(r.values)})
    body = [{"ts": r.ts, "values": dict(r.values)} for r in readings]
    return f.dump_json({"schema": READING_SCHEMA, "device_id": device, "readings": body})


def decode_readings(
    payload: bytes | str, *, topic_device: str | None = None, max_bytes: int = f.MAX_PAYLOAD_BYTES
) -> list[Reading]:
    """Decode and validate a payload into readings.

    ``topic_device`` is the device id taken from the topic, if any. Raises
    :class:`ContractError` naming the first offending field; never anything else.
    """
    data = f.parse_json(payload, max_bytes=max_bytes)
    f.schema(data, READING_SCHEMA)
    device = _device(data.get("device_id"), topic_device)
    if "readings" in data:
        f.no_extra(data, {"schema", "device_id", "readings"}, "")
        items = data["readings"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise ContractError("readings", items, f"must be a list of 1-{MAX_BATCH} readings", f.type_kind(items, list))
        return [_reading(device, item, f"readings[{i}]") for i, item in enumerate(items)]
    f.no_extra(data, {"schema", "device_id", "ts", "values"}, "")
    return [_reading(device, data, "")]


def _device(payload_device: Any, topic_device: str | None) -> str:
    if payload_device is None:
        if topic_device is None:
            raise ContractError("device_id", None, "is required when the topic does not name the device")
        return topic_device
    device = f.name(payload_device, "device_id")
    if topic_device is not None and device != topic_device:
        raise ContractError("device_id", device, f"must match the topic's device id {topic_device!r}")
    return device


def _reading(device: str, item: Any, path: str) -> Reading:
    if not isinstance(item, Mapping):
        raise ContractError(path, item, "must be a JSON object", "wrong_type")
    if path:
        f.no_extra(item, {"ts", "values"}, path)
    prefix = f"{path}." if path else ""
    ts = f.number(f.req(item, "ts", path), f"{prefix}ts", min_value=0.0)
    values = f.number_map(f.req(item, "values", path), f"{prefix}values")
    return Reading(device_id=device, ts=ts, values=values)

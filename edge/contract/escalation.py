"""Escalations: borderline windows an agent asks the cloud to score again (``edgewatch.escalations``, key: device id).

An agent sends a window whose score falls in a band around its threshold (``[escalation]`` in the
agent's config). ``event_id`` is the anomaly event of the same window when the agent fired one,
else empty. The processor's escalation thread re-scores the raw window with a heavier model and
stores a verdict with it (and with the event). A payload is capped at ``MAX_ESCALATION_BYTES``
(the processor may set a lower cap): a window of 32 readings of 8 channels is about 5 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.contract import _fields as f
from edge.contract.errors import ContractError
from edge.contract.event import make_event_id
from edge.contract.samples import _numbers

ESCALATION_SCHEMA = 1
MAX_ESCALATION_BYTES = 1 << 20


@dataclass(frozen=True)
class Escalation:
    """One window of raw readings (``values[i][j]`` is channel ``channels[j]`` at ``ts[i]``) with the edge's verdict."""

    device_id: str
    agent_id: str
    model_name: str
    model_version: str
    model_sha256: str
    window_start: float
    window_end: float
    channels: tuple[str, ...]
    ts: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]
    score: float
    threshold: float
    event_id: str = ""
    schema: int = ESCALATION_SCHEMA

    @property
    def escalation_id(self) -> str:
        """Deterministic: device, window end and model hash (equal to ``event_id`` when the window fired)."""
        return make_event_id(self.device_id, self.window_end, self.model_sha256)


def encode_escalation(e: Escalation) -> bytes:
    return f.dump_json_numbers({
        "schema": e.schema, "device_id": e.device_id, "agent_id": e.agent_id, "model_name": e.model_name,
        "model_version": e.model_version, "model_sha256": e.model_sha256, "window_start": e.window_start,
        "window_end": e.window_end, "channels": list(e.channels), "ts": list(e.ts), "values": [list(r) for r in e.values],
        "score": e.score, "threshold": e.threshold, "event_id": e.event_id,
    })


def decode_escalation(payload: bytes | str, *, max_bytes: int = MAX_ESCALATION_BYTES) -> Escalation:
    """Parse and validate an escalation; raises :class:`ContractError` naming the field (``too_large`` over ``max_bytes``)."""
    data = f.parse_json(payload, max_bytes=max_bytes)
    f.schema(data, ESCALATION_SCHEMA)
    f.no_extra(data, _FIELDS, "")
    channels = f.req(data, "channels", "")
    if not isinstance(channels, list) or not channels:
        raise ContractError("channels", channels, "must be a non-empty list of channel names")
    names = tuple(f.name(c, f"channels[{i}]") for i, c in enumerate(channels))
    ts = _numbers(f.req(data, "ts", ""), "ts")
    if not ts:
        raise ContractError("ts", [], "must hold at least one time")
    rows = f.req(data, "values", "")
    if not isinstance(rows, list) or len(rows) != len(ts):
        raise ContractError("values", rows, f"must be a list of {len(ts)} rows, one per ts")
    values = tuple(_numbers(row, f"values[{i}]", length=len(names)) for i, row in enumerate(rows))
    device, start, end, sha = f.window_of(data)
    event_id = f.req(data, "event_id", "")
    if event_id not in ("", make_event_id(device, end, sha)):
        raise ContractError("event_id", event_id, "must be empty or the event id derived from device_id, window_end and model_sha256")
    return Escalation(
        device_id=device, agent_id=f.name(f.req(data, "agent_id", ""), "agent_id"),
        model_name=f.name(f.req(data, "model_name", ""), "model_name"),
        model_version=f.name(f.req(data, "model_version", ""), "model_version"), model_sha256=sha,
        window_start=start, window_end=end, channels=names, ts=ts, values=values,
        score=f.number(f.req(data, "score", ""), "score"), threshold=f.number(f.req(data, "threshold", ""), "threshold"),
        event_id=event_id,
    )


_FIELDS = {"schema", "device_id", "agent_id", "model_name", "model_version", "model_sha256", "window_start", "window_end",
           "channels", "ts", "values", "score", "threshold", "event_id"}

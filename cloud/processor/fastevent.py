"""A fast path for decoding anomaly events, checked against the contract.

:func:`edge.contract.decode_event` validates every field generically (a regular expression per
name, a helper call per number, a dataclass per event) and costs about three ``json.loads`` per
event, which was most of the processor's time per event. :class:`FastEventDecoder` parses with
orjson, checks the same rules with type tests and a cache of names (device, agent, model,
channel) and model hashes it has already checked, and gives the fields the processor uses as
:class:`EventFields`. It accepts only payloads the contract accepts, with the contract's values;
for anything else it returns ``None`` and the caller asks the contract, which names the problem
(so a dead letter carries the contract's reason). A property test keeps the two in agreement.
Not thread-safe (one per consumer thread); pure apart from its caches.
"""

from __future__ import annotations

import math
import re
from hashlib import sha256
from typing import Any, NamedTuple

import orjson

from edge.contract import AnomalyEvent
from edge.contract._fields import MAX_PAYLOAD_BYTES, NAME_RE, SHA256_RE
from edge.contract.event import _FIELDS, EVENT_SCHEMA

MAX_CACHED_NAMES = 100_000
N_FIELDS = len(_FIELDS - {"kind", "fault"})  # a process anomaly's keys: an event with kind or fault goes to the contract

class EventFields(NamedTuple):
    """An anomaly event's fields as the processor uses them (every :class:`AnomalyEvent` field but the
    channel scores; numbers as floats)."""

    event_id: str
    device_id: str
    agent_id: str
    window_start: float
    window_end: float
    score: float
    threshold: float
    model_name: str
    model_version: str
    model_sha256: str
    detected_at: float
    kind: str = "process"  # "process" or "sensor_fault" (the contract's AnomalyEvent.kind)
    fault_check: str = ""  # a sensor fault's check (stuck, range, dropout, clock, rate)
    fault_channels: tuple[str, ...] = ()


def event_fields(e: AnomalyEvent) -> EventFields:
    """The :class:`EventFields` of an event the contract decoded."""
    fault = getattr(e, "fault", None)
    return EventFields(e.event_id, e.device_id, e.agent_id, e.window_start, e.window_end, e.score, e.threshold, e.model_name,
                       e.model_version, e.model_sha256, e.detected_at, getattr(e, "kind", "process"),
                       fault.check if fault is not None else "", tuple(fault.channels) if fault is not None else ())


class FastEventDecoder:
    """``fields(payload)`` / ``decode(payload)``: the contract's event, or ``None`` meaning "ask the contract"."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._shas: set[str] = set()

    def decode(self, payload: bytes) -> AnomalyEvent | None:
        """The event as :func:`edge.contract.decode_event` gives it, or ``None``."""
        found = self._check(payload)
        if found is None:
            return None
        f, d = found
        return AnomalyEvent(
            device_id=f.device_id, agent_id=f.agent_id, window_start=f.window_start, window_end=f.window_end, score=f.score,
            threshold=f.threshold, channel_scores={k: float(v) for k, v in d["channel_scores"].items()},
            model_name=f.model_name, model_version=f.model_version, model_sha256=f.model_sha256, detected_at=f.detected_at,
            event_id=f.event_id,
        )

    def fields(self, payload: bytes) -> EventFields | None:
        """The event's :class:`EventFields`, or ``None``; the per-event path of the processor."""
        found = self._check(payload)
        return None if found is None else found[0]

    def _check(self, payload: bytes) -> tuple[EventFields, dict[str, Any]] | None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        try:
            d = orjson.loads(payload)
            # 13 keys and every one of the 13 fields looked up below (KeyError otherwise): exactly the contract's keys
            if type(d) is not dict or len(d) != N_FIELDS:
                return None
            schema = d["schema"]
            if type(schema) is not int or schema != EVENT_SCHEMA:
                return None
            names = self._names
            device, agent, model, version = d["device_id"], d["agent_id"], d["model_name"], d["model_version"]
            for name in (device, agent, model, version):
                if name not in names:  # unhashable values raise TypeError: not a name
                    _remember(names, NAME_RE, name)
            sha = d["model_sha256"]
            if sha not in self._shas:
                _remember(self._shas, SHA256_RE, sha)
            start, end, score, threshold, detected = (d["window_start"], d["window_end"], d["score"], d["threshold"],
                                                      d["detected_at"])
            # orjson gives int or float for numbers (bool is its own type); ints become floats like in the contract
            if type(start) is not float:
                start = _int(start)
            if type(end) is not float:
                end = _int(end)
            if type(score) is not float:
                score = _int(score)
            if type(threshold) is not float:
                threshold = _int(threshold)
            if type(detected) is not float:
                detected = _int(detected)
            scores = d["channel_scores"]
            if type(scores) is not dict or not scores:
                return None
            total = start + end + score + threshold + detected
            for k, v in scores.items():
                if k not in names:
                    _remember(names, NAME_RE, k)
                if type(v) is not float and type(v) is not int:
                    return None
                total += v
            # one finite sum for all numbers: finite unless an inf or nan is among them, or large ones overflowed
            if not math.isfinite(total) and not all(map(math.isfinite, (start, end, score, threshold, detected, *scores.values()))):
                return None
            if start < 0.0 or end < start or detected < 0.0:
                return None
            event_id = d["event_id"]
            if event_id != sha256(f"{device}\x1f{end!r}\x1f{sha}".encode()).hexdigest()[:32]:  # edge.contract.make_event_id
                return None
        except (_Reject, orjson.JSONDecodeError, TypeError, KeyError, OverflowError, ValueError):
            return None
        return EventFields(event_id, device, agent, start, end, score, threshold, model, version, sha, detected), d

class _Reject(Exception):
    pass


def _remember(cache: set[str], pattern: re.Pattern[str], value: Any) -> None:
    """Check ``value`` against ``pattern`` (``_Reject`` if it fails) and cache it; a full cache starts over."""
    if type(value) is not str or not pattern.match(value):
        raise _Reject(pattern.pattern)
    if len(cache) >= MAX_CACHED_NAMES:
        cache.clear()
    cache.add(value)


def _int(value: Any) -> float:
    if type(value) is not int:
        raise _Reject("number")
    return float(value)  # OverflowError past the double range: refused

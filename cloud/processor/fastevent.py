"""A fast path for decoding anomaly events, checked against the contract.

:func:`edge.contract.decode_event` validates every field generically (a regular expression per
name, a helper call per number) and costs about three ``json.loads`` per event, which is most
of the processor's time per event. :class:`FastEventDecoder` accepts only payloads the contract
accepts, returns the same :class:`AnomalyEvent`, and remembers names (device, agent, model,
channel) it has already checked; for anything else it returns ``None`` and the caller asks the
contract, which names the problem. A property test keeps the two in agreement. Not
thread-safe (one per consumer thread); pure apart from its name cache.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge.contract import AnomalyEvent, make_event_id
from edge.contract._fields import MAX_PAYLOAD_BYTES, NAME_RE, SHA256_RE
from edge.contract.event import _FIELDS, EVENT_SCHEMA

MAX_CACHED_NAMES = 100_000


class _Reject(Exception):
    pass


def _no_constants(name: str) -> None:
    raise _Reject(name)


_decoder = json.JSONDecoder(parse_constant=_no_constants)
_KEYS = frozenset(_FIELDS)


class FastEventDecoder:
    """``decode(payload)`` gives the contract's event, or ``None`` meaning "ask the contract"."""

    def __init__(self) -> None:
        self._names: set[str] = set()

    def decode(self, payload: bytes) -> AnomalyEvent | None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            return None
        try:
            d = _decoder.decode(payload.decode("utf-8"))
            if type(d) is not dict or d.keys() != _KEYS:
                return None
            schema = d["schema"]
            if type(schema) is not int or schema != EVENT_SCHEMA:
                return None
            device, sha, end, start = self._name(d["device_id"]), d["model_sha256"], _num(d["window_end"]), _num(d["window_start"])
            if start < 0.0 or end < start or type(sha) is not str or not SHA256_RE.match(sha):
                return None
            if d["event_id"] != make_event_id(device, end, sha):
                return None
            scores = d["channel_scores"]
            if type(scores) is not dict or not scores:
                return None
            detected = _num(d["detected_at"])
            if detected < 0.0:
                return None
            return AnomalyEvent(
                device_id=device, agent_id=self._name(d["agent_id"]), window_start=start, window_end=end,
                score=_num(d["score"]), threshold=_num(d["threshold"]),
                channel_scores={self._name(k): _num(v) for k, v in scores.items()},
                model_name=self._name(d["model_name"]), model_version=self._name(d["model_version"]), model_sha256=sha,
                detected_at=detected, event_id=d["event_id"],
            )
        except (_Reject, ValueError, UnicodeDecodeError, RecursionError, TypeError, KeyError, OverflowError):
            return None

    def _name(self, value: Any) -> str:
        if value in self._names and type(value) is str:
            return str(value)
        if type(value) is not str or not NAME_RE.match(value):
            raise _Reject("name")
        if len(self._names) >= MAX_CACHED_NAMES:
            self._names.clear()
        self._names.add(value)
        return value


def _num(value: Any) -> float:
    if type(value) is not float and type(value) is not int:
        raise _Reject("number")
    out = float(value)
    if not math.isfinite(out):
        raise _Reject("number")
    return out

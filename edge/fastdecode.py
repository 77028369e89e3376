"""A fast path for decoding readings payloads whose channels are exactly the model's.

:func:`edge.contract.decode_readings` validates every field generically (names by regular
expression, one helper call per value) and costs about three ``json.loads`` per payload; on the
agent's hot path that is more than paho itself. :class:`FastReadingDecoder` accepts only
payloads the contract accepts *and* whose readings carry exactly the model's channels, and
returns the same readings; for anything else it returns ``None`` and the caller falls back to
the contract's decoder, which names the problem. A property test keeps the two in agreement.
Called on the worker thread; pure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from edge.contract import Reading
from edge.contract.reading import MAX_BATCH, READING_SCHEMA

_SINGLE_KEYS = frozenset({"schema", "device_id", "ts", "values"})
_BATCH_KEYS = frozenset({"schema", "device_id", "readings"})
_ITEM_KEYS = frozenset({"ts", "values"})


class _Reject(Exception):
    pass


def _no_constants(name: str) -> None:
    raise _Reject(name)


_decoder = json.JSONDecoder(parse_constant=_no_constants)


class FastReadingDecoder:
    """Decodes ``{"schema": 1, ...}`` readings for one fixed channel set; ``None`` means "ask the contract"."""

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self._channel_set = frozenset(channels)

    def decode(self, payload: bytes, device: str) -> list[Reading] | None:
        """The readings of ``payload`` for ``device`` (already validated, from the topic), or ``None``."""
        try:
            data = _decoder.decode(payload.decode("utf-8"))
            if type(data) is not dict or data.keys() - _BATCH_KEYS - _SINGLE_KEYS:
                return None
            schema = data.get("schema")
            if type(schema) is not int or schema != READING_SCHEMA:
                return None
            payload_device = data.get("device_id")
            if payload_device is not None and payload_device != device:
                return None
            if "readings" in data:
                if data.keys() - _BATCH_KEYS:
                    return None
                items = data["readings"]
                if type(items) is not list or not 1 <= len(items) <= MAX_BATCH:
                    return None
                out = []
                for item in items:
                    if type(item) is not dict or item.keys() - _ITEM_KEYS:
                        return None
                    out.append(self._reading(device, item))
                return out
            return [self._reading(device, data)]
        except (_Reject, ValueError, UnicodeDecodeError, RecursionError, OverflowError, TypeError, KeyError):
            return None

    def _reading(self, device: str, item: dict[str, Any]) -> Reading:
        ts = item["ts"]
        if type(ts) is not float and type(ts) is not int:
            raise _Reject("ts")
        ts = float(ts)
        if not (math.isfinite(ts) and ts >= 0.0):
            raise _Reject("ts")
        values = item["values"]
        if type(values) is not dict or values.keys() != self._channel_set:
            raise _Reject("values")
        out: dict[str, float] = {}
        for name, v in values.items():
            if type(v) is not float and type(v) is not int:
                raise _Reject(name)
            f = float(v)
            if not math.isfinite(f):
                raise _Reject(name)
            out[name] = f
        return Reading(device, ts, out)

"""A fast path for decoding readings payloads whose channels are exactly the model's.

:func:`edge.contract.decode_readings` validates every field generically (names by regular
expression, one helper call per value) and costs about three ``json.loads`` per payload; on the
agent's hot path that is more than paho itself. :class:`FastReadingDecoder` accepts only
payloads the contract accepts *and* whose readings carry exactly the model's channels, and
returns the same values as arrays in the model's channel order; for anything else it returns ``None`` and the caller falls back to
the contract's decoder, which names the problem. A property test keeps the two in agreement.
Called on the worker thread; pure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.contract.reading import MAX_BATCH, READING_SCHEMA

_SINGLE_KEYS = frozenset({"schema", "device_id", "ts", "values"})
_BATCH_KEYS = frozenset({"schema", "device_id", "readings"})
_NUMBER_TYPES = frozenset({int, float})


class _Reject(Exception):
    pass


def _no_constants(name: str) -> None:
    raise _Reject(name)


_decoder = json.JSONDecoder(parse_constant=_no_constants)


class FastReadingDecoder:
    """Decodes ``{"schema": 1, ...}`` readings for one fixed channel set into arrays;
    ``None`` means "ask the contract"."""

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self._channel_set = frozenset(channels)

    def decode(self, payload: bytes, device: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ts (n,), values (n, channels))`` float64 in channel order for ``device`` (already
        validated, from the topic), or ``None`` when the contract's decoder must decide."""
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
                items = data["readings"]
                if data.keys() - _BATCH_KEYS or type(items) is not list or not 1 <= len(items) <= MAX_BATCH:
                    return None
                batch = True
            else:
                items = [data]
                batch = False
            channels, width = self.channels, len(self.channels)
            stamps: list[Any] = []
            flat: list[Any] = []
            # Non-dicts fail below with TypeError; a missing key with KeyError. An item of two keys
            # holding "ts" and "values", and values of `width` keys holding every channel, are
            # exactly the sets the contract and the model require.
            for item in items:
                if batch and len(item) != 2:
                    return None
                values = item["values"]
                if type(values) is not dict or len(values) != width:
                    return None
                stamps.append(item["ts"])
                flat.extend(map(values.__getitem__, channels))
            if not _NUMBER_TYPES.issuperset(map(type, stamps)) or not _NUMBER_TYPES.issuperset(map(type, flat)):
                return None
            ts = np.array(stamps, dtype=np.float64)
            rows = np.array(flat, dtype=np.float64).reshape(len(stamps), len(channels))
            if not (np.isfinite(ts).all() and (ts >= 0.0).all() and np.isfinite(rows).all()):
                return None
            return ts, rows
        except (_Reject, ValueError, UnicodeDecodeError, RecursionError, OverflowError, TypeError, KeyError):
            return None

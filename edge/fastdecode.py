"""A fast path for decoding readings payloads whose channels are exactly the model's.

:func:`edge.contract.decode_readings` validates every field generically (names by regular
expression, one helper call per value) and costs about three ``json.loads`` per payload; on the
agent's hot path that is more than paho itself. :class:`FastReadingDecoder` parses with orjson
(about five times the standard library's speed on a batch), and accepts only
payloads the contract accepts *and* whose readings carry exactly the model's channels, and
returns the same values as arrays in the model's channel order; for anything else it returns ``None`` and the caller falls back to
the contract's decoder, which names the problem. A property test keeps the two in agreement.
Called on the worker thread; pure.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import orjson

from edge.contract.reading import MAX_BATCH, READING_SCHEMA

_SINGLE_KEYS = frozenset({"schema", "device_id", "ts", "values"})
_BATCH_KEYS = frozenset({"schema", "device_id", "readings"})
_ANY_KEYS = _SINGLE_KEYS | _BATCH_KEYS
_NUMBER_TYPES = frozenset({int, float})


class _Reject(Exception):
    pass


def _no_constants(name: str) -> None:
    raise _Reject(name)


_decoder = json.JSONDecoder(parse_constant=_no_constants)


def _parse(payload: bytes) -> Any:
    """orjson, and the standard library only where orjson refuses: orjson is strict RFC 8259
    (no NaN or Infinity; numbers that overflow a double, lone surrogates and invalid UTF-8 are
    errors) while the contract parses with :mod:`json`, which takes some of those; asking it
    again keeps the two in agreement. orjson reads integers beyond 64 bits as floats, the value
    the contract's ``float()`` gives them too."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _decoder.decode(payload.decode("utf-8"))


def as_arrays(stamps: Sequence[float], rows: Sequence[tuple[float, ...]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ts (n,), values (n, width))`` float64 of decoded readings; ``fromiter`` over the flat values
    has no shape to discover and costs about a third less than ``np.array`` of the row tuples."""
    values = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=len(stamps) * width)
    return np.array(stamps, dtype=np.float64), values.reshape(len(stamps), width)


class FastReadingDecoder:
    """Decodes ``{"schema": 1, ...}`` readings for one fixed channel set into arrays;
    ``None`` means "ask the contract"."""

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self._channel_set = frozenset(channels)
        # one C call per reading for the model's channels in order; KeyError when one is missing
        self._row: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            operator.itemgetter(*self.channels) if len(self.channels) > 1 else lambda values: tuple(values[c] for c in self.channels))

    def decode(self, payload: bytes, device: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ts (n,), values (n, channels))`` float64 in channel order for ``device`` (already
        validated, from the topic), or ``None`` when the contract's decoder must decide."""
        lists = self.decode_lists(payload, device)
        if lists is None:
            return None
        return as_arrays(*lists, len(self.channels))

    def decode_lists(self, payload: bytes, device: str) -> tuple[list[float], list[tuple[float, ...]]] | None:
        """:meth:`decode` as Python lists (stamps, one tuple per reading in channel order), for a
        caller that gathers several payloads into one array."""
        try:
            data = _parse(payload)
            if type(data) is not dict or not data.keys() <= _ANY_KEYS:
                return None
            schema = data.get("schema")
            if type(schema) is not int or schema != READING_SCHEMA:
                return None
            payload_device = data.get("device_id")
            if payload_device is not None and payload_device != device:
                return None
            width = len(self.channels)
            if "readings" not in data:  # one reading: the common case of small sensors, kept short
                ts, values = data["ts"], data["values"]
                if type(values) is not dict or len(values) != width:
                    return None
                row = self._row(values)
                if type(ts) not in _NUMBER_TYPES or not _NUMBER_TYPES.issuperset(map(type, row)):
                    return None
                if not (math.isfinite(sum(row, ts)) and ts >= 0):  # see the batch case for the sum
                    return None
                return [ts], [row]
            items = data["readings"]
            if not data.keys() <= _BATCH_KEYS or type(items) is not list or not 1 <= len(items) <= MAX_BATCH:
                return None
            # Whole-list passes in C rather than a Python loop with checks per reading. Anything not
            # a dict fails with TypeError (no length, or no string keys), a missing key with
            # KeyError; items of two keys with "ts" and "values", and values of `width` keys that
            # hold every channel, are exactly the sets the contract and the model require.
            if set(map(len, items)) != {2}:
                return None
            values_list = [item["values"] for item in items]
            if set(map(len, values_list)) != {width}:
                return None
            stamps = [item["ts"] for item in items]
            rows = list(map(self._row, values_list))
            if not _NUMBER_TYPES.issuperset(map(type, stamps)) or not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(rows))):
                return None
            # A sum is finite only if every term is (one that overflows only sends the payload to the
            # contract); Python's float sum neither warns nor raises, unlike a numpy reduction.
            if not (math.isfinite(sum(chain.from_iterable(rows), sum(stamps))) and min(stamps) >= 0):
                return None
            return stamps, rows
        except (_Reject, ValueError, UnicodeDecodeError, RecursionError, OverflowError, TypeError, KeyError):
            return None

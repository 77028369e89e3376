"""The agent's fast decoding path agrees with the contract's decoder: same readings when it
answers, and it never accepts what the contract refuses."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.contract import ContractError, Reading, decode_readings, encode_readings
from edge.fastdecode import FastReadingDecoder

CH = ("a", "b", "c")
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                         st.text(max_size=5), st.sampled_from([1e308, -0.0, 0, 1, 2**64]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                           max_leaves=6)
channel_values = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "bad name"]),
                                 st.one_of(st.floats(allow_nan=False), st.integers(-10**5, 10**5), json_scalars),
                                 max_size=5)


@st.composite
def items(draw: st.DrawFn) -> dict[str, object]:
    item: dict[str, object] = {"ts": draw(st.one_of(st.floats(0, 4e9), st.integers(0, 4 * 10**9), json_scalars)),
                               "values": draw(st.one_of(st.just({"a": 1.0, "b": 2, "c": -3.5}), channel_values, json_values))}
    if draw(st.booleans()):
        item[draw(st.sampled_from(["ts", "values", "extra", "device_id", "schema"]))] = draw(json_values)
    return item


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    data: dict[str, object] = {"schema": draw(st.sampled_from([1, 1, 1, 2, "1", 1.0, True]))}
    if draw(st.booleans()):
        data["device_id"] = draw(st.sampled_from(["dev-1", "dev-2", None, 7, ""]))
    if draw(st.booleans()):
        data["readings"] = draw(st.one_of(st.lists(items(), max_size=4), json_values))
    else:
        data.update(draw(items()))
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(max_size=6))] = draw(json_values)
    text = json.dumps(data)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace("1.0", draw(st.sampled_from(["NaN", "Infinity", "1e999", "-1e999"])), 1)
    return text.encode()


def as_arrays(readings: list[Reading]) -> tuple[list[float], list[list[float]]]:
    return [r.ts for r in readings], [[r.values[c] for c in CH] for r in readings]


def as_lists(decoded: tuple[np.ndarray, np.ndarray]) -> tuple[list[float], list[list[float]]]:
    ts, rows = decoded
    assert ts.dtype == rows.dtype == np.float64 and rows.shape == (len(ts), len(CH))
    return ts.tolist(), rows.tolist()


@settings(max_examples=300, deadline=None)
@given(payloads())
def test_fast_path_agrees_with_the_contract(payload: bytes) -> None:
    fast = FastReadingDecoder(CH).decode(payload, "dev-1")
    try:
        slow: list[Reading] | None = decode_readings(payload, topic_device="dev-1")
    except (ContractError, OverflowError):
        slow = None
    if fast is not None:
        assert slow is not None, "the fast path accepted what the contract refuses"
        assert as_arrays(slow) == as_lists(fast)
        assert all(r.values.keys() == set(CH) for r in slow)
    elif slow is not None:
        assert any(r.values.keys() != set(CH) for r in slow), "the fast path refused a valid payload with the model's channels"


@given(st.lists(st.tuples(st.floats(0, 4e9), st.floats(allow_nan=False, allow_infinity=False)), min_size=1, max_size=20))
def test_fast_path_takes_every_valid_payload(rows: list[tuple[float, float]]) -> None:
    readings = [Reading("dev-1", ts, {"a": v, "b": -v, "c": 0.0}) for ts, v in rows]
    payload = encode_readings(readings)
    fast = FastReadingDecoder(CH).decode(payload, "dev-1")
    assert fast is not None and decode_readings(payload, topic_device="dev-1") == readings
    assert as_lists(fast) == as_arrays(readings)
    assert FastReadingDecoder(CH).decode(payload, "dev-2") is None  # payload names another device

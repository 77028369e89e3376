"""The wire contract: round trips, and every malformed input refused with a ContractError
that names the field."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.contract import (
    AnomalyEvent,
    Calibration,
    Channel,
    ContractError,
    ExpectedAlerts,
    ModelManifest,
    Reading,
    Signature,
    canonical_bytes,
    decode_event,
    decode_manifest,
    decode_readings,
    device_from_topic,
    encode_event,
    encode_manifest,
    encode_readings,
    make_event_id,
    readings_topic,
)
from edge.contract.event import FAULT_CHECKS, MAX_FAULT_DETAIL, SensorFault
from edge.contract.samples import TelemetryWindow, decode_telemetry, encode_telemetry

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
value_maps = st.dictionaries(names, finite, min_size=1, max_size=6)
sha = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def reading_batches(draw: st.DrawFn) -> list[Reading]:
    device = draw(names)
    items = draw(st.lists(st.tuples(times, value_maps), min_size=1, max_size=8))
    return [Reading(device, ts, values) for ts, values in items]


@st.composite
def events(draw: st.DrawFn) -> AnomalyEvent:
    """Process events and sensor fault events (issue 16: ``kind`` and ``fault``, absent at their defaults)."""
    start = draw(times)
    channel_scores = draw(value_maps)
    fault = draw(st.none() | st.builds(
        SensorFault, check=st.sampled_from(FAULT_CHECKS),
        channels=st.lists(st.sampled_from(sorted(channel_scores)), min_size=1, unique=True).map(tuple),
        detail=st.text(max_size=MAX_FAULT_DETAIL)))
    return AnomalyEvent(
        device_id=draw(names), agent_id=draw(names), window_start=start, window_end=start + draw(times),
        score=draw(finite), threshold=draw(finite), channel_scores=channel_scores, model_name=draw(names),
        model_version=draw(names), model_sha256=draw(sha), detected_at=draw(times),
        kind="process" if fault is None else "sensor_fault", fault=fault,
    )


@st.composite
def quantiles(draw: st.DrawFn, top: float) -> dict[str, float]:
    p05, p50, p95 = sorted(draw(st.lists(st.floats(0, top), min_size=3, max_size=3)))
    return {"p05": p05, "p50": p50, "p95": p95}


@st.composite
def predictions(draw: st.DrawFn) -> ExpectedAlerts:
    since = draw(times)
    return ExpectedAlerts(since=since, until=since + draw(st.floats(1, 1e8)), devices=draw(st.integers(1, 10**6)),
                          device_days=draw(st.floats(1e-3, 1e9)), alerts_per_device_day=draw(quantiles(1e6)),
                          window_rate=draw(quantiles(1.0)), baseline_window_rate=draw(st.none() | st.floats(0, 1)),
                          max_ratio=draw(st.floats(1e-3, 1e3)))


@st.composite
def manifests(draw: st.DrawFn) -> ModelManifest:
    channel_names = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    window = draw(st.integers(1, 512))
    return ModelManifest(
        name=draw(names), family=draw(names), version=draw(names), sha256=draw(sha),
        channels=tuple(Channel(n, draw(st.text(max_size=8))) for n in channel_names),
        window_length=window, stride=draw(st.integers(1, window)),
        sample_period_s=draw(st.floats(min_value=1e-3, max_value=3600)), threshold=draw(finite),
        calibration=Calibration(draw(names), draw(st.dictionaries(names, finite | names, max_size=3))),
        opset=draw(st.integers(7, 30)), min_onnxruntime="1.17.0", training_data_fingerprint=draw(names),
        metrics=draw(st.dictionaries(names, finite, max_size=4)), created_at="2026-11-27T00:00:00Z",
        expected_alerts=draw(st.none() | predictions()),
        signature=draw(st.none() | st.builds(Signature, key_id=names, value=st.just("c2lnbmF0dXJl"))),
    )


@given(reading_batches())
def test_readings_round_trip(batch: list[Reading]) -> None:
    assert decode_readings(encode_readings(batch)) == batch


@given(events())
def test_event_round_trip(event: AnomalyEvent) -> None:
    assert decode_event(encode_event(event)) == event


@given(manifests())
def test_manifest_round_trip(manifest: ModelManifest) -> None:
    assert decode_manifest(encode_manifest(manifest)) == manifest


@settings(max_examples=500)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_raise_only_contract_error(payload: bytes) -> None:
    for decode in (decode_readings, decode_event, decode_manifest):
        try:
            decode(payload)
        except ContractError:
            pass


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)))
def test_arbitrary_json_raises_only_contract_error(doc: object) -> None:
    payload = json.dumps(doc).encode()
    for decode in (decode_readings, decode_event, decode_manifest):
        try:
            decode(payload)
        except ContractError:
            pass


def test_event_id_is_deterministic_and_distinct() -> None:
    a = make_event_id("pump-1", 100.0, "a" * 64)
    assert a == make_event_id("pump-1", 100.0, "a" * 64) == make_event_id("pump-1", 100, "a" * 64)
    assert len({a, make_event_id("pump-2", 100.0, "a" * 64), make_event_id("pump-1", 101.0, "a" * 64),
                make_event_id("pump-1", 100.0, "b" * 64)}) == 4


def test_topic_yields_device() -> None:
    assert device_from_topic(readings_topic("pump-7")) == "pump-7"
    assert device_from_topic("site/a/pump-7/readings", prefix="site/a") == "pump-7"
    with pytest.raises(ContractError) as err:
        device_from_topic("edgewatch/pump-7/other")
    assert err.value.field == "topic"


GOOD_READING = {"schema": 1, "device_id": "pump-1", "ts": 10.0, "values": {"a": 1.0}}


@pytest.mark.parametrize(
    ("patch", "field", "kind"),
    [
        ({"schema": 2}, "schema", "invalid"),
        ({"ts": "soon"}, "ts", "wrong_type"),
        ({"ts": -1}, "ts", "invalid"),
        ({"values": {"a": "1"}}, "values.a", "wrong_type"),
        ({"values": {"a": True}}, "values.a", "wrong_type"),
        ({"values": {}}, "values", "invalid"),
        ({"values": [1.0]}, "values", "wrong_type"),
        ({"values": {"bad name!": 1.0}}, "values.bad name!", "invalid"),
        ({"device_id": ""}, "device_id", "invalid"),
        ({"device_id": 7}, "device_id", "wrong_type"),
        ({"extra": 1}, "extra", "invalid"),
        ({"readings": "many"}, "readings", "wrong_type"),
        ({"readings": []}, "readings", "invalid"),
    ],
)
def test_malformed_reading_names_field_and_kind(patch: dict[str, object], field: str, kind: str) -> None:
    doc = {**GOOD_READING, **patch}
    if "readings" in patch:
        doc = {"schema": 1, "device_id": "pump-1", "readings": patch["readings"]}
    with pytest.raises(ContractError) as err:
        decode_readings(json.dumps(doc))
    assert err.value.field == field and err.value.kind == kind
    assert field in str(err.value)


def test_reading_nan_and_infinity_refused() -> None:
    for token in ("NaN", "Infinity", "-Infinity", "1e999", "9" * 400):
        payload = '{"schema":1,"device_id":"d","ts":1,"values":{"a":' + token + "}}"
        with pytest.raises(ContractError) as err:
            decode_readings(payload)
        assert err.value.field in ("$", "values.a") and err.value.kind == "non_finite"


def test_batch_errors_name_the_item() -> None:
    payload = {"schema": 1, "device_id": "d", "readings": [{"ts": 1, "values": {"a": 1}}, {"ts": 2, "values": {"a": None}}]}
    with pytest.raises(ContractError) as err:
        decode_readings(json.dumps(payload))
    assert err.value.field == "readings[1].values.a"


def test_topic_and_payload_device_must_agree() -> None:
    with pytest.raises(ContractError) as err:
        decode_readings(json.dumps(GOOD_READING), topic_device="pump-2")
    assert err.value.field == "device_id"
    no_device = {k: v for k, v in GOOD_READING.items() if k != "device_id"}
    assert decode_readings(json.dumps(no_device), topic_device="pump-2")[0].device_id == "pump-2"


def test_oversized_and_unparsable_payloads_refused() -> None:
    with pytest.raises(ContractError, match="at most 100 bytes") as err:
        decode_readings(json.dumps(GOOD_READING) + " " * 100, max_bytes=100)
    assert err.value.kind == "too_large"
    for payload in (b"\xff{", b'{"schema":', b"[1, 2]"):
        with pytest.raises(ContractError) as err:
            decode_readings(payload)
        assert err.value.kind == ("wrong_type" if payload == b"[1, 2]" else "not_json")


def _event() -> AnomalyEvent:
    return AnomalyEvent("pump-1", "agent-1", 0.0, 63.0, 2.5, 1.0, {"a": 0.7, "b": 0.3}, "default", "1.0.0",
                        "c" * 64, 64.0)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"event_id": "0" * 32}, "event_id"),
        ({"model_sha256": "xyz"}, "model_sha256"),
        ({"window_end": -5.0}, "window_end"),
        ({"score": "high"}, "score"),
        ({"channel_scores": []}, "channel_scores"),
        ({"agent_id": None}, "agent_id"),
    ],
)
def test_malformed_event_names_field(patch: dict[str, object], field: str) -> None:
    doc = json.loads(encode_event(_event()))
    doc.update(patch)
    with pytest.raises(ContractError) as err:
        decode_event(json.dumps(doc))
    assert err.value.field == field


def _manifest() -> ModelManifest:
    return ModelManifest("default", "dense_ae", "1.0.0", "d" * 64, (Channel("a", "g"), Channel("b", "bar")), 64, 16,
                         1.0, 0.5, Calibration("quantile", {"q": 0.995}), 17, "1.17.0", "sha256:abc", {"f1": 0.9},
                         "2026-11-27T00:00:00Z")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"channels": []}, "channels"),
        ({"channels": [{"name": "a"}, {"name": "a"}]}, "channels"),
        ({"channels": [{"name": "a", "unit": 3}]}, "channels[0].unit"),
        ({"stride": 100}, "stride"),
        ({"window_length": 0}, "window_length"),
        ({"sample_period_s": 0}, "sample_period_s"),
        ({"min_onnxruntime": "new"}, "min_onnxruntime"),
        ({"sha256": "D" * 64}, "sha256"),
        ({"calibration": {"method": "quantile", "params": {"q": [1]}}}, "calibration.params.q"),
        ({"signature": {"key_id": "k"}}, "signature.value"),
    ],
)
def test_malformed_manifest_names_field(patch: dict[str, object], field: str) -> None:
    doc = json.loads(encode_manifest(_manifest()))
    doc.update(patch)
    with pytest.raises(ContractError) as err:
        decode_manifest(json.dumps(doc))
    assert err.value.field == field


def test_canonical_bytes_ignore_signature_and_cover_the_rest() -> None:
    plain = _manifest()
    signed = dataclasses.replace(plain, signature=Signature("key-1", "c2ln"))
    assert canonical_bytes(plain) == canonical_bytes(signed)
    assert canonical_bytes(plain) != canonical_bytes(dataclasses.replace(plain, threshold=0.6))
    assert b"signature" not in canonical_bytes(signed)


@settings(max_examples=200, deadline=None)
@given(ts=st.lists(times, min_size=1, max_size=8), values=st.lists(finite, min_size=1, max_size=8), score=finite)
def test_a_telemetry_window_is_the_same_json_by_orjson(ts: list[float], values: list[float], score: float) -> None:
    rows = tuple((v, -v) for v in values[:len(ts)]) + tuple((0.0, 0.0) for _ in range(len(ts) - len(values)))
    window = TelemetryWindow("dev-1", "gw-1", "sampled", ("a", "b"), tuple(ts), rows, score, 1.0, False, "ab" * 32)
    payload = encode_telemetry(window)
    assert decode_telemetry(payload) == window
    expected = {"schema": 1, "device_id": "dev-1", "agent_id": "gw-1", "reason": "sampled", "channels": ["a", "b"],
                "ts": ts, "values": [list(r) for r in rows], "score": score, "threshold": 1.0, "anomalous": False,
                "model_sha256": "ab" * 32}
    assert json.loads(payload) == expected and list(json.loads(payload)) == sorted(expected)  # the same values, key-sorted
    assert b" " not in payload  # compact (a number may be written otherwise than the standard library does: 0.00001, 1e-05)


def test_telemetry_refuses_nan_and_infinity_and_takes_what_orjson_does_not() -> None:
    base = TelemetryWindow("dev-1", "gw-1", "sampled", ("a",), (1.0, 2.0), ((1.0,), (2.0,)), 3.0, 1.0, False, "ab" * 32)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            encode_telemetry(dataclasses.replace(base, values=((1.0,), (bad,))))
        with pytest.raises(ValueError, match="not JSON compliant"):
            encode_telemetry(dataclasses.replace(base, score=bad))
    huge = dataclasses.replace(base, values=((1.7e308,), (1.7e308,)))  # finite values at the edge of the range
    assert decode_telemetry(encode_telemetry(huge)) == huge
    numpy_scalar = dataclasses.replace(base, score=np.float64(3.0))  # orjson refuses numpy scalars: the standard path
    assert encode_telemetry(numpy_scalar) == encode_telemetry(base)

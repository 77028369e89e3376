"""The signed prediction in the manifest (``expected_alerts``): round trip, absent from old
manifests (their bytes and signatures unchanged), every bad field named, and covered by the
signature so a tampered prediction fails verification."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.contract import (
    Calibration,
    Channel,
    ContractError,
    ExpectedAlerts,
    ManifestError,
    ModelManifest,
    Signature,
    canonical_bytes,
    decode_manifest,
    encode_manifest,
)
from edge.signing import key_id, verify_manifest

REPO = Path(__file__).resolve().parents[2]
OLD_MANIFESTS = [REPO / "models/zoo/default/manifest.json", REPO / "tests/edge/fixtures/tiny_model/manifest.json"]


def expected(**changes: object) -> ExpectedAlerts:
    base = ExpectedAlerts(since=1_700_000_000.0, until=1_700_086_400.0, devices=12, device_days=12.0,
                          alerts_per_device_day={"p05": 0.0, "p50": 1.5, "p95": 4.0},
                          window_rate={"p05": 0.0005, "p50": 0.002, "p95": 0.005},
                          baseline_window_rate=0.0018, max_ratio=2.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def manifest(prediction: ExpectedAlerts | None = None) -> ModelManifest:
    return ModelManifest("default", "dense_ae", "1.0.0", "d" * 64, (Channel("a", "g"),), 8, 4, 1.0, 0.5,
                         Calibration("quantile", {"q": 0.995}), 17, "1.17.0", "sha256:abc", {}, "2026-11-27T00:00:00Z",
                         expected_alerts=prediction)


def test_round_trip_with_and_without_baseline() -> None:
    for prediction in (expected(), expected(baseline_window_rate=None)):
        m = manifest(prediction)
        assert decode_manifest(encode_manifest(m)) == m
    doc = json.loads(encode_manifest(manifest(expected(baseline_window_rate=None))))
    del doc["expected_alerts"]["baseline_window_rate"]  # absent reads as null: no production version
    assert decode_manifest(json.dumps(doc)).expected_alerts == expected(baseline_window_rate=None)


@pytest.mark.parametrize("path", OLD_MANIFESTS, ids=lambda p: p.parent.name)
def test_old_manifest_bytes_unchanged(path: Path) -> None:
    raw = path.read_bytes()
    m = decode_manifest(raw)
    assert m.expected_alerts is None
    assert encode_manifest(m) == raw.strip()
    assert b"expected_alerts" not in canonical_bytes(m)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"since": -1}, "expected_alerts.since"),
        ({"until": 1_600_000_000}, "expected_alerts.until"),
        ({"devices": 0}, "expected_alerts.devices"),
        ({"devices": 1.5}, "expected_alerts.devices"),
        ({"device_days": 0}, "expected_alerts.device_days"),
        ({"max_ratio": 0}, "expected_alerts.max_ratio"),
        ({"max_ratio": "2"}, "expected_alerts.max_ratio"),
        ({"baseline_window_rate": 1.5}, "expected_alerts.baseline_window_rate"),
        ({"baseline_window_rate": -0.1}, "expected_alerts.baseline_window_rate"),
        ({"window_rate": {"p05": 0.1, "p50": 0.2}}, "expected_alerts.window_rate"),
        ({"window_rate": {"p05": 0.1, "p50": 0.2, "p95": 0.3, "p99": 0.4}}, "expected_alerts.window_rate"),
        ({"window_rate": {"p05": 0.1, "p50": 0.2, "p95": 1.2}}, "expected_alerts.window_rate.p95"),
        ({"window_rate": {"p05": 0.3, "p50": 0.2, "p95": 0.4}}, "expected_alerts.window_rate"),
        ({"alerts_per_device_day": {"p05": -1, "p50": 0, "p95": 1}}, "expected_alerts.alerts_per_device_day.p05"),
        ({"alerts_per_device_day": {"p05": 0, "p50": "x", "p95": 1}}, "expected_alerts.alerts_per_device_day.p50"),
        ({"alerts_per_device_day": {"p05": 0, "p50": 2, "p95": 1}}, "expected_alerts.alerts_per_device_day"),
        ({"alerts_per_device_day": [0, 1, 2]}, "expected_alerts.alerts_per_device_day"),
        ({"extra": 1}, "expected_alerts.extra"),
    ],
)
def test_bad_prediction_names_field(patch: dict[str, object], field: str) -> None:
    doc = json.loads(encode_manifest(manifest(expected())))
    doc["expected_alerts"].update(patch)
    with pytest.raises(ContractError) as err:
        decode_manifest(json.dumps(doc))
    assert err.value.field == field


def test_prediction_not_an_object_or_missing_a_key() -> None:
    doc = json.loads(encode_manifest(manifest(expected())))
    for bad, field in (([1], "expected_alerts"), ({**doc["expected_alerts"], "max_ratio": None}, "expected_alerts.max_ratio")):
        with pytest.raises(ContractError) as err:
            decode_manifest(json.dumps({**doc, "expected_alerts": bad}))
        assert err.value.field == field
    partial = {k: v for k, v in doc["expected_alerts"].items() if k != "window_rate"}
    with pytest.raises(ContractError) as err:
        decode_manifest(json.dumps({**doc, "expected_alerts": partial}))
    assert err.value.field == "expected_alerts.window_rate"


def test_signature_covers_the_prediction() -> None:
    private = Ed25519PrivateKey.generate()
    unsigned = manifest(expected())
    value = base64.b64encode(private.sign(canonical_bytes(unsigned))).decode()
    signed = dataclasses.replace(unsigned, signature=Signature(key_id(private.public_key()), value))
    trusted = {key_id(private.public_key()): private.public_key()}
    on_disk = decode_manifest(encode_manifest(signed))
    verify_manifest(on_disk, trusted)
    doc = json.loads(encode_manifest(signed))
    doc["expected_alerts"]["window_rate"]["p95"] = 0.05  # a wider interval, as a forger would want
    with pytest.raises(ManifestError, match="does not match"):
        verify_manifest(decode_manifest(json.dumps(doc)), trusted)
    del doc["expected_alerts"]  # dropping the prediction is tampering too
    with pytest.raises(ManifestError, match="does not match"):
        verify_manifest(decode_manifest(json.dumps(doc)), trusted)

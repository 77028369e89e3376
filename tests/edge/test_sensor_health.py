"""Sensor health at the edge (issue 16 item 1), without brokers: each check fires on its injected
fault and not on clean data, a failing window is a sensor_fault event and not also a process
anomaly, the debounce, the contract (old event and manifest bytes unchanged, the new fields
validated naming the field), the config keys and the reports' ``last_seen``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge.config import Config, load_config
from edge.contract import (
    AnomalyEvent,
    ConfigError,
    ContractError,
    SensorFault,
    decode_event,
    decode_manifest,
    encode_event,
    encode_manifest,
)
from edge.contract.manifest import ModelManifest
from edge.contract.update import AgentInfo, ModelStatus, decode_status, encode_status
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.pipeline import Pipeline
from edge.synth import CHANNEL_NAMES, Fault, simulate
from tests.edge.agent_util import T0, TINY_MODEL, payloads

CLOCK = 2_000_000_000.0
N = 1200
FAULT = slice(400, 700)  # the injected fault's readings


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    return OnnxDetector.load(TINY_MODEL)


class Scorer:
    """The tiny model under another manifest (channel ranges)."""

    def __init__(self, inner: OnnxDetector, manifest: ModelManifest) -> None:
        self.inner = inner
        self.manifest = manifest

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.score(windows)


def config(env: dict[str, str] | None = None) -> Config:
    return load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0",
                                  "EDGEWATCH_ADAPTIVE__ENABLED": "false", **(env or {})})


def run(detector: OnnxDetector, ts: np.ndarray, values: np.ndarray, env: dict[str, str] | None = None,
        manifest: ModelManifest | None = None, scorer: Scorer | None = None) -> tuple[list[AnomalyEvent], Pipeline]:
    """Readings of one device through a pipeline, 20 a payload; the events it wrote."""
    metrics = AgentMetrics(CollectorRegistry())
    pipe = Pipeline(config(env), scorer or Scorer(detector, manifest or detector.manifest), metrics, clock=lambda: CLOCK)
    rows = [{"ts": float(t), "values": dict(zip(CHANNEL_NAMES, map(float, row), strict=True))} for t, row in zip(ts, values, strict=True)]
    messages = [Message("edgewatch/pump-1/readings", json.dumps({"schema": 1, "device_id": "pump-1", "readings": rows[i: i + 20]}).encode(),
                        0.0) for i in range(0, len(rows), 20)]
    records = pipe.process(messages)
    return [decode_event(r.value) for r in records if r.kind == "anomaly"], pipe


def clean(seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return T0 + np.arange(N, dtype=np.float64), simulate(N, seed=seed)[0]


def restamped(ts: np.ndarray, step: float) -> np.ndarray:
    """The readings from the fault's start on, stamped ``step`` sample periods apart."""
    out = ts.copy()
    out[FAULT.start:] = ts[FAULT.start] + step * np.arange(N - FAULT.start)
    return out


def injected(check: str) -> tuple[np.ndarray, np.ndarray, dict[str, str], tuple[str, ...]]:
    """``(ts, values, env, channels)`` of a stream with a fault of ``check`` from reading 400."""
    ts, values = clean()
    if check == "stuck":
        values = simulate(N, seed=4, faults=[Fault("stuck", "pressure", FAULT.start, FAULT.stop - FAULT.start)])[0]
        return ts, values, {}, ("pressure",)
    if check == "range":  # a thermocouple gone open: far above what the config allows
        values = values.copy()
        values[FAULT, CHANNEL_NAMES.index("temperature")] += 500
        return ts, values, {"EDGEWATCH_SENSOR_HEALTH__RANGE_MAX": "temperature=200"}, ("temperature",)
    if check == "dropout":  # every third reading lost
        keep = np.ones(N, dtype=bool)
        keep[FAULT.start: FAULT.stop: 3] = False
        return ts[keep], values[keep], {}, CHANNEL_NAMES
    if check == "clock":  # the sensor's clock runs 25 % slow
        return restamped(ts, 1.25), values, {}, CHANNEL_NAMES
    assert check == "rate"  # sampling four times as fast as the manifest says
    return restamped(ts, 0.25), values, {}, CHANNEL_NAMES


CHECKS = ("stuck", "range", "dropout", "clock", "rate")


@pytest.mark.parametrize("check", CHECKS)
def test_each_check_fires_on_its_fault_naming_it_and_its_channels(detector: OnnxDetector, check: str) -> None:
    ts, values, env, channels = injected(check)
    events, pipe = run(detector, ts, values, env)
    faults = [e for e in events if e.kind == "sensor_fault"]
    assert all(e.window_end >= ts[FAULT.start] for e in faults), "a fault before the injected one"
    ours = [e for e in faults if e.fault is not None and e.fault.check == check]
    assert ours and all(e.fault is not None and e.fault.channels == channels and e.fault.detail for e in ours), faults
    inside = [e for e in faults if e.window_start >= ts[FAULT.start]]  # a window across the start may fail another check first
    assert all(e.fault is not None and e.fault.check == check for e in inside), inside
    assert {c for c, share in ours[0].channel_scores.items() if share > 0} == set(channels)  # equal shares of its channels
    value = pipe.metrics.registry.get_sample_value
    assert value("edgewatch_agent_sensor_faults_total", {"check": check}) == len(ours)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_no_check_fires_on_clean_data(detector: OnnxDetector, seed: int) -> None:
    ts, values = clean(seed)
    ranges = {c: (float(lo - 1.0 * (hi - lo)), float(hi + 1.0 * (hi - lo))) for c, lo, hi
              in zip(CHANNEL_NAMES, values.min(axis=0), values.max(axis=0), strict=True)}  # export's margin
    events, pipe = run(detector, ts, values, manifest=replace(detector.manifest, channel_ranges=ranges))
    assert not [e for e in events if e.kind == "sensor_fault"]
    assert pipe.health is not None and pipe.health.devices == 0  # nothing held for a healthy device


def test_a_window_failing_a_check_is_not_also_a_process_anomaly(detector: OnnxDetector) -> None:
    ts, values, env, _ = injected("range")
    off, _ = run(detector, ts, values, {**env, "EDGEWATCH_SENSOR_HEALTH__ENABLED": "false"})
    assert len(off) > 10 and all(e.kind == "process" for e in off)  # the model alone: a process anomaly, window after window
    events, pipe = run(detector, ts, values, {**env, "EDGEWATCH_SENSOR_HEALTH__REPEAT_WINDOWS": "0"})
    assert [e.kind for e in events] == ["sensor_fault"]  # one episode, one event, no process anomaly
    value = pipe.metrics.registry.get_sample_value
    assert value("edgewatch_agent_anomalies_suppressed_total") == len(off)
    assert value("edgewatch_agent_anomalies_total") == 0


class JumpScorer(Scorer):
    """Scores a window by its largest step in pressure: a model that sees a sensor freezing or coming back."""

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        jump = np.abs(np.diff(windows[:, :, CHANNEL_NAMES.index("pressure")], axis=1)).max(axis=1)
        return 10 * jump, np.ones((len(windows), len(CHANNEL_NAMES)))


def test_no_window_holding_frozen_readings_is_a_process_anomaly(detector: OnnxDetector) -> None:
    ts, values, _, _ = injected("stuck")
    values[FAULT, CHANNEL_NAMES.index("pressure")] += 3.0  # frozen away from where it was
    lo, hi = ts[FAULT.start], ts[FAULT.stop - 1]
    off, _ = run(detector, ts, values, {"EDGEWATCH_SENSOR_HEALTH__ENABLED": "false"}, scorer=JumpScorer(detector, detector.manifest))
    assert any(e.window_end < hi for e in off) and any(e.window_start > lo for e in off)  # as it freezes, and as it comes back
    events, _ = run(detector, ts, values, scorer=JumpScorer(detector, detector.manifest))
    assert not [e for e in events if e.kind == "process" and e.window_end >= lo and e.window_start <= hi]


def test_the_range_comes_from_the_manifest_and_the_config_overrides_it(detector: OnnxDetector) -> None:
    ts, values, _, _ = injected("range")
    manifest = replace(detector.manifest, channel_ranges={"temperature": (0.0, 200.0)})
    events, _ = run(detector, ts, values, {"EDGEWATCH_SENSOR_HEALTH__REPEAT_WINDOWS": "0"}, manifest=manifest)
    assert [(e.kind, e.fault and e.fault.check) for e in events] == [("sensor_fault", "range")]
    widened, _ = run(detector, ts, values, {"EDGEWATCH_SENSOR_HEALTH__RANGE_MAX": "temperature=1000"}, manifest=manifest)
    assert widened and all(e.kind == "process" for e in widened)  # the config's bound replaces the manifest's


def test_one_event_per_episode_then_every_repeat_windows(detector: OnnxDetector) -> None:
    ts, values, _, _ = injected("stuck")
    m = detector.manifest
    stuck_windows = (FAULT.stop - FAULT.start - m.window_length) // m.stride + 1
    for repeat, expected in ((0, 1), (20, 1 + (stuck_windows - 3) // 20), (1000, 1)):
        events, _ = run(detector, ts, values, {"EDGEWATCH_SENSOR_HEALTH__REPEAT_WINDOWS": str(repeat)})
        faults = [e for e in events if e.kind == "sensor_fault"]
        assert len(faults) == expected, (repeat, [e.window_end for e in faults])
    second = simulate(N, seed=4, faults=[Fault("stuck", "pressure", 400, 300), Fault("stuck", "pressure", 900, 200)])[0]
    events, _ = run(detector, ts, second, {"EDGEWATCH_SENSOR_HEALTH__REPEAT_WINDOWS": "0"})
    assert len([e for e in events if e.kind == "sensor_fault"]) == 2  # a new episode after the sensor recovered


def test_a_device_state_goes_with_the_device(detector: OnnxDetector) -> None:
    ts, values, _, _ = injected("stuck")
    _, pipe = run(detector, ts[:600], values[:600])
    assert pipe.health is not None and pipe.health.devices == 1
    pipe.forget_device("pump-1")
    assert pipe.health.devices == 0


def test_checks_off_and_bad_config_name_the_key(detector: OnnxDetector) -> None:
    ts, values, _, _ = injected("stuck")
    events, pipe = run(detector, ts, values, {"EDGEWATCH_SENSOR_HEALTH__ENABLED": "false"})
    assert pipe.health is None and all(e.kind == "process" for e in events)
    for key, text, where in (("STUCK_WINDOWS", "0", "sensor_health.stuck_windows"),
                             ("DROPOUT_MAX_SHARE", "1.5", "sensor_health.dropout_max_share"),
                             ("RATE_FACTOR", "1.05", "sensor_health.rate_factor"),
                             ("CLOCK_JITTER_MAX", "0.5", "sensor_health.clock_jitter_max"),
                             ("REPEAT_WINDOWS", "-1", "sensor_health.repeat_windows")):
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            config({f"EDGEWATCH_SENSOR_HEALTH__{key}": text})
    with pytest.raises(ConfigError, match=r"sensor_health\.range_min\.vibration"):
        config({"EDGEWATCH_SENSOR_HEALTH__RANGE_MIN": "vibration=5", "EDGEWATCH_SENSOR_HEALTH__RANGE_MAX": "vibration=1"})
    with pytest.raises(ConfigError, match=r"sensor_health\.range_max\.humidity"):  # not a channel of the model
        Pipeline(config({"EDGEWATCH_SENSOR_HEALTH__RANGE_MAX": "humidity=5"}), detector, AgentMetrics(CollectorRegistry()))
    with pytest.raises(ConfigError, match=r"sensor_health\.range_min\.temperature"):  # above the manifest's max
        Pipeline(config({"EDGEWATCH_SENSOR_HEALTH__RANGE_MIN": "temperature=300"}),
                 Scorer(detector, replace(detector.manifest, channel_ranges={"temperature": (0.0, 200.0)})),
                 AgentMetrics(CollectorRegistry()))


OLD_EVENT = (b'{"agent_id":"gw-1","channel_scores":{"pressure":0.75,"vibration":0.25},"detected_at":1764000100.0,'
             b'"device_id":"pump-7","event_id":"%s","model_name":"pump","model_sha256":"' + b"a" * 64 + b'",'
             b'"model_version":"1.0.0","schema":1,"score":12.5,"threshold":9.0,"window_end":1764000031.0,'
             b'"window_start":1764000000.0}')


def old_event() -> bytes:
    from edge.contract import make_event_id
    return OLD_EVENT.replace(b"%s", make_event_id("pump-7", 1764000031.0, "a" * 64).encode())


def test_old_event_bytes_are_unchanged_and_decode_as_a_process_anomaly() -> None:
    event = decode_event(old_event())
    assert event.kind == "process" and event.fault is None
    assert encode_event(event) == old_event()


def test_a_sensor_fault_event_round_trips_and_each_bad_field_is_named() -> None:
    base = decode_event(old_event())
    fault = SensorFault("stuck", ("pressure",), "standard deviation at most 1e-06 for 3 windows or more")
    event = replace(base, kind="sensor_fault", fault=fault)
    data = encode_event(event)
    assert decode_event(data) == event and b'"kind":"sensor_fault"' in data
    doc = json.loads(data)
    cases: list[tuple[Callable[[dict[str, Any]], object], str]] = [
        (lambda d: d.update(kind="broken"), "kind"),
        (lambda d: d.update(kind="process"), "fault"),
        (lambda d: d.pop("fault"), "fault"),
        (lambda d: d["fault"].update(check="smoke"), "fault.check"),
        (lambda d: d["fault"].update(channels=[]), "fault.channels"),
        (lambda d: d["fault"].update(channels=["humidity"]), "fault.channels[0]"),
        (lambda d: d["fault"].update(detail="x" * 300), "fault.detail"),
        (lambda d: d["fault"].update(extra=1), "fault.extra")]
    for change, field in cases:
        bad = json.loads(json.dumps(doc))
        change(bad)
        with pytest.raises(ContractError) as err:
            decode_event(json.dumps(bad))
        assert err.value.field == field, (field, err.value)
    with pytest.raises(ContractError):
        AnomalyEvent(**{**base.__dict__, "kind": "sensor_fault"})  # a sensor fault without its fault


def test_manifest_channel_ranges_round_trip_and_old_manifests_keep_their_bytes(detector: OnnxDetector) -> None:
    old = (TINY_MODEL / "manifest.json").read_bytes().strip()
    manifest = decode_manifest(old)
    assert manifest.channel_ranges is None and encode_manifest(manifest) == old  # so every existing signature stays valid
    ranged = replace(manifest, channel_ranges={"temperature": (-5.0, 120.5), "flow": (0.0, 60.0)})
    assert decode_manifest(encode_manifest(ranged)) == ranged
    doc = json.loads(encode_manifest(ranged))
    for bad, field in (({"humidity": [0, 1]}, "channel_ranges.humidity"), ({"flow": [5, 5]}, "channel_ranges.flow"),
                       ({"flow": [0]}, "channel_ranges.flow"), ({"flow": [0, "x"]}, "channel_ranges.flow[1]"),
                       ([1, 2], "channel_ranges")):
        with pytest.raises(ContractError) as err:
            decode_manifest(json.dumps({**doc, "channel_ranges": bad}))
        assert err.value.field == field


def test_reports_carry_last_seen_most_recent_first_bounded(detector: OnnxDetector) -> None:
    info = AgentInfo(agent_version="0.1.0", onnxruntime="1.20.1", max_opset=21, arch="x86_64", mem_total_bytes=1 << 30,
                     mem_available_bytes=1 << 29, disk_free_bytes=1 << 30, devices=2, group="default")
    status = ModelStatus(agent_id="gw-1", action="report", model_name="m", model_version="1.0.0", reason="", at=CLOCK,
                         live_version="1.0.0", agent=info)
    assert b"last_seen" not in encode_status(status)  # empty: absent, a report's bytes as before
    seen = replace(status, agent=replace(info, last_seen={"pump-2": CLOCK, "pump-1": CLOCK - 5}))
    assert decode_status(encode_status(seen)) == seen
    doc = json.loads(encode_status(seen))
    for bad, field in (({"pump-1": -1}, "agent.last_seen.pump-1"), ({"bad id": 1.0}, "agent.last_seen.bad id"),
                       ({f"d{i}": 1.0 for i in range(1001)}, "agent.last_seen")):
        doc["agent"]["last_seen"] = bad
        with pytest.raises(ContractError) as err:
            decode_status(json.dumps(doc))
        assert err.value.field == field

    now = [CLOCK]
    pipe = Pipeline(config(), detector, AgentMetrics(CollectorRegistry()), clock=lambda: now[0])
    for i, device in enumerate(("pump-a", "pump-b", "pump-c")):
        now[0] = CLOCK + i
        pipe.process(payload_messages(device))
    assert list(pipe.last_seen()) == ["pump-c", "pump-b", "pump-a"] and pipe.last_seen()["pump-a"] == CLOCK
    assert pipe.last_seen(limit=2) == {"pump-c": CLOCK + 2, "pump-b": CLOCK + 1}
    pipe.forget_device("pump-c")
    assert list(pipe.last_seen()) == ["pump-b", "pump-a"]


def payload_messages(device: str) -> list[Message]:
    from edge.contract import Reading

    ts, values = clean()
    readings = [Reading(device, float(t), dict(zip(CHANNEL_NAMES, map(float, row), strict=True)))
                for t, row in zip(ts[:40], values[:40], strict=True)]
    return [Message(topic, body, 0.0) for topic, body in payloads(readings, batch=20)]

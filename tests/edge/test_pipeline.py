"""The agent's processing core without brokers: payloads in, outbox records out, with the tiny
fixture model. Bad input of every kind is counted by reason and dead-lettered; nothing raises."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge.config import load_config
from edge.contract import decode_deadletter, decode_event, decode_telemetry, make_event_id
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import REJECT_REASONS, AgentMetrics
from edge.pipeline import Pipeline
from edge.synth import CHANNEL_NAMES, Fault
from tests.edge.agent_util import TINY_MODEL, fleet_readings, fuzz_cases, payloads

CLOCK = 2_000_000_000.0  # the agent's clock: after every reading, so none is ahead of it


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    return OnnxDetector.load(TINY_MODEL)


class CountingScorer:
    def __init__(self, inner: OnnxDetector) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.calls: list[int] = []

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(windows))
        return self.inner.score(windows)


def make(detector: OnnxDetector, env: dict[str, str] | None = None) -> tuple[Pipeline, AgentMetrics, CountingScorer]:
    """A pipeline deciding with the manifest's fixed threshold (the adaptive layer is off: these
    tests check windows, debounce and records; tests/edge/test_adaptive.py checks the layer)."""
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_AGENT__MAX_PAYLOAD_BYTES": "16384",
                                    "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0", "EDGEWATCH_ADAPTIVE__ENABLED": "false",
                                    **(env or {})})
    metrics = AgentMetrics(CollectorRegistry())
    scorer = CountingScorer(detector)
    return Pipeline(config, scorer, metrics, clock=lambda: CLOCK), metrics, scorer


def msgs(items: list[tuple[str, bytes]]) -> list[Message]:
    return [Message(t, p, 1000.0) for t, p in items]


def value(metrics: AgentMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if got is None else got


def test_injected_fault_becomes_events_inside_the_fault_only(detector: OnnxDetector) -> None:
    pipe, metrics, _ = make(detector)
    fault = Fault("spike", "pressure", start=300, duration=80, magnitude=4.0)
    readings = fleet_readings("pump-7", 600, seed=3, faults=[fault])
    records = pipe.process(msgs(payloads(readings, batch=10)))
    events = [decode_event(r.value) for r in records if r.kind == "anomaly"]
    assert events, "the fault was not detected"
    t0 = readings[0].ts
    for e in events:
        assert e.device_id == "pump-7" and e.agent_id == "gw-1" and e.model_name == "tiny-zscore"
        assert e.event_id == make_event_id("pump-7", e.window_end, detector.manifest.sha256)
        assert e.score > e.threshold == detector.manifest.threshold
        # every firing window overlaps the fault
        assert e.window_end >= t0 + fault.start and e.window_start < t0 + fault.start + fault.duration
        assert max(e.channel_scores, key=lambda c: e.channel_scores[c]) == "pressure"
        assert e.detected_at == CLOCK
    assert value(metrics, "edgewatch_agent_anomalies_total") == len(events)
    assert value(metrics, "edgewatch_agent_readings_received_total") == 600
    m = detector.manifest
    assert value(metrics, "edgewatch_agent_windows_scored_total") == (600 - m.window_length) // m.stride + 1


def test_all_ready_windows_across_devices_are_scored_in_one_call(detector: OnnxDetector) -> None:
    pipe, _, scorer = make(detector)
    batch = []
    for d in range(5):
        batch += payloads(fleet_readings(f"dev-{d}", 40, seed=d), batch=40)
    pipe.process(msgs(batch))
    m = detector.manifest
    per_device = (40 - m.window_length) // m.stride + 1
    assert scorer.calls == [5 * per_device]


def test_k_of_n_and_device_override_from_config(detector: OnnxDetector) -> None:
    fault = Fault("spike", "pressure", start=100, duration=60, magnitude=4.0)
    readings = fleet_readings("p", 300, seed=5, faults=[fault])
    plain, _, _ = make(detector)
    base = [r for r in plain.process(msgs(payloads(readings, batch=50))) if r.kind == "anomaly"]
    strict, _, _ = make(detector, {"EDGEWATCH_DECISION__K": "3", "EDGEWATCH_DECISION__N": "3"})
    debounced = [r for r in strict.process(msgs(payloads(readings, batch=50))) if r.kind == "anomaly"]
    assert 0 < len(debounced) < len(base)
    deaf, _, _ = make(detector, {"EDGEWATCH_DECISION__DEVICE_THRESHOLDS": "p=1e9"})
    assert [r for r in deaf.process(msgs(payloads(readings, batch=50))) if r.kind == "anomaly"] == []


def test_telemetry_every_nth_window_and_around_anomalies(detector: OnnxDetector) -> None:
    pipe, metrics, _ = make(detector, {"EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "10",
                                       "EDGEWATCH_TELEMETRY__ANOMALY_CONTEXT_WINDOWS": "2"})
    fault = Fault("spike", "pressure", start=200, duration=40, magnitude=4.0)
    readings = fleet_readings("p", 400, seed=9, faults=[fault])
    records = pipe.process(msgs(payloads(readings, batch=25)))
    samples = [decode_telemetry(r.value) for r in records if r.kind == "telemetry"]
    events = {decode_event(r.value).window_end for r in records if r.kind == "anomaly"}
    ends = [s.ts[-1] for s in samples]
    assert len(ends) == len(set(ends)), "a window was sampled twice"
    assert events <= set(ends)
    context = [s for s in samples if s.reason == "anomaly_context"]
    assert len(context) >= len(events) + 2
    assert all(s.anomalous == (s.ts[-1] in events) for s in samples)
    sampled = [s for s in samples if s.reason == "sampled"]
    assert sampled and sampled[0].ts[0] == readings[0].ts
    s = sampled[0]
    assert s.channels == CHANNEL_NAMES and len(s.ts) == detector.manifest.window_length
    assert s.values[0] == tuple(readings[0].values[c] for c in CHANNEL_NAMES)  # raw readings, not float32
    assert value(metrics, "edgewatch_agent_telemetry_windows_total", reason="sampled") == len(sampled)


def test_late_duplicate_and_gap_are_counted(detector: OnnxDetector) -> None:
    pipe, metrics, _ = make(detector)
    r = fleet_readings("p", 50, seed=1)
    late = replace(r[10], ts=r[5].ts)
    gap = [replace(x, ts=x.ts + 1000) for x in r[20:30]]
    stream = r[:20] + [r[19], late] + gap
    pipe.process(msgs(payloads(stream)))
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="duplicate") == 1
    assert value(metrics, "edgewatch_agent_readings_dropped_total", reason="late") == 1
    assert value(metrics, "edgewatch_agent_window_resets_total") == 1


def test_ten_thousand_fuzzed_payloads_are_each_counted_and_dead_lettered(detector: OnnxDetector) -> None:
    pipe, metrics, _ = make(detector)
    cases = fuzz_cases(10_000)
    records = pipe.process(msgs([(t, p) for t, p, _ in cases]))
    assert len(records) == len(cases) and all(r.kind == "deadletter" for r in records)
    for (topic, payload, expected), record in zip(cases, records, strict=True):
        letter = decode_deadletter(record.value)
        assert letter.reason in REJECT_REASONS and (expected is None or letter.reason == expected), (letter, payload[:80])
        assert letter.payload_bytes == len(payload) and letter.payload_data() == payload[:4096]
        assert letter.truncated == (len(payload) > 4096) and letter.source == f"mqtt:{topic}"
    total = sum(value(metrics, "edgewatch_agent_payloads_rejected_total", reason=r) for r in REJECT_REASONS)
    assert total == len(cases)
    assert value(metrics, "edgewatch_agent_payloads_rejected_total", reason="not_json") >= len(cases) // 9
    assert value(metrics, "edgewatch_agent_readings_received_total") == 0
    # the pipeline still works after all that
    good = pipe.process(msgs(payloads(fleet_readings("fz-1", 40, seed=1))))
    assert value(metrics, "edgewatch_agent_readings_received_total") == 40 and good == []


def test_no_model_configured_loads_the_default_model_and_it_detects_a_fault() -> None:
    from edge.agent import Agent
    from edge.config import default_model_dir

    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-default", "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0"})
    assert config.model.path == str(default_model_dir())
    scorer = Agent(config).load_scorer()
    m = scorer.manifest
    assert m.channel_names == CHANNEL_NAMES
    pipe = Pipeline(config, scorer, AgentMetrics(CollectorRegistry()), clock=lambda: CLOCK)
    fault = Fault("spike", "pressure", start=900, duration=120, magnitude=1.0)
    readings = fleet_readings("pump-1", 1500, seed=12, faults=[fault])
    events = [decode_event(r.value) for r in pipe.process(msgs(payloads(readings, batch=20))) if r.kind == "anomaly"]
    t0 = readings[0].ts
    inside = [e for e in events if e.window_end >= t0 + fault.start and e.window_start < t0 + fault.start + fault.duration]
    assert inside, f"the default model ({m.name} {m.version}) missed a spike fault"
    assert len(events) - len(inside) <= 1, "false alarms on fault-free data"
    assert all(e.model_name == m.name and e.model_sha256 == m.sha256 for e in events)

"""The agent's escalation of borderline windows: the band around the threshold, the event id of a
window that also fired, the per-device token bucket, and the metrics that measure the bandwidth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge.agent import Agent
from edge.config import load_config
from edge.contract import ConfigError, ContractError, make_event_id
from edge.contract.escalation import decode_escalation, encode_escalation
from edge.detector import OnnxDetector
from edge.intake import Message
from edge.metrics import AgentMetrics
from edge.outbox import Record
from edge.pipeline import Pipeline
from edge.synth import Fault
from localdev.stack import LocalStack
from tests.edge.agent_util import (
    T0,
    TINY_MODEL,
    Publisher,
    TopicReader,
    agent_setup,
    fleet,
    fleet_readings,
    payloads,
    scrape,
)
from tests.kafka_util import create_topic
from tests.tools import wait_for

RATIOS = (0.5, 0.85, 1.1, 1.3, 2.0)  # score / threshold of consecutive windows, cycled


class RatioScorer:
    """Scores window i as RATIOS[i % 5] x the manifest's threshold (the band is 0.8-1.25)."""

    def __init__(self, inner: OnnxDetector) -> None:
        self.manifest = inner.manifest
        self.n = 0

    def score(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ratios = np.array([RATIOS[(self.n + i) % len(RATIOS)] for i in range(len(windows))])
        self.n += len(windows)
        channels = np.full((len(windows), windows.shape[2]), 1.0 / windows.shape[2])
        return (ratios * self.manifest.threshold).astype(np.float32), channels.astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.t = 2_000_000_000.0

    def __call__(self) -> float:
        return self.t


def make(env: dict[str, str]) -> tuple[Pipeline, AgentMetrics, Clock]:
    config = load_config(None, env={"EDGEWATCH_AGENT__ID": "gw-1", "EDGEWATCH_TELEMETRY__EVERY_N_WINDOWS": "0",
                                    "EDGEWATCH_ADAPTIVE__ENABLED": "false", "EDGEWATCH_ESCALATION__ENABLED": "true", **env})
    metrics = AgentMetrics(CollectorRegistry())
    clock = Clock()
    return Pipeline(config, RatioScorer(OnnxDetector.load(TINY_MODEL)), metrics, clock=clock), metrics, clock


def feed(pipe: Pipeline, device: str, steps: int, seed: int, t0: float = T0) -> list[Record]:
    readings = fleet_readings(device, steps, seed=seed, t0=t0)
    return pipe.process([Message(t, p, 1000.0) for t, p in payloads(readings, batch=10)])


def value(metrics: AgentMetrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_windows_in_the_band_are_escalated_with_the_event_id_of_those_that_fired() -> None:
    pipe, metrics, _ = make({"EDGEWATCH_ESCALATION__BURST": "1000"})
    records = feed(pipe, "pump-1", 600, seed=1)
    m = pipe.manifest
    windows = (600 - m.window_length) // m.stride + 1
    escalations = [decode_escalation(r.value) for r in records if r.kind == "escalation"]
    assert all(r.topic == "edgewatch.escalations" and r.key == b"pump-1" for r in records if r.kind == "escalation")
    expected = [i for i in range(windows) if 0.8 <= RATIOS[i % 5] <= 1.25]
    assert len(escalations) == len(expected) > 0
    events = {r.key for r in records if r.kind == "anomaly"}
    assert events
    for e in escalations:
        ratio = e.score / e.threshold
        assert 0.8 <= ratio <= 1.25 and e.threshold == pytest.approx(m.threshold)
        assert e.model_name == m.name and e.model_sha256 == m.sha256 and e.agent_id == "gw-1"
        assert len(e.ts) == m.window_length and len(e.values[0]) == len(m.channel_names) and e.window_end == e.ts[-1]
        assert e.event_id == (make_event_id("pump-1", e.window_end, m.sha256) if ratio > 1 else "")
    assert value(metrics, "edgewatch_agent_escalations_total", {"outcome": "sent"}) == len(escalations)
    assert value(metrics, "edgewatch_agent_escalations_total", {"outcome": "capped"}) == 0
    sent = sum(len(r.value) + len(r.key or b"") for r in records if r.kind == "escalation")
    assert value(metrics, "edgewatch_agent_device_escalated_windows_total", {"device_id": "pump-1"}) == len(escalations)
    assert value(metrics, "edgewatch_agent_device_escalated_bytes_total", {"device_id": "pump-1"}) == sent


def test_the_cap_is_a_token_bucket_per_device() -> None:
    # 3,600 an hour: one token a second; at most two held
    pipe, metrics, clock = make({"EDGEWATCH_ESCALATION__MAX_PER_DEVICE_PER_HOUR": "3600", "EDGEWATCH_ESCALATION__BURST": "2"})
    first = [r for r in feed(pipe, "pump-1", 300, seed=1) if r.kind == "escalation"]
    other = [r for r in feed(pipe, "pump-2", 300, seed=2) if r.kind == "escalation"]
    assert len(first) == 2 and len(other) == 2, "each device has its own bucket"
    capped = value(metrics, "edgewatch_agent_escalations_total", {"outcome": "capped"})
    assert capped > 0
    clock.t += 1.0  # one token back
    more = [r for r in feed(pipe, "pump-1", 300, seed=3, t0=T0 + 1000) if r.kind == "escalation"]
    assert len(more) == 1
    clock.t += 3600.0  # the bucket refills only up to the burst
    assert len([r for r in feed(pipe, "pump-1", 300, seed=4, t0=T0 + 2000) if r.kind == "escalation"]) == 2
    assert value(metrics, "edgewatch_agent_escalations_total", {"outcome": "sent"}) == 7
    pipe.forget_device("pump-1")
    assert metrics.registry.get_sample_value("edgewatch_agent_device_escalated_windows_total", {"device_id": "pump-1"}) is None


def test_a_window_failing_a_sensor_check_is_not_escalated() -> None:
    pipe, metrics, _ = make({"EDGEWATCH_ESCALATION__BURST": "1000"})
    readings = fleet_readings("pump-1", 600, seed=1, faults=[Fault("stuck", "pressure", 0, 600)])
    records = pipe.process([Message(t, p, 1000.0) for t, p in payloads(readings, batch=10)])
    assert any(r.kind == "anomaly" and b"sensor_fault" in r.value for r in records), "the stuck channel is a sensor fault"
    # only the windows before the check has seen stuck_windows in a row may go
    assert len([r for r in records if r.kind == "escalation"]) <= pipe.config.sensor_health.stuck_windows


def test_off_by_default_and_bad_settings_refused() -> None:
    config = load_config(None, env={})
    assert not config.escalation.enabled
    pipe = Pipeline(config, RatioScorer(OnnxDetector.load(TINY_MODEL)), AgentMetrics(CollectorRegistry()), clock=Clock())
    assert pipe.escalator is None
    for key, bad in (("BAND_LOW", "1.5"), ("BAND_HIGH", "0.9"), ("MAX_PER_DEVICE_PER_HOUR", "0"), ("BURST", "0")):
        with pytest.raises(ConfigError, match=f"escalation.{key.lower()}"):
            load_config(None, env={f"EDGEWATCH_ESCALATION__{key}": bad})


def test_contract_round_trip_and_refusals() -> None:
    pipe, _, _ = make({})
    records = [r for r in feed(pipe, "pump-1", 200, seed=1) if r.kind == "escalation"]
    e = decode_escalation(records[0].value)
    assert decode_escalation(encode_escalation(e)) == e and e.escalation_id == make_event_id(e.device_id, e.window_end, e.model_sha256)
    with pytest.raises(ContractError) as exc:
        decode_escalation(records[0].value, max_bytes=100)
    assert exc.value.kind == "too_large"
    for bad, field in ((records[0].value.replace(b'"device_id":"pump-1"', b'"device_id":"a b"'), "device_id"),
                       (records[0].value.replace(b'"schema":1', b'"schema":1,"extra":1'), "extra"),
                       (records[0].value.replace(b'"event_id":"', b'"event_id":"0'), "event_id")):
        with pytest.raises(ContractError) as exc:
            decode_escalation(bad)
        assert field in exc.value.field


@pytest.mark.brokers
def test_an_agent_on_the_real_brokers_sends_its_escalations_under_the_cap(local_stack: LocalStack, tmp_path: Path,
                                                                         unique: str) -> None:
    topic = f"test.{unique}.escalations"
    create_topic(local_stack.kafka_bootstrap, topic)
    # every window is borderline; three tokens per device and none back within the test
    setup = agent_setup(local_stack, tmp_path, unique, env={
        "EDGEWATCH_ESCALATION__ENABLED": "true", "EDGEWATCH_ESCALATION__BAND_LOW": "0.01", "EDGEWATCH_ESCALATION__BAND_HIGH": "1e6",
        "EDGEWATCH_ESCALATION__MAX_PER_DEVICE_PER_HOUR": "1", "EDGEWATCH_ESCALATION__BURST": "3",
        "EDGEWATCH_KAFKA__ESCALATIONS_TOPIC": topic})
    agent = Agent(setup.config)
    agent.start()
    reader = TopicReader(setup.bootstrap, topic, f"g-{unique}")
    pub = Publisher(setup.config.mqtt.port, f"pub-{unique}")
    try:
        assert agent.intake is not None
        wait_for(agent.intake.subscribed.is_set, 30, "the agent's MQTT subscription")
        pub.publish(fleet(setup.prefix, devices=4, steps=200, seed=5))
        values = reader.poll_until(lambda v: len(v) >= 12, 60, "three escalations per device")
        m = agent.pipeline.manifest if agent.pipeline else None
        assert m is not None
        windows = 4 * ((200 - m.window_length) // m.stride + 1)
        wait_for(lambda: scrape(agent.metrics_port or 0).get('edgewatch_agent_escalations_total{outcome="capped"}') == windows - 12,
                 30, "every other window counted as capped")
    finally:
        pub.close()
        reader.close()
        agent.stop(10)
    escalations = [decode_escalation(v) for v in values]
    assert len(escalations) == 12 and {e.device_id for e in escalations} == {f"dev-{d}" for d in range(4)}
    assert all(e.agent_id == setup.config.agent.id and e.model_name == "tiny-zscore" for e in escalations)
    for d in range(4):
        device = f"dev-{d}"
        size = sum(len(v) + len(device) for v, e in zip(values, escalations, strict=True) if e.device_id == device)
        assert value(agent.metrics, "edgewatch_agent_device_escalated_bytes_total", {"device_id": device}) == size
        assert value(agent.metrics, "edgewatch_agent_device_escalated_windows_total", {"device_id": device}) == 3

"""Sensor faults end to end on the real Mosquitto and Kafka (issue 16 item 1): a stuck channel and
an out-of-range channel arrive on the anomalies topic as ``sensor_fault`` events naming the check
and the channel, and no window of theirs arrives as a process anomaly. The tiny fixture model
scores; the agent runs in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.agent import Agent
from edge.contract import Reading, decode_event
from edge.synth import CHANNEL_NAMES, Fault, simulate
from localdev.stack import LocalStack
from tests.edge import test_agent_brokers
from tests.edge.agent_util import Publisher, Setup, TopicReader, agent_setup, expected_event_ids, payloads

pytestmark = pytest.mark.brokers
agent = test_agent_brokers.agent  # the fixture: an agent started on this module's setup

STEPS = 800
SPAN = (300, 500)  # the faults' readings
T0 = 1.764e9


@pytest.fixture
def setup(local_stack: LocalStack, tmp_path: Path, unique: str) -> Setup:
    return agent_setup(local_stack, tmp_path, unique, env={"EDGEWATCH_SENSOR_HEALTH__RANGE_MAX": "temperature=200"})


def stream(prefix: str) -> list[tuple[str, bytes]]:
    """Three devices interleaved: pressure stuck on one, temperature at 500 degC above normal on another, one healthy."""
    stuck = simulate(STEPS, seed=21, faults=[Fault("stuck", "pressure", SPAN[0], SPAN[1] - SPAN[0])])[0]
    hot = simulate(STEPS, seed=22)[0]
    hot[SPAN[0]: SPAN[1], CHANNEL_NAMES.index("temperature")] += 500.0
    per_device = []
    for device, values in (("pump-stuck", stuck), ("pump-hot", hot), ("pump-ok", simulate(STEPS, seed=23)[0])):
        readings = [Reading(device, T0 + i, dict(zip(CHANNEL_NAMES, map(float, row), strict=True))) for i, row in enumerate(values)]
        per_device.append(payloads(readings, batch=10, prefix=prefix))
    return [p for group in zip(*per_device, strict=True) for p in group]


def test_stuck_and_out_of_range_channels_arrive_as_sensor_faults_not_process_anomalies(setup: Setup, agent: Agent) -> None:
    items = stream(setup.prefix)
    expected = expected_event_ids(setup.config, items)
    reader = TopicReader(setup.bootstrap, setup.topics["anomalies"], f"g-{setup.unique}")
    pub = Publisher(setup.config.mqtt.port, f"pub-{setup.unique}")
    try:
        pub.publish(items)
        values = reader.poll_until(lambda v: {decode_event(x).event_id for x in v} >= expected, 90, "all events")
    finally:
        pub.close()
        reader.close()
    events = {e.event_id: e for e in map(decode_event, values)}
    assert set(events) == expected
    faults = sorted((e.device_id, e.fault.check, e.fault.channels) for e in events.values() if e.fault is not None)
    assert faults == [("pump-hot", "range", ("temperature",)), ("pump-stuck", "stuck", ("pressure",))]
    assert all(e.kind == "sensor_fault" for e in events.values() if e.fault is not None)
    lo, hi = T0 + SPAN[0], T0 + SPAN[1] - 1
    for e in events.values():
        if e.kind == "process" and e.device_id == "pump-hot":  # no window holding an out-of-range reading
            assert e.window_end < lo or e.window_start > hi, e
        if e.kind == "process" and e.device_id == "pump-stuck":  # no window flat in the stuck channel
            assert not (lo <= e.window_start and e.window_end <= hi), e
    registry = agent.registry
    assert registry.get_sample_value("edgewatch_agent_sensor_faults_total", {"check": "range"}) == 1
    assert registry.get_sample_value("edgewatch_agent_sensor_faults_total", {"check": "stuck"}) == 1
    assert (registry.get_sample_value("edgewatch_agent_anomalies_suppressed_total") or 0) > 0
    assert np.isfinite([e.score for e in events.values()]).all()

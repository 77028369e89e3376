"""Hostile input through the real Mosquitto and Kafka: a fleet's valid readings interleaved with
far-future and distant-past readings, a flood of new device ids beyond ``agent.max_devices``,
oversized payloads and malformed JSON. Every window of the known devices is scored and their
anomaly events are exactly those of the valid stream alone; every refused payload is dead-lettered."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.contract import Reading, decode_deadletter, decode_event, encode_readings, readings_topic
from localdev.stack import LocalStack
from tests.edge.agent_util import Publisher, TopicReader, agent_setup, expected_event_ids, fleet
from tests.tools import wait_for

pytestmark = pytest.mark.brokers

DEVICES, STEPS, NEW_PER_PAYLOAD = 3, 200, 5


def test_hostile_payloads_mixed_into_a_fleet_leave_every_known_window_scored(local_stack: LocalStack, tmp_path: Path,
                                                                             unique: str) -> None:
    s = agent_setup(local_stack, tmp_path, unique, env={"EDGEWATCH_AGENT__MAX_DEVICES": str(DEVICES + 2)})
    config, prefix, topics = s.config, s.prefix, s.topics
    valid = fleet(prefix, devices=DEVICES, steps=STEPS, seed=41)
    expected = expected_event_ids(config, valid)
    assert expected, "the fixture faults should fire"
    values = {"vibration": 1.0, "current": 1.0, "pressure": 1.0, "temperature": 1.0, "flow": 1.0, "voltage": 1.0}

    def reading(device: str, ts: float) -> tuple[str, bytes]:
        return readings_topic(device, prefix), encode_readings([Reading(device, ts, values)])

    stream = valid[:DEVICES]  # each known device's first payload: they are tracked before the flood
    for i, item in enumerate(valid[DEVICES:]):
        device = f"dev-{i % DEVICES}"
        stream += [item, reading(device, time.time() + 1e6), reading(device, 1.0),
                   *(reading(f"new-{i}-{j}", 1.764e9) for j in range(NEW_PER_PAYLOAD))]
        if i % 20 == 0:
            stream += [(readings_topic(device, prefix), b'{"schema": 1, "ts": '),
                       (readings_topic(device, prefix), json.dumps({"pad": "x" * 20_000}).encode())]
    n_new = len(valid) - DEVICES
    refused = NEW_PER_PAYLOAD * n_new - 2 + 2 * len(range(0, n_new, 20))  # two new ids take the free slots
    agent = Agent(config)
    agent.start()
    reader = TopicReader(local_stack.kafka_bootstrap, topics["anomalies"], f"g-{unique}")
    dead = TopicReader(local_stack.kafka_bootstrap, topics["deadletter"], f"gd-{unique}")
    pub = Publisher(local_stack.mqtt_port, f"pub-{unique}", window=500)
    try:
        assert agent.intake is not None
        wait_for(agent.intake.subscribed.is_set, 30, "the agent's MQTT subscription")
        pub.publish(stream, timeout_s=120)
        got = reader.poll_until(lambda v: {decode_event(x).event_id for x in v} >= expected, 90, "the fleet's anomaly events")
        letters = [decode_deadletter(v) for v in dead.poll_until(lambda v: len(v) >= refused, 90, "every dead letter")]

        def metric(name: str, **labels: str) -> float:
            return agent.registry.get_sample_value(name, labels or None) or 0.0

        windows = DEVICES * ((STEPS - 32) // 4 + 1)
        wait_for(lambda: metric("edgewatch_agent_windows_scored_total") == windows, 30, "every known window scored")
    finally:
        pub.close()
        reader.close()
        dead.close()
        agent.stop(10)
    assert {decode_event(v).event_id for v in got} == expected
    assert sorted({d.reason for d in letters}) == ["not_json", "too_large", "too_many_devices"] and len(letters) == refused
    assert metric("edgewatch_agent_readings_dropped_total", reason="future") == n_new
    assert metric("edgewatch_agent_readings_dropped_total", reason="past") == n_new
    assert metric("edgewatch_agent_readings_dropped_total", reason="late") == 0
    assert metric("edgewatch_agent_devices_tracked") == DEVICES + 2
    assert agent.worker_errors == 0

"""Shutdown: stop() stops intake, scores what is queued, and is bounded even when Kafka is
unreachable; what was not sent stays in the outbox for the next start."""

from __future__ import annotations

import time
from pathlib import Path

from cloud.stack import free_port
from edge.agent import Agent
from edge.config import load_config
from edge.intake import Message
from edge.outbox import Outbox
from edge.synth import Fault
from tests.edge.agent_util import fleet_readings, payloads, toml_config
from tests.edge.test_agent_brokers import expected_event_ids


def test_stop_scores_the_queue_and_is_bounded_with_kafka_down(tmp_path: Path) -> None:
    topics = {k: f"t.{k}" for k in ("anomalies", "telemetry", "deadletter")}
    path = toml_config(tmp_path, agent_id="a-stop", mqtt_port=free_port(), kafka_bootstrap=f"127.0.0.1:{free_port()}",
                       prefix="edgewatch", topics=topics)
    config = load_config(path, env={})
    readings = fleet_readings("p-1", 400, seed=8, faults=[Fault("spike", "pressure", 200, 60, magnitude=4.0)])
    stream = payloads(readings, batch=1)
    expected = expected_event_ids(config, stream)
    assert expected
    agent = Agent(config)
    agent.start()
    # stand in for paho: the worker may already be taking messages while we enqueue
    for topic, payload in stream:
        agent.queue.put(Message(topic, payload, time.time()))
    started = time.monotonic()
    left = agent.stop(timeout_s=4.0)
    took = time.monotonic() - started
    assert took < 4.0 + 5.0, f"stop took {took:.1f} s"
    assert agent.registry.get_sample_value("edgewatch_agent_readings_received_total") == 400
    assert len(agent.queue) == 0
    box = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)
    assert box.count_by_kind().get("anomaly", 0) == len(expected) and left == box.rows
    box.close()

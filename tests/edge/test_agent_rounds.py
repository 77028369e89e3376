"""The worker's rounds: an anomaly is committed at the end of the round that decided it, not at the
next tick, and stop() ends a worker waiting for messages at once (no brokers needed: the agent
starts with both unreachable and the test stands in for paho)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from edge.agent import Agent
from edge.config import load_config
from edge.intake import Message
from edge.synth import Fault
from localdev.stack import free_port
from tests.edge.agent_util import expected_event_ids, fleet_readings, payloads, toml_config

TICK_S = 30.0  # far longer than any wait below: a commit that waited for the tick would time the test out


def anomaly_rows(path: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM outbox WHERE kind = 'anomaly'").fetchone()[0])
    except sqlite3.OperationalError:  # the agent has not created the table yet
        return 0
    finally:
        db.close()


def test_an_anomaly_is_committed_without_waiting_for_the_tick_and_stop_is_prompt(tmp_path: Path) -> None:
    topics = {k: f"t.{k}" for k in ("anomalies", "telemetry", "deadletter")}
    path = toml_config(tmp_path, agent_id="a-rounds", mqtt_port=free_port(), kafka_bootstrap=f"127.0.0.1:{free_port()}",
                       prefix="edgewatch", topics=topics)
    config = load_config(path, env={})
    config = replace(config, agent=replace(config.agent, tick_s=TICK_S))
    stream = payloads(fleet_readings("p-1", 400, seed=8, faults=[Fault("spike", "pressure", 200, 60, magnitude=4.0)]))
    expected = expected_event_ids(config, stream)
    assert expected
    agent = Agent(config)
    agent.start()
    try:
        # a first round without an anomaly (the fault starts at reading 200); then the rest, which
        # a worker paced at the tick would only take TICK_S later
        for topic, payload in stream[:100]:
            agent.queue.put(Message(topic, payload, time.time()))
        deadline = time.monotonic() + TICK_S / 2
        while agent.registry.get_sample_value("edgewatch_agent_readings_received_total") != 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        for topic, payload in stream[100:]:
            agent.queue.put(Message(topic, payload, time.time()))
        while anomaly_rows(config.outbox.path) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert anomaly_rows(config.outbox.path) == len(expected)
    finally:
        started = time.monotonic()
        agent.stop(timeout_s=2.0)
        took = time.monotonic() - started
    assert took < TICK_S / 2, f"stop took {took:.1f} s"

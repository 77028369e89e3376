"""The agent end to end against the real Mosquitto and Kafka: detection, dead letters, Kafka
down and back, Mosquitto restarted. The agent runs in-process; the tiny fixture model scores."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.contract import decode_deadletter, decode_event, decode_telemetry
from edge.metrics import REJECT_REASONS
from localdev.stack import LocalStack
from tests.edge.agent_util import (
    Publisher,
    Setup,
    TopicReader,
    agent_setup,
    expected_event_ids,
    fleet,
    fuzz_cases,
    scrape,
)
from tests.tools import wait_for

pytestmark = pytest.mark.brokers


@pytest.fixture
def setup(local_stack: LocalStack, tmp_path: Path, unique: str) -> Setup:
    return agent_setup(local_stack, tmp_path, unique)


@pytest.fixture
def agent(setup: Setup) -> Iterator[Agent]:
    a = Agent(setup.config)
    a.start()
    assert a.intake is not None
    wait_for(a.intake.subscribed.is_set, 30, "the agent's MQTT subscription")
    yield a
    a.stop(10)


def metric(agent: Agent, name: str, **labels: str) -> float:
    return agent.registry.get_sample_value(name, labels or None) or 0.0


def unique_readings(agent: Agent) -> float:
    """Readings received minus the copies the windows dropped.

    A redelivered reading is a duplicate of the device's last, late, or (more than a window's span behind) past.
    """
    dropped = sum(metric(agent, "edgewatch_agent_readings_dropped_total", reason=r) for r in ("late", "duplicate", "past"))
    return metric(agent, "edgewatch_agent_readings_received_total") - dropped


def test_injected_faults_arrive_as_anomaly_events_in_kafka(setup: Setup, agent: Agent) -> None:
    stream = fleet(setup.prefix, devices=4, steps=400, seed=11)
    expected = expected_event_ids(setup.config, stream)
    assert len(expected) >= 4, "the fixture faults should fire"
    reader = TopicReader(setup.bootstrap, setup.topics["anomalies"], f"g-{setup.unique}")
    pub = Publisher(setup.config.mqtt.port, f"pub-{setup.unique}")
    try:
        pub.publish(stream)
        values = reader.poll_until(lambda v: {decode_event(x).event_id for x in v} >= expected, 90, "all anomaly events")
    finally:
        pub.close()
        reader.close()
    events = [decode_event(v) for v in values]
    assert {e.event_id for e in events} == expected
    assert {e.device_id for e in events} == {"dev-0", "dev-2"}
    assert all(e.agent_id == setup.config.agent.id and e.model_name == "tiny-zscore" for e in events)
    assert metric(agent, "edgewatch_agent_readings_received_total") == 4 * 400
    m = scrape(agent.metrics_port or 0)
    assert m["edgewatch_agent_mqtt_connected"] == 1.0 and m["edgewatch_agent_anomalies_total"] == len(expected)
    wait_for(lambda: scrape(agent.metrics_port or 0)["edgewatch_agent_kafka_connected"] == 1.0, 30, "kafka_connected")
    assert 'edgewatch_agent_model_info{name="tiny-zscore"' in "\n".join(m)
    assert m["edgewatch_agent_inference_seconds_count"] >= 1
    # telemetry went out through the same outbox
    treader = TopicReader(setup.bootstrap, setup.topics["telemetry"], f"gt-{setup.unique}")
    try:
        samples = [decode_telemetry(v) for v in treader.poll_until(lambda v: len(v) >= 4, 60, "telemetry samples")]
    finally:
        treader.close()
    assert {s.device_id for s in samples} >= {"dev-0", "dev-2"}


def test_malformed_payloads_are_counted_and_dead_lettered(setup: Setup, agent: Agent) -> None:
    cases = [(t.replace("edgewatch/", f"{setup.prefix}/"), p, r) for t, p, r in fuzz_cases(10_000, seed=4)]
    good = fleet(setup.prefix, devices=1, steps=100, seed=2)
    reader = TopicReader(setup.bootstrap, setup.topics["deadletter"], f"g-{setup.unique}")
    pub = Publisher(setup.config.mqtt.port, f"pub-{setup.unique}", window=500)
    try:
        pub.publish([(t, p) for t, p, _ in cases] + good, timeout_s=120)
        values = reader.poll_until(lambda v: len(v) >= len(cases), 180, "every dead letter")
    finally:
        pub.close()
        reader.close()
    letters = [decode_deadletter(v) for v in values]
    assert len(letters) == len(cases)
    by_reason: dict[str, int] = {}
    for letter in letters:
        by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
    for reason in REJECT_REASONS:
        assert metric(agent, "edgewatch_agent_payloads_rejected_total", reason=reason) == by_reason.get(reason, 0), reason
    expected_fixed = {r for _, _, r in cases if r is not None}
    assert expected_fixed <= set(by_reason)
    # the agent is up and still reads good input
    wait_for(lambda: metric(agent, "edgewatch_agent_readings_received_total") == 100, 30, "the good readings")
    assert agent.worker_errors == 0


OUTAGE_S = 60.0


def test_kafka_stopped_mid_run_loses_no_event(local_stack: LocalStack, setup: Setup, agent: Agent) -> None:
    """The issue's acceptance: Kafka down for a full minute while the fleet keeps publishing."""
    first = fleet(setup.prefix, devices=4, steps=300, seed=21)
    second = fleet(setup.prefix, devices=4, steps=300, seed=31, t0_offset=300.0)
    expected_first = expected_event_ids(setup.config, first)
    expected = expected_event_ids(setup.config, first + second)
    assert len(expected) > len(expected_first) > 0
    reader = TopicReader(setup.bootstrap, setup.topics["anomalies"], f"g-{setup.unique}")
    pub = Publisher(setup.config.mqtt.port, f"pub-{setup.unique}")
    try:
        pub.publish(first)
        reader.poll_until(lambda v: {decode_event(x).event_id for x in v} >= expected_first, 90, "the first events")
        local_stack.kafka.stop()
        stopped_at = time.monotonic()
        try:
            pub.publish(second)
            assert agent.outbox is not None
            wait_for(lambda: agent.outbox.count_by_kind().get("anomaly", 0) >= len(expected) - len(expected_first), OUTAGE_S,
                     "the second run's events to wait in the outbox")
            wait_for(lambda: metric(agent, "edgewatch_agent_kafka_connected") == 0.0, OUTAGE_S, "kafka_connected to drop")
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))  # down for the whole outage, the forwarder retrying
            assert metric(agent, "edgewatch_agent_forward_errors_total") >= 1
            assert agent.outbox.count_by_kind().get("anomaly", 0) >= len(expected) - len(expected_first)  # nothing left the outbox
        finally:
            outage_s = time.monotonic() - stopped_at
            local_stack.kafka.start()
        values = reader.poll_until(lambda v: {decode_event(x).event_id for x in v} >= expected, 240, "every event after restart")
    finally:
        pub.close()
        reader.close()
    assert outage_s >= OUTAGE_S
    ids = [decode_event(v).event_id for v in values]
    assert set(ids) == expected, f"missing {len(expected - set(ids))}, unexpected {len(set(ids) - expected)}"
    copies: dict[str, set[bytes]] = {}
    for v in values:  # a copy sent twice (a retried batch, the reader re-reading) is the same record: de-duplication keeps one
        copies.setdefault(decode_event(v).event_id, set()).add(v)
    assert all(len(c) == 1 for c in copies.values())
    wait_for(lambda: agent.outbox is not None and agent.outbox.count_by_kind().get("anomaly", 0) == 0, 60, "outbox drained")
    # failed producers were shut down, not leaked: paho, worker, forwarder, metrics server, one producer
    leaked = [t.name for t in threading.enumerate() if "kafka" in t.name.lower()]
    assert len(leaked) <= 2, leaked


@pytest.fixture
def slow_reconnect_agent(setup: Setup) -> Iterator[Agent]:
    """Retries every 3 s, so a publisher that starts right after the broker is back is usually first."""
    cfg = setup.config
    a = Agent(replace(cfg, mqtt=replace(cfg.mqtt, reconnect_min_s=3.0, reconnect_max_s=3.0)))
    a.start()
    assert a.intake is not None
    wait_for(a.intake.subscribed.is_set, 30, "the agent's MQTT subscription")
    yield a
    a.stop(10)


def test_mosquitto_restart_reconnects_and_gets_readings_published_while_away(local_stack: LocalStack, setup: Setup,
                                                                             slow_reconnect_agent: Agent) -> None:
    agent = slow_reconnect_agent
    assert agent.intake is not None
    pub = Publisher(setup.config.mqtt.port, f"pub-{setup.unique}")
    pub.publish(fleet(setup.prefix, devices=2, steps=50, seed=1))
    pub.close()
    wait_for(lambda: metric(agent, "edgewatch_agent_readings_received_total") == 100, 30, "readings before the restart")
    published = 100
    exercised = False
    for attempt in range(3):
        local_stack.mosquitto.stop()
        try:
            wait_for(lambda: metric(agent, "edgewatch_agent_mqtt_connected") == 0.0, 30, "mqtt_connected to drop")
        finally:
            local_stack.mosquitto.start()
        up_at = time.monotonic()
        pub = Publisher(setup.config.mqtt.port, f"pub-{setup.unique}-{attempt}")
        batch = fleet(setup.prefix, devices=2, steps=100, seed=5 + attempt, t0_offset=1000.0 * (attempt + 1))
        pub.publish(batch)
        pub.close()
        away = not agent.intake.connected.is_set()
        published += 2 * 100
        wait_for(lambda: metric(agent, "edgewatch_agent_mqtt_connected") == 1.0, 10 - (time.monotonic() - up_at) + 0.5,
                 "the agent to reconnect within 10 s")
        # QoS 1 is at least once: a message whose PUBACK the broker had not processed when it stopped comes
        # again after the restart; the windows drop such a copy as late, duplicate or past. Every reading published
        # arrives, and each is placed exactly once.
        try:
            wait_for(lambda n=published: unique_readings(agent) == n, 60, "the readings published during the restart")  # type: ignore[misc]
        except AssertionError as exc:
            raise AssertionError(f"{exc}: published {published}, attempt {attempt}, away {away}, placed {unique_readings(agent)}, "
                                 f"received {metric(agent, 'edgewatch_agent_readings_received_total')}") from None
        if away:
            exercised = True
            break
    assert exercised, "the agent reconnected before the publisher every time; the offline case was never exercised"
    assert metric(agent, "edgewatch_agent_queue_dropped_messages_total") == 0

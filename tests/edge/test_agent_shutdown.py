"""Shutdown: stop() stops intake, scores what is queued, and is bounded even when Kafka is
unreachable; what was not sent stays in the outbox for the next start."""

from __future__ import annotations

import time
from pathlib import Path

from edge.agent import Agent
from edge.config import load_config
from edge.intake import Message
from edge.outbox import Outbox
from edge.synth import Fault
from localdev.stack import free_port
from tests.edge.agent_util import expected_event_ids, fleet_readings, payloads, toml_config


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


def test_systemd_notifications_ready_watchdog_stopping(tmp_path: Path) -> None:
    import socket

    from edge.sdnotify import Notifier

    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(30)
    topics = {k: f"t.{k}" for k in ("anomalies", "telemetry", "deadletter")}
    config = load_config(toml_config(tmp_path, agent_id="a-sd", mqtt_port=free_port(), kafka_bootstrap=f"127.0.0.1:{free_port()}",
                                     prefix="edgewatch", topics=topics), env={})
    agent = Agent(config, notifier=Notifier({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"}))
    got: list[str] = []
    try:
        agent.start()
        while not any("READY=1" in m for m in got) or sum("WATCHDOG=1" in m for m in got) < 2:
            got.append(server.recv(4096).decode())
    finally:
        agent.stop(timeout_s=2.0)
    while not any("STOPPING=1" in m for m in got):
        got.append(server.recv(4096).decode())
    server.close()
    ready = next(m for m in got if "READY=1" in m)
    assert "STATUS=model tiny-zscore" in ready

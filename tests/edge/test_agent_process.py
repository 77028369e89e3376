"""The agent as a process (``python -m edge.cli run``): SIGKILL loses nothing in the outbox,
SIGTERM drains and exits 0, a bad config exits 2 naming the key."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import load_config
from edge.contract import decode_event
from localdev.stack import LocalStack, free_port
from tests.edge.agent_util import Publisher, TopicReader, expected_event_ids, fleet, scrape, toml_config
from tests.kafka_util import create_topic
from tests.tools import wait_for

REPO = Path(__file__).resolve().parents[2]


class AgentProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config)], cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def metrics(self, port: int) -> dict[str, float]:
        try:
            return scrape(port)
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.tail()}") from None
            return {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def procs() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for p in started:
        p.kill()


def outbox_anomaly_ids(path: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {decode_event(v).event_id for (v,) in db.execute("SELECT value FROM outbox WHERE kind = 'anomaly'")}
    finally:
        db.close()


@pytest.mark.brokers
def test_sigkill_loses_nothing_in_the_outbox_and_sigterm_exits_zero(local_stack: LocalStack, tmp_path: Path, unique: str,
                                                                    procs: list[AgentProcess]) -> None:
    topics = {k: f"test.{unique}.{k}" for k in ("anomalies", "telemetry", "deadletter")}
    for t in topics.values():
        create_topic(local_stack.kafka_bootstrap, t)
    prefix, port = f"t{unique}", free_port()
    common = dict(agent_id=f"agent-{unique}", mqtt_port=local_stack.mqtt_port, prefix=prefix, topics=topics, metrics_port=port)
    outbox = str(tmp_path / "outbox.sqlite")
    # run 1: Kafka unreachable, so every event stays in the outbox until the kill; run 2: the real Kafka
    dead_kafka = toml_config(tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}", name="dead", outbox=Path(outbox), **common)
    live_kafka = toml_config(tmp_path, kafka_bootstrap=local_stack.kafka_bootstrap, name="live", outbox=Path(outbox), **common)
    config = load_config(live_kafka, env={})

    stream = fleet(prefix, devices=4, steps=300, seed=41)
    expected = expected_event_ids(config, stream)
    assert expected

    first = AgentProcess(dead_kafka, tmp_path / "agent1.log")
    procs.append(first)
    wait_for(lambda: first.metrics(port).get("edgewatch_agent_mqtt_connected") == 1.0, 60, "agent 1 to connect")
    pub = Publisher(local_stack.mqtt_port, f"pub-{unique}")
    try:
        pub.publish(stream)
    finally:
        pub.close()
    wait_for(lambda: first.metrics(port).get("edgewatch_agent_anomalies_total") == len(expected), 60, "agent 1 to detect")
    wait_for(lambda: outbox_anomaly_ids(outbox) == expected, 30, "every event committed to the outbox")
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(30) == -signal.SIGKILL
    assert outbox_anomaly_ids(outbox) == expected

    second = AgentProcess(live_kafka, tmp_path / "agent2.log")
    procs.append(second)
    reader = TopicReader(local_stack.kafka_bootstrap, topics["anomalies"], f"g-{unique}")
    try:
        values = reader.poll_until(lambda v: {decode_event(x).event_id for x in v} >= expected, 120, "the outbox after restart")
    finally:
        reader.close()
    assert {decode_event(v).event_id for v in values} == expected
    wait_for(lambda: second.metrics(port).get("edgewatch_agent_outbox_rows") == 0.0, 60, "the outbox to drain")

    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(60) == 0, second.tail()
    assert "agent_stopped" in second.tail()


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[mqtt]\nprot = 1\n")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "configuration error" in out.stderr and "'mqtt.prot'" in out.stderr and str(path) in out.stderr


def test_missing_model_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f"[model]\npath = '{tmp_path / 'nope'}'\n[metrics]\nport = 0\n")
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "'model.path'" in out.stderr, out.stderr

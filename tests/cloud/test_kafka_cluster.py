"""Broker failures on the three-node cluster (replication factor 3, min.insync.replicas 2) under a
stream of anomaly events from real agents (in-process, fed over MQTT) to a real processor (SQLite store).

Each test checks the promise end to end: every event_id the agents produced is stored exactly once,
no outbox row is lost or shed, and the processor's committed offsets reach the end of the topic. The
unavailability printed is the longest time events waited at a stage without that stage moving:
``producer`` from the agents' outboxes to Kafka's acknowledgement, ``processor`` from the
acknowledgement to the store. The figures are recorded in docs/deploy.md.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from edge.agent import Agent
from edge.config import load_config
from edge.outbox import KINDS
from edge.synth import Fault
from localdev.kafka_admin import create_topics, in_sync_replicas, partition_leaders
from localdev.stack import KafkaCluster, LocalStack
from tests.cloud.processor_streams import config, in_thread
from tests.cloud.test_processor_kafka import caught_up
from tests.edge.agent_util import Publisher, expected_event_ids, fleet_readings, payloads, toml_config
from tests.tools import wait_for

pytestmark = [pytest.mark.brokers, pytest.mark.cluster]
AGENTS = 2


def stream(prefix: str, seed: int, t0_offset: float, steps: int = 600, devices: int = 4) -> list[tuple[str, bytes]]:
    """Interleaved payloads of ``devices`` devices with a pressure spike every 40 readings: anomalies all along."""
    faults = [Fault("spike", "pressure", start=s, duration=20, magnitude=4.0) for s in range(40, steps - 20, 40)]
    per_device = [payloads(fleet_readings(f"dev-{d}", steps, seed=seed + d, faults=faults, t0=1.764e9 + t0_offset),
                           batch=10, prefix=prefix) for d in range(devices)]
    return [p for group in zip(*per_device, strict=True) for p in group]


class Stall:
    """The longest time something waited at one stage while that stage made no progress."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._since: float | None = None
        self._done = -1

    def update(self, now: float, waiting: bool, done: int) -> None:
        if not waiting:
            self._since = None
        elif done != self._done or self._since is None:
            self._since = now
        else:
            self.longest_s = max(self.longest_s, now - self._since)
        self._done = done


class Pipeline:
    """Agents on the session's Mosquitto and the cluster, a processor thread, a paced MQTT feeder per agent,
    and a watcher thread sampling every 0.1 s how far the events got."""

    def __init__(self, stack: LocalStack, cluster: KafkaCluster, tmp: Path, unique: str, *, seconds: float,
                 hold_back: bool = False) -> None:
        self.cluster = cluster
        self.topic = f"test.{unique}.anomalies"
        topics = {k: f"test.{unique}.{k}" for k in ("anomalies", "telemetry", "deadletter")}
        create_topics(cluster.bootstrap, [*topics.values(), f"{self.topic}.alerts"], brokers=3)
        self.agents: list[Agent] = []
        self.streams: list[list[tuple[str, bytes]]] = []
        self.expected: set[str] = set()
        for i in range(AGENTS):
            path = toml_config(tmp, agent_id=f"agent-{i}-{unique}", mqtt_port=stack.mqtt_port, kafka_bootstrap=cluster.bootstrap,
                               prefix=f"t{unique}{i}", topics=topics)
            cfg = load_config(path, env={})
            self.streams.append(stream(f"t{unique}{i}", seed=10 * i, t0_offset=100_000.0 * i))
            self.expected |= expected_event_ids(cfg, self.streams[-1])
            self.agents.append(Agent(cfg))
        self.db = tmp / "store.db"
        self.group = f"g-{unique}"
        self.processor_cfg = config(tmp / "cloud.toml", bootstrap=cluster.bootstrap, topic=self.topic, group=self.group,
                                    sqlite_path=self.db)
        self.seconds = seconds
        self.release = threading.Event()  # the feeders publish the second half of the streams once it is set
        if not hold_back:
            self.release.set()
        self.producer, self.processor = Stall(), Stall()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._processor_stop = threading.Event()
        self._processor_errors: list[BaseException] = []
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for agent in self.agents:
            agent.start()
            assert agent.intake is not None
            wait_for(agent.intake.subscribed.is_set, 30, "the agent's MQTT subscription")
        thread, self._processor_stop, self._processor_errors = in_thread(self.processor_cfg)
        self._threads = [thread, threading.Thread(target=self._watch, daemon=True)]
        self._threads += [threading.Thread(target=self._feed, args=(i,), daemon=True) for i in range(AGENTS)]
        for t in self._threads[1:]:
            t.start()

    def _feed(self, i: int) -> None:
        """Publish agent ``i``'s stream evenly over ``seconds`` (pacing, not synchronisation), its second half once
        :attr:`release` is set."""
        items = self.streams[i]
        pub = Publisher(self.agents[i].config.mqtt.port, f"pub-{i}-{self.group}")
        try:
            step = max(1, len(items) // int(self.seconds * 5))
            for n in range(0, len(items), step):
                if n >= len(items) // 2:
                    self.release.wait()
                pub.publish(items[n:n + step])
                self._stop.wait(0.2)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            pub.close()

    def fed(self) -> bool:
        return not any(t.is_alive() for t in self._threads[2:])

    def counts(self) -> tuple[int, int, int]:
        """Anomaly events written to the agents' outboxes, acknowledged by Kafka, stored by the processor."""
        written = sum(a.registry.get_sample_value("edgewatch_agent_anomalies_total") or 0 for a in self.agents)
        acked = sum(a.registry.get_sample_value("edgewatch_agent_forwarded_messages_total", {"kind": "anomaly"}) or 0
                    for a in self.agents)
        return int(written), int(acked), self.stored()

    def stored(self) -> int:
        try:
            with sqlite3.connect(self.db, timeout=5) as db:
                return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:  # before the processor created its schema
            return 0

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            written, acked, stored = self.counts()
            now = time.monotonic()
            self.producer.update(now, written > acked, acked)
            self.processor.update(now, acked > stored, stored)

    def outbox_rows(self) -> int:
        return sum(a.outbox.count_by_kind().get("anomaly", 0) for a in self.agents if a.outbox is not None)

    def finish(self, timeout_s: float = 180.0) -> None:
        """Wait until the whole stream is stored and committed; then check what the module docstring promises."""
        wait_for(lambda: self.fed() and self.counts()[2] >= len(self.expected) and self.outbox_rows() == 0
                 and caught_up(self.cluster.bootstrap, self.group, self.topic), timeout_s, "every event stored and committed",
                 every_s=1.0, state=lambda: {"written, acked, stored": self.counts(), "expected": len(self.expected),
                                             "outbox": self.outbox_rows(), "fed": self.fed()})
        assert self.errors == [] and self._processor_errors == []
        with sqlite3.connect(self.db) as db:
            ids = [r[0] for r in db.execute("SELECT event_id FROM events")]
        assert len(ids) == len(set(ids)) and set(ids) == self.expected, "every event stored exactly once"
        shed = [a.registry.get_sample_value("edgewatch_agent_outbox_shed_rows_total", {"kind": k}) or 0
                for a in self.agents for k in KINDS]
        assert sum(shed) == 0, "no outbox row shed"

    def close(self) -> None:
        self._stop.set()
        self.release.set()
        self._processor_stop.set()
        for agent in self.agents:
            agent.stop(10)
        for t in self._threads:
            t.join(30)

    def report(self, what: str, capsys: pytest.CaptureFixture[str]) -> None:
        with capsys.disabled():
            print(f"\n{what}: {len(self.expected)} events, 0 lost; unavailability producer {self.producer.longest_s:.1f} s, "
                  f"processor {self.processor.longest_s:.1f} s")


@pytest.fixture
def pipeline(local_stack: LocalStack, kafka_cluster: KafkaCluster, tmp_path: Path, unique: str,
             request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    seconds, hold_back = request.param
    p = Pipeline(local_stack, kafka_cluster, tmp_path, unique, seconds=seconds, hold_back=hold_back)
    try:
        p.start()
        yield p
    finally:
        p.close()


def leader_of(p: Pipeline) -> int:
    """The broker leading the anomalies partition; -1 while it has none or the broker asked is gone."""
    try:
        return partition_leaders(p.cluster.bootstrap, p.topic)[0]
    except KafkaError:
        return -1


@pytest.mark.parametrize("pipeline", [(30.0, False)], indirect=True, ids=["30s-stream"])
def test_leader_killed_mid_stream_loses_nothing(pipeline: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    p = pipeline
    wait_for(lambda: p.stored() >= len(p.expected) // 4, 90, "a quarter of the stream stored")
    leader = leader_of(p)
    p.cluster.node(leader).kill()
    stored_at_kill = p.stored()
    wait_for(lambda: leader_of(p) not in (leader, -1) and p.stored() > stored_at_kill + 20, 90,
             "a new leader, and events stored through it")
    p.cluster.node(leader).start()
    p.finish()
    assert stored_at_kill < len(p.expected), "the kill must fall inside the stream"
    p.report(f"leader kill (node {leader})", capsys)


@pytest.mark.parametrize("pipeline", [(40.0, False)], indirect=True, ids=["40s-stream"])
def test_a_follower_down_for_a_minute_loses_nothing_and_lag_returns_to_zero(pipeline: Pipeline,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    p = pipeline
    wait_for(lambda: p.stored() >= len(p.expected) // 5, 90, "a fifth of the stream stored")
    leader = leader_of(p)
    follower = next(n.node_id for n in p.cluster.nodes if n.node_id != leader)
    p.cluster.node(follower).kill()
    down_at, stored_at_kill = time.monotonic(), p.stored()
    wait_for(lambda: p.stored() > stored_at_kill + 20, 60, "events stored with one broker down")
    time.sleep(max(0.0, 60.0 - (time.monotonic() - down_at)))  # the outage's length, not a synchronisation
    p.cluster.node(follower).start()
    p.finish()  # includes the group's committed offsets at the end of the topic: lag 0
    p.report(f"follower (node {follower}) down 60 s", capsys)


@pytest.mark.parametrize("pipeline", [(20.0, True)], indirect=True, ids=["20s-stream-half-held-back"])
def test_two_brokers_down_refuse_writes_and_the_outboxes_keep_every_event(pipeline: Pipeline, caplog: pytest.LogCaptureFixture,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """One broker crashes, a second is shut down: the third leads alone, below min.insync.replicas.

    The crashed broker is fenced and leaves the in-sync replicas; the second leaves them in its
    controlled shutdown while two controllers still form a quorum. Then the last broker refuses
    writes with NOT_ENOUGH_REPLICAS (with both crashed instead, the quorum is gone before the
    in-sync set can shrink, and writes time out: refused all the same). The second half of the
    stream is published only then."""
    p = pipeline
    caplog.set_level(logging.WARNING)
    wait_for(lambda: p.stored() >= 10, 90, "the first events stored")
    leader = leader_of(p)
    crashed, stopped = [n.node_id for n in p.cluster.nodes if n.node_id != leader]
    p.cluster.node(crashed).kill()
    wait_for(lambda: in_sync(p) == {leader, stopped}, 60, "the crashed broker out of the in-sync replicas")
    p.cluster.node(stopped).stop()
    p.release.set()
    wait_for(lambda: "NotEnoughReplicas" in caplog.text, 60, "producers refused with NOT_ENOUGH_REPLICAS")
    refused_at = end_offset(p)
    wait_for(lambda: p.fed() and p.counts()[0] == len(p.expected), 90, "the whole stream written to the outboxes")
    assert end_offset(p) == refused_at, "nothing appended, so nothing acknowledged, below min.insync.replicas"
    written, acked, _ = p.counts()
    assert p.outbox_rows() == written - acked > 0, "the refused events wait in the outboxes"
    p.cluster.node(stopped).start()  # one broker back: two in sync again
    p.finish()
    p.report("two brokers down, then one back", capsys)


def in_sync(p: Pipeline) -> set[int]:
    """The in-sync replicas of the anomalies partition (empty while the broker asked is gone)."""
    try:
        return in_sync_replicas(p.cluster.bootstrap, p.topic)[0]
    except KafkaError:
        return set()


def end_offset(p: Pipeline) -> int:
    """The anomalies partition's high watermark: what the in-sync replicas have, and producers were told."""
    consumer = KafkaConsumer(bootstrap_servers=p.cluster.bootstrap.split(","), enable_auto_commit=False)
    try:
        tp = TopicPartition(p.topic, 0)
        return int(consumer.end_offsets([tp])[tp])
    finally:
        consumer.close()
